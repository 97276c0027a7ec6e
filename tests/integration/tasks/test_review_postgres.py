"""Human sampling review on PostgreSQL: migration 0003, the task flow, and reviewers judging at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import review as rv
from tasks.catalog import Catalog
from tasks.storage import Lake, local_path

pytestmark = pytest.mark.postgres


def test_review_flow_with_concurrent_reviewers_on_postgres(pg_url, tmp_path):
    cat = Catalog(pg_url)
    cat.migrate()
    cat.migrate()  # idempotent
    lake = Lake(str(tmp_path / "lake"))
    cat.ensure_dataset("general", "web")
    uri = lake.uri("datasets", "general", "web", "r1")
    (local_path(uri) / "data").mkdir(parents=True)
    rows = [{"id": f"d{i:03d}", "text": f"document {i} " * (1 + i % 5)} for i in range(200)]
    for k in range(4):
        pq.write_table(pa.Table.from_pylist(rows[k::4]), local_path(uri) / "data" / f"part-{k}.parquet")
    cat.commit_version("general", "web", run_key="r1", uri=uri, usage="pretrain", record_count=len(rows))

    reviewers = [f"rev-{i}" for i in range(6)]
    spec = {
        "version": "general/web@V1",
        "standard": "general-text",
        "sample_size": 60,
        "seed": 11,
        "reviewers": reviewers,
        "assignment": "balanced",
        "run_key": "dataset_review/run-1",
    }
    task = rv.create_task(spec, created_by="lead", catalog=cat, lake=lake)
    assert rv.create_task(spec, created_by="lead", catalog=cat, lake=lake).id == task.id
    assert task.sampled == 60 and task.version_ref == "general/web@V1"
    expected = sorted((r["id"] for r in rows), key=lambda i: rv.sample_key(11, i))[:60]
    assert [i.record_id for i in rv.list_items(task.id, catalog=cat)] == expected

    def work(who: str) -> int:
        c = Catalog(pg_url)  # one engine per reviewer, as separate API workers would have
        n = 0
        while (item := rv.next_item(task.id, who, c)) is not None:
            fail = item.position % 4 == 0
            v = {"verdict": "fail", "tags": ["truncated", "garbled"]} if fail else {"verdict": "pass"}
            rv.submit_verdict(task.id, item.id, who, v, c)
            n += 1
        c.engine.dispose()
        return n

    with ThreadPoolExecutor(max_workers=len(reviewers)) as pool:
        judged = list(pool.map(work, reviewers))
    assert sum(judged) == 60 and all(judged)

    done = rv.get_task(task.id, cat)
    assert done.status == "done" and done.completed_at is not None  # the last verdict, whoever gave it
    rep = rv.report(task.id, catalog=cat)
    assert (rep.decided, rep.failed) == (60, 15) and rep.pass_rate == 0.75
    assert rep.tags["truncated"] == rep.tags["garbled"] == 15
    assert rep.categories["completeness"].records == 15 and rep.categories["accuracy"].tags == 15
    assert sum(p.decided for p in rep.per_reviewer.values()) == 60
    out = rv.write_report(task.id, catalog=cat, lake=lake)
    assert rv.get_task(task.id, cat).report_uri == out["uri"]
    with pytest.raises(rv.ReviewGateFailed, match=r"pass rate 75.0 %"):
        rv.check_threshold(rep, 0.9)
