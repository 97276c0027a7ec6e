"""Retrain: an earlier run's spec.json (real SQLite MLflow) becomes a new version, with validated overrides."""

from __future__ import annotations

import time

import pytest

from tasks.engine import load_spec
from tasks.specs import TrainSpec, default_hyperparams
from tasks.training import (
    RUN_KEY_TAG,
    RetrainError,
    build_retrain_spec,
    build_train_spec,
    dataset_from_trigger,
    find_training_run,
)

SOURCE_KEY = "model_train/manual__2026-01-01T00:00:00+00:00"


def _earlier_run(
    run_key: str = SOURCE_KEY, base_model: str = "models:/base/1", tags: dict | None = None
) -> str:
    """An MLflow run as trainers.train leaves it: the run-key tag and the resolved spec as spec.json."""
    import mlflow

    from tasks.registry import client, ensure_experiment

    spec = TrainSpec(
        run_key=run_key,
        method="sft_lora",
        base_model=base_model,
        train_uri="file:///lake/datasets/sft/v1",
        dataset_ref="general/sft@V1",
        output_uri="file:///lake/models/old",
        register_as="chat",
        hyperparams=default_hyperparams("sft_lora", max_steps=10, learning_rate=1e-4),
    )
    client()
    with mlflow.start_run(
        experiment_id=ensure_experiment("forgeflow-train"), tags={RUN_KEY_TAG: run_key, **(tags or {})}
    ) as run:
        mlflow.log_dict(spec.model_dump(mode="json"), "spec.json")
    return run.info.run_id


def test_retrain_reruns_the_earlier_spec_as_a_new_version(ff_home):
    source = _earlier_run()
    for ref in (SOURCE_KEY, SOURCE_KEY.removeprefix("model_train/"), source):
        assert find_training_run(ref).info.run_id == source
    out = build_retrain_spec("manual__2026-01-01T00:00:00+00:00", {}, "model_train/manual__r2")
    spec = load_spec(out["spec_uri"], TrainSpec)
    assert out["retrain_of"] == source and out["dataset_ref"] == "general/sft@V1"
    assert spec.retrain_of == source and spec.run_key == "model_train/manual__r2"
    assert (
        spec.output_uri.endswith("/models/model-train-manual-r2")
        and spec.output_uri != "file:///lake/models/old"
    )
    assert spec.train_uri == "file:///lake/datasets/sft/v1" and spec.register_as == "chat"
    assert spec.hyperparams == default_hyperparams("sft_lora", max_steps=10, learning_rate=1e-4)


def test_overrides_nested_and_dotted(ff_home):
    source = _earlier_run()
    overrides = {"hyperparams": {"learning_rate": 2e-5}, "hyperparams.epochs": 2, "register_as": "chat-v2"}
    spec = load_spec(build_retrain_spec(source, overrides, "k2")["spec_uri"], TrainSpec)
    assert spec.hyperparams.learning_rate == 2e-5 and spec.hyperparams.epochs == 2
    assert spec.hyperparams.max_steps == 10  # the rest of the earlier hyperparameters stays
    assert spec.register_as == "chat-v2"


def test_the_dag_callable_dispatches_to_retrain(ff_home):
    source = _earlier_run()
    params = {"retrain_of": source, "overrides": {"hyperparams.seed": 7}, "method": "pretrain", "dataset": ""}
    assert dataset_from_trigger(params, None) == ""
    spec = load_spec(build_train_spec(params, "model_train/r3", "")["spec_uri"], TrainSpec)
    assert spec.method == "sft_lora" and spec.hyperparams.seed == 7 and spec.retrain_of == source
    with pytest.raises(RetrainError, match="overrides apply to a retrain"):
        build_train_spec(
            {"retrain_of": "", "overrides": {"hyperparams.seed": 7}}, "model_train/r4", "general/x@V1"
        )


BAD_OVERRIDES = [
    ({"hyperparams": {"learning_rate": 1.0}}, r"overrides: hyperparams\.learning_rate: Input should be less"),
    ({"hyperparams.lr": 1e-5}, r"overrides: hyperparams\.lr: Extra inputs are not permitted"),
    ({"optimiser": "sgd"}, r"overrides: optimiser: Extra inputs are not permitted"),
    ({"learning_rate": 1e-5}, r"learning_rate are hyperparameters; write them under 'hyperparams'"),
    ({"train_uri": "file:///other"}, r"train_uri cannot be overridden in a retrain"),
    ({"run_key": "x"}, r"run_key cannot be overridden"),
    ({"hyperparams": 5}, r"overrides: hyperparams: Input should be a valid dictionary"),
    (
        {"method": "distill"},
        r"the spec with the overrides: \(top level\): Value error, method distill needs a teacher",
    ),
]


