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
