"""The dataset_mix_publish DAG's task callables in order, with the engines as real child processes (the
local runner), as the Airflow tasks run them: mix -> commit -> quality gate -> export -> published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import datasets
from tasks.catalog import Catalog
from tasks.data import (
    build_mix_spec,
    build_publish_spec,
    build_quality_spec,
    commit_mix_version,
    finish_publication,
)
from tasks.quality import QualityBlocked
from tasks.runners import LocalRunner
from tasks.settings import get_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FORGEFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FORGEFLOW_SPARK_MASTER", "local[1]")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _version(cat: Catalog, name: str, n: int, tmp: Path) -> str:
    """A committed pretrain version written as the engine writes one (Parquet + manifest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri_dir = tmp / "lake-src" / name
    (uri_dir / "data").mkdir(parents=True)
    rows = [
        {"id": f"{name}{i:04d}", "text": f"{name} 文本 {i}", "meta": {"source": name, "tags": []}}
        for i in range(n)
    ]
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("text", pa.string()),
            ("meta", pa.struct([("source", pa.string()), ("tags", pa.list_(pa.string()))])),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), uri_dir / "data" / "part-00000.parquet")
    manifest = {
        "run_key": f"src-{name}",
        "usage": "pretrain",
        "records_in": n,
        "accepted": n,
        "quarantined": 0,
        "dropped": 0,
        "records_out": n,
        "operators": [],
        "chars": {},
        "files": {"data": [], "quarantine": None},
    }
    (uri_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    cat.ensure_dataset("general", name)
    return datasets.commit_from_manifest(
        cat, "general", name, run_key=f"src-{name}", output_uri=uri_dir.as_uri(), usage="pretrain", recipe=[]
    ).ref


def test_mix_then_publish_through_the_dag_callables(home: Path) -> None:
    cat = Catalog.from_settings()
    industry = _version(cat, "industry", 30, home)
    web = _version(cat, "web", 400, home)
    params = {
        "target": "general/pretrain-mix",
        "parts": [{"ref": industry, "role": "industry"}, {"ref": web, "role": "general"}],
        "by": "dataset",
        "preset": "pretrain-industry-general",
        "seed": 3,
        "format": "standard",
        "visibility": "public",
        "validation_ratio": 0.1,
    }
    spec_uri = build_mix_spec(params, "manual__mix-1")
    runner = LocalRunner()
    runner.run("spark_ops.mix", spec_uri)
    quality_uri = build_quality_spec(spec_uri)
    runner.run("spark_ops.quality", quality_uri)
    ref = commit_mix_version(spec_uri, params, quality_uri)
    assert (
        ref == commit_mix_version(spec_uri, params, quality_uri) == "general/pretrain-mix@V1"
    )  # retry: once
    v = cat.get_version(ref)
    assert v.parents == [industry, web] and v.record_count == 30 + 180  # 1:6 with industry whole
    assert v.quality["validation"]["success"] is True and v.token_count and v.token_count > 210
    assert v.language == "zh" and Path(v.quality["html_uri"].removeprefix("file://")).is_file()

    prepared = build_publish_spec(ref, params)
    runner.run("spark_ops.publish", prepared["spec_uri"])
    info = finish_publication(prepared)
    assert info["status"] == "published" and info["visibility"] == "public"
    assert info["export"]["counts"] == {"train": 189, "validation": 21}
    assert cat.select_for(ref, "pretrain").publication["asset_uri"] == "forgeflow://datasets/pretrain"

    # publish-only run of an existing version, with the quality gate on a failed suite
    with pytest.raises(ValueError, match="give either parts"):
        commit_mix_version(None, {"version": ""})
    assert commit_mix_version(None, {"version": web}) == web
    with cat._session.begin() as s:  # a failed suite recorded on the version
        from sqlalchemy import select

        from tasks.catalog import DatasetVersion

        row = s.scalar(select(DatasetVersion).where(DatasetVersion.run_key == "src-web"))
        row.quality = {
            "validation": {
                "success": False,
                "suite": "pretrain",
                "failed": 1,
                "evaluated": 6,
                "expectations": [
                    {"title": "no PII left", "column": "text", "success": False, "unexpected_count": 2}
                ],
            }
        }
    with pytest.raises(QualityBlocked, match="no PII left \\[text\\]: 2 unexpected"):
        build_publish_spec(web, {"format": "standard"})
    prepared = build_publish_spec(
        web, {"format": "standard", "override_reason": "PII reviewed by legal"}, user="ana"
    )
    assert prepared["decision"]["override"]["reason"] == "PII reviewed by legal"
    runner.run("spark_ops.publish", prepared["spec_uri"])
    assert finish_publication(prepared)["publication"]["quality_override"]["user"] == "ana"
