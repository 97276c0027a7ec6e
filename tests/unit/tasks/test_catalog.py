"""Catalogue behaviour on SQLite; tests/integration/test_catalog_postgres.py runs the same on PostgreSQL."""

from __future__ import annotations

import pytest

from tasks.catalog import Catalog, CatalogError, parse_ref


@pytest.fixture
def cat(tmp_path):
    c = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    c.migrate()
    return c


def commit(cat, run_key, **kw):
    args = {"run_key": run_key, "uri": f"file:///lake/{run_key}", "usage": "sft", "record_count": 10, **kw}
    return cat.commit_version("general", "alpaca-zh", **args)


def test_versions_number_up_and_are_idempotent_per_run(cat):
    cat.ensure_dataset("general", "alpaca-zh")
    assert commit(cat, "r1").ref == "general/alpaca-zh@V1"
    assert commit(cat, "r1").ref == "general/alpaca-zh@V1"  # retried writer
    assert commit(cat, "r2").ref == "general/alpaca-zh@V2"
    assert [v.number for v in cat.list_versions("general", "alpaca-zh")] == [1, 2]


def test_refs_resolve_latest_and_published(cat):
    cat.ensure_dataset("general", "alpaca-zh")
    commit(cat, "r1")
    commit(cat, "r2")
    cat.publish("general/alpaca-zh@V1")
    assert cat.get_version("general/alpaca-zh@latest").number == 2
    assert cat.get_version("general/alpaca-zh").number == 2
    assert cat.get_version("general/alpaca-zh@published").number == 1
    assert cat.get_version("general/alpaca-zh@v1").status == "published"


def test_usage_and_publication_gate_selection(cat):
    cat.ensure_dataset("general", "alpaca-zh")
    commit(cat, "r1")
    with pytest.raises(CatalogError, match="not published"):
        cat.select_for("general/alpaca-zh@V1", "sft_lora")
    cat.publish("general/alpaca-zh@V1")
    assert cat.select_for("general/alpaca-zh@V1", "sft_lora").number == 1
    with pytest.raises(CatalogError, match="pretrain can only use pretrain data"):
        cat.select_for("general/alpaca-zh@V1", "pretrain")
    with pytest.raises(CatalogError, match="evaluate can only use model_test"):
        cat.select_for("general/alpaca-zh@V1", "evaluate")


def test_image_data_is_not_selectable_for_text_training(cat):
    cat.ensure_dataset("general", "vqa")
    cat.commit_version(
        "general", "vqa", run_key="v1", uri="file:///x", usage="sft", record_count=3, modality="image"
    )
    cat.publish("general/vqa@V1")
    with pytest.raises(CatalogError, match="is image data; sft_lora takes text data only"):
        cat.select_for("general/vqa@V1", "sft_lora")


def test_errors_name_the_problem(cat):
    with pytest.raises(CatalogError, match="does not exist"):
        cat.get_version("general/missing@V1")
    cat.ensure_dataset("general", "alpaca-zh")
    with pytest.raises(CatalogError, match="no such version"):
        cat.get_version("general/alpaca-zh@V9")
    with pytest.raises(CatalogError, match="usage 'chat'"):
        commit(cat, "r1", usage="chat")
    with pytest.raises(CatalogError, match="already exists"):
        cat.create_dataset("general", "alpaca-zh")
    with pytest.raises(ValueError, match="lowercase"):
        cat.ensure_dataset("General", "x")


@pytest.mark.parametrize("ref", ["general", "general/a@X", "a/b/c"])
def test_bad_refs(ref):
    with pytest.raises(CatalogError, match="invalid"):
        parse_ref(ref)


def test_migrate_twice_is_a_no_op(cat):
    cat.migrate()
    cat.ensure_dataset("general", "x")
    assert cat.list_datasets()[0]["name"] == "x"


def test_publish_records_the_publication_once(cat):
    cat.ensure_dataset("general", "pub")
    cat.commit_version("general", "pub", run_key="r", uri="file:///x", usage="sft", record_count=10)
    publication = {"format": "openai", "splits": {"train": 9, "validation": 1}}
    v = cat.publish("general/pub@V1", publication=publication, visibility="public")
    assert v.status == "published" and v.publication == publication and v.visibility == "public"
    again = cat.publish("general/pub@V1", publication=publication, visibility="public")  # a retry
    assert again.published_at == v.published_at
    with pytest.raises(CatalogError, match="already published"):
        cat.publish("general/pub@V1", publication={"format": "sharegpt"})
    with pytest.raises(CatalogError, match="visibility 'everyone'"):
        cat.publish("general/pub@V1", visibility="everyone")
