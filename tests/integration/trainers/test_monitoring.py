"""Monitoring on the real engine: system metrics and the curve diagnosis in MLflow, a retrain as a new
version, and a run that diverges (NaN weights) failing with the diagnosis in the runner's error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.specs import TrainSpec, default_hyperparams

pytestmark = pytest.mark.slow


def _lake(home: Path, *parts: str) -> str:
    return (home / "lake").joinpath(*parts).as_uri()


def _spec(home: Path, tiny_model, run_key: str, **kw) -> TrainSpec:
    hp = kw.pop("hyperparams", None) or default_hyperparams(
        "sft_full", max_steps=4, batch_size=8, max_seq_length=64, logging_steps=1, learning_rate=5e-4
    )
    return TrainSpec(
        run_key=run_key,
        method="sft_full",
        tiny=tiny_model,
        train_uri=_lake(home, "datasets", "sft", "v1"),
        dataset_ref="general/sft@V1",
        output_uri=_lake(home, "models", run_key),
        hyperparams=hp,
        **kw,
    )


def _train(spec_uri: str) -> dict:
    from tasks.storage import Lake
    from trainers.train import main

    rc = main([spec_uri])
    result = Lake.from_settings().read_json(spec_uri.rsplit("/", 1)[0] + "/result.json")
    assert rc == 0, result
    return result


def test_system_metrics_diagnosis_and_retrain(forgeflow_home, tiny_model, monkeypatch):
    import mlflow

    from tasks.engine import write_spec
    from tasks.registry import client
    from tasks.storage import Lake
    from tasks.training import build_retrain_spec
    from trainers.tracking import DIAGNOSIS_TAG
    from trainers.train import RETRAIN_OF_TAG

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    lake = Lake.from_settings()
    first = _spec(forgeflow_home, tiny_model, "monitor-1")
    r1 = _train(write_spec(first, lake.uri("specs", "monitor-1", "spec.json")))
    c = client()
    run = c.get_run(r1["mlflow_run_id"])
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    assert isinstance(r1["diagnosis"], list)
    assert run.data.tags[DIAGNOSIS_TAG]  # 'clean' or the kinds found
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="diagnosis.json")
    diagnosis = json.loads(Path(path).read_text())
    assert diagnosis["log_points"] == 4 and diagnosis["findings"] == r1["diagnosis"]

    # Retrain by run key, two steps more: a new run and output, tagged with the run it retrains.
    out = build_retrain_spec("monitor-1", {"hyperparams.max_steps": 6}, "monitor-1-retrain")
    r2 = _train(out["spec_uri"])
    assert r2["mlflow_run_id"] != r1["mlflow_run_id"] and r2["steps"] == 6
    assert r2["model_uri"].endswith("/models/monitor-1-retrain/model")
    run2 = c.get_run(r2["mlflow_run_id"])
    assert run2.data.tags[RETRAIN_OF_TAG] == r1["mlflow_run_id"]
    assert run2.data.tags["dataset_ref"] == "general/sft@V1"
    assert run2.data.params["hyperparams.learning_rate"] == "0.0005"  # the rest is the earlier spec


def test_a_diverging_run_fails_with_the_finding_in_the_runner_error(forgeflow_home, tiny_model):
    """The injected failure: a base model whose final norm is NaN, so every loss is NaN."""
    import torch

    from tasks.registry import client
    from tasks.runners import EngineFailed, LocalRunner, prepare
    from trainers.data import train_tokenizer
    from trainers.modeling import build_tiny_model, save_model_dir
    from trainers.tracking import DIAGNOSIS_TAG

    tokenizer = train_tokenizer(["一加一等于二。", "二加三等于五。"] * 20, 300)
    model = build_tiny_model(tiny_model, tokenizer, seed=0)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    base = save_model_dir(model, tokenizer, forgeflow_home / "nan-base", {})
    spec = _spec(forgeflow_home, tiny_model, "monitor-nan", base_model=str(base))
    with pytest.raises(EngineFailed) as e:
        LocalRunner().run("trainers.train", prepare(spec, "trainers.train"))
    msg = str(e.value)
    assert "engine failed: TrainingDiverged: training stopped at step 2: the loss is nan" in msg
    assert "--- diagnosis" in msg and "[error] nan_loss line" in msg
    assert "remedy: lower hyperparams.learning_rate" in msg
    runs = client().search_runs(
        [client().get_experiment_by_name("forgeflow-train").experiment_id],
        filter_string="tags.`forgeflow.run_key` = 'monitor-nan'",
    )
    assert runs[0].info.status == "FAILED" and runs[0].data.tags[DIAGNOSIS_TAG] == "error: nan_loss"
