"""The model_train DAG: health check before training, and the retrain Params."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "model_train.py"))
    assert bag.import_errors == {}
    return bag.dags["model_train"]


def test_health_check_runs_before_the_spec_and_training(dag):
    assert "build_spec" in dag.get_task("health_check").downstream_task_ids
    assert "train" in dag.get_task("build_spec").downstream_task_ids


def test_retrain_params_default_to_a_fresh_training(dag):
    params = dag.params
    assert params["retrain_of"] is None and params["overrides"] == {}
    assert params.get_param("overrides").schema["type"] == "object"
    assert params.get_param("retrain_of").schema["section"] == "Retrain"


def test_overrides_must_be_an_object(dag):
    param = dag.params.get_param("overrides")
    assert param.resolve(value={"hyperparams.epochs": 2}) == {"hyperparams.epochs": 2}
    with pytest.raises(Exception, match="is not of type 'object'"):
        param.resolve(value="learning_rate=1e-5")