def test_bad_overrides_name_the_field(ff_home):
    source = _earlier_run()  # one MLflow database for all cases: creating one takes seconds
    for overrides, message in BAD_OVERRIDES:
        with pytest.raises(RetrainError, match=message):
            build_retrain_spec(source, overrides, "k")


def test_a_teacher_key_is_referenced_never_stored(ff_home):
    import mlflow

    from tasks.registry import client, ensure_experiment

    teacher = {"base_url": "http://127.0.0.1:9/v1", "model": "teacher", "api_key_conn_id": "teacher-llm"}
    spec = TrainSpec(
        run_key="distill-1",
        method="distill",
        teacher=teacher,
        train_uri="file:///lake/datasets/sft/v1",
        output_uri="file:///lake/models/old",
    )
    old = {**spec.redacted(), "teacher": {**teacher, "api_key_conn_id": None, "api_key": "***"}}
    client()
    experiment = ensure_experiment("forgeflow-train")
    with mlflow.start_run(experiment_id=experiment, tags={RUN_KEY_TAG: "distill-1"}):
        mlflow.log_dict(spec.redacted(), "spec.json")
    with mlflow.start_run(experiment_id=experiment, tags={RUN_KEY_TAG: "distill-0"}):
        mlflow.log_dict(old, "spec.json")  # written when specs still held a masked key
    again = load_spec(build_retrain_spec("distill-1", {}, "k")["spec_uri"], TrainSpec)
    assert again.teacher.api_key_conn_id == "teacher-llm"  # the reference survives, no key to give again
    with pytest.raises(RetrainError, match="never held; say where it is"):
        build_retrain_spec("distill-0", {}, "k2")
    fixed = build_retrain_spec("distill-0", {"teacher.api_key_env": "TEACHER_KEY"}, "k3")
    assert load_spec(fixed["spec_uri"], TrainSpec).teacher.api_key_env == "TEACHER_KEY"


def test_unknown_runs_and_runs_without_a_spec(ff_home):
    import mlflow

    from tasks.registry import client, ensure_experiment

    with pytest.raises(RetrainError, match="no training run with run key 'nope' or 'model_train/nope'"):
        find_training_run("nope")
    with pytest.raises(RetrainError, match="no MLflow run with id 0123456789abcdef0123456789abcdef"):
        find_training_run("0123456789abcdef0123456789abcdef")
    client()
    with mlflow.start_run(experiment_id=ensure_experiment("forgeflow-train"), tags={RUN_KEY_TAG: "bare"}):
        pass
    with pytest.raises(RetrainError, match="has no spec.json artifact"):
        build_retrain_spec("bare", {}, "k")


def test_latest_base_is_pinned_to_the_version_the_earlier_run_used(ff_home):
    from tasks.registry import client

    c = client()
    c.create_registered_model("base")
    c.create_model_version("base", source="file:///models/base-1")
    time.sleep(0.01)  # orders the version before the run's start (millisecond timestamps)
    tagged = _earlier_run("k-tagged", base_model="models:/base/latest", tags={"base_model": "models:/base/7"})
    untagged = _earlier_run("k-untagged", base_model="models:/base/latest")
    time.sleep(0.01)
    c.create_model_version("base", source="file:///models/base-2")  # registered after the run started
    pinned = load_spec(build_retrain_spec(untagged, {}, "k3")["spec_uri"], TrainSpec)
    assert pinned.base_model == "models:/base/1"
    from_tag = load_spec(build_retrain_spec(tagged, {}, "k4")["spec_uri"], TrainSpec)
    assert from_tag.base_model == "models:/base/7"
    chosen = load_spec(
        build_retrain_spec(untagged, {"base_model": "models:/base/latest"}, "k5")["spec_uri"], TrainSpec
    )
    assert chosen.base_model == "models:/base/latest"  # an explicit override is kept as given


def test_an_earlier_spec_that_no_longer_validates_is_named_as_such(ff_home):
    import mlflow

    from tasks.registry import client, ensure_experiment

    old = {
        "run_key": "old-1",
        "method": "sft_full",
        "train_uri": "file:///lake/datasets/sft/v1",
        "output_uri": "file:///lake/models/old",
        "removed_field": 1,  # written by an older engine
    }
    client()
    with mlflow.start_run(
        experiment_id=ensure_experiment("forgeflow-train"), tags={RUN_KEY_TAG: "old-1"}
    ) as r:
        mlflow.log_dict(old, "spec.json")
    with pytest.raises(RetrainError, match=f"the spec of run {r.info.run_id}: removed_field: Extra inputs"):
        build_retrain_spec("old-1", {}, "k")
