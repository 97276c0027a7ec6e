"""The catalogue on the production store: PostgreSQL, migrations, concurrent writers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.catalog import Catalog, CatalogError

pytestmark = pytest.mark.postgres


def test_migrations_and_versions_on_postgres(pg_url):
    cat = Catalog(pg_url)
    cat.migrate()
    cat.migrate()  # idempotent
    cat.ensure_dataset("general", "alpaca-zh", note="n", tags=["zh"])
    v1 = cat.commit_version("general", "alpaca-zh", run_key="r1", uri="s3://b/v1", usage="sft", record_count=5)
    assert cat.commit_version("general", "alpaca-zh", run_key="r1", uri="s3://b/v1", usage="sft", record_count=5) == v1
    cat.publish(v1.ref)
    assert cat.select_for("general/alpaca-zh@published", "sft_full").uri == "s3://b/v1"
    with pytest.raises(CatalogError, match="can only use"):
        cat.select_for(v1.ref, "evaluate")
    assert cat.get_version(v1.ref).created_at.endswith("+00:00")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_twenty_concurrent_writers_get_distinct_versions(backend, pg_url, tmp_path):
    url = pg_url if backend == "postgres" else f"sqlite:///{tmp_path / 'c.db'}"
    Catalog(url).migrate()
    Catalog(url).ensure_dataset("general", "shared")

    def writer(i: int) -> int:
        cat = Catalog(url)  # each writer its own engine, as separate processes would have
        return cat.commit_version(
            "general", "shared", run_key=f"writer-{i}", uri=f"file:///v/{i}", usage="pretrain", record_count=i
        ).number

    with ThreadPoolExecutor(max_workers=20) as pool:
        numbers = list(pool.map(writer, range(20)))
    assert sorted(numbers) == list(range(1, 21))
    versions = Catalog(url).list_versions("general", "shared")
    assert {v.run_key for v in versions} == {f"writer-{i}" for i in range(20)}
    assert {v.record_count for v in versions} == set(range(20))
