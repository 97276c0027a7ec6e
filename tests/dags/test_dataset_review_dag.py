"""The dataset_review DAG: create → wait (reschedule-mode sensor) → report → quality gate."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "dataset_review.py"))
    assert bag.import_errors == {}
    return bag.dags["dataset_review"]


def test_tasks_run_in_gate_order(dag):
    order = ["create_review", "wait_for_reviews", "write_report", "quality_gate"]
    for up, down in zip(order, order[1:], strict=False):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} must run before {down}"


def test_wait_is_a_rescheduling_sensor_with_a_poke_interval(dag):
    sensor = dag.get_task("wait_for_reviews")
    assert sensor.mode == "reschedule"
    interval = sensor.poke_interval
    assert (interval.total_seconds() if hasattr(interval, "total_seconds") else interval) > 0
    assert sensor.timeout >= 24 * 3600


def test_params_cover_the_review(dag):
    assert {
        "version",
        "standard",
        "sample_size",
        "seed",
        "reviewers",
        "pass_threshold",
        "timeout_hours",
    } <= set(dag.params)
    dag.params.validate()
    assert dag.params["pass_threshold"] == 0.9


def test_the_callables_run_the_gate_end_to_end(dag, ff_home, monkeypatch):
    """Each task's callable with a hand-made context: create → not done → judged → report → gate."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

    from tasks import review as rv
    from tasks.catalog import Catalog
    from tasks.storage import Lake, local_path

    cat, lake = Catalog.from_settings(), Lake.from_settings()
    cat.ensure_dataset("general", "web")
    uri = lake.uri("datasets", "general", "web", "r1")
    (local_path(uri) / "data").mkdir(parents=True)
    rows = [{"id": f"d{i}", "text": f"text {i}"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows), local_path(uri) / "data" / "part-0.parquet")
    cat.commit_version("general", "web", run_key="r1", uri=uri, usage="pretrain", record_count=30)

    params = {**dag.params.dump(), "version": "general/web@V1", "standard": "general-text"}
    params.update(sample_size=5, reviewers=["ann", "ben"], pass_threshold=0.7, timeout_hours=1)
    ctx = {
        "params": params,
        "dag": dag,
        "run_id": "manual__1",
        "dag_run": SimpleNamespace(triggering_user_name="lead"),
    }

    def call(task_id, *args):
        fn = dag.get_task(task_id).python_callable
        monkeypatch.setitem(fn.__globals__, "get_current_context", lambda: ctx)
        return fn(*args)

    review_id = call("create_review")
    assert call("create_review") == review_id  # a retry finds the same task
    assert rv.get_task(review_id, cat).created_by == "lead"
    assert call("wait_for_reviews", review_id).is_done is False
    items = rv.list_items(review_id, catalog=cat)
    for it in items:
        v = {"verdict": "fail", "tags": ["truncated"]} if it.position < 2 else {"verdict": "pass"}
        rv.submit_verdict(review_id, it.id, it.assignee, v, cat)
    poked = call("wait_for_reviews", review_id)
    assert poked.is_done is True and poked.xcom_value["decided"] == 5
    summary = call("write_report", review_id)
    assert summary["pass_rate"] == 0.6 and lake.exists(summary["uri"])
    with pytest.raises(AirflowFailException, match=r"pass rate 60.0 % \(3 of 5 records\).*70.0 %"):
        call("quality_gate", summary)
    params["pass_threshold"] = 0.6
    assert call("quality_gate", summary)["passed"] is True

    params.update(version="general/web@V1", seed=99, timeout_hours=1e-9)
    ctx["run_id"] = "manual__2"
    late = call("create_review")
    with pytest.raises(AirflowSensorTimeout, match=f"review task {late} is 0.0 % done"):
        call("wait_for_reviews", late)
