"""TrainingWatch on a real MLflow run: NaN/inf stops training with a clear error, findings are recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainers.diagnose import TrainingDiverged
from trainers.tracking import DIAGNOSIS_ARTIFACT, DIAGNOSIS_TAG, TrainingWatch


def test_tags_shared_with_the_orchestrator_match():
    from tasks.training import RUN_KEY_TAG
    from trainers.train import RUN_KEY_TAG as ENGINE_TAG

    assert RUN_KEY_TAG == ENGINE_TAG


@pytest.fixture
def mlflow_run(forgeflow_home):
    import mlflow

    from tasks.registry import client, ensure_experiment

    c = client()
    run = c.create_run(ensure_experiment("watch-test"))
    yield c, run.info.run_id
    mlflow.end_run()


def _diagnosis(c, run_id: str) -> dict:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=DIAGNOSIS_ARTIFACT)
    return json.loads(Path(path).read_text())


def _log(watch: TrainingWatch, step: int, loss: float, grad_norm: float = 1.0, lr: float = 1e-4) -> None:
    state = SimpleNamespace(global_step=step)
    watch.on_log(
        None, state, None, logs={"loss": loss, "grad_norm": grad_norm, "learning_rate": lr, "epoch": 0.1}
    )


def test_nan_for_two_log_steps_stops_with_the_remedy(mlflow_run):
    c, run_id = mlflow_run
    watch = TrainingWatch(c, run_id, nan_patience=2)
    for step, loss in [(1, 5.0), (5, 4.5), (10, float("nan"))]:
        _log(watch, step, loss)  # one non-finite log is tolerated
    with pytest.raises(
        TrainingDiverged, match=r"training stopped at step 15: the loss is nan .* Lower hyperparams"
    ):
        _log(watch, 15, float("nan"), grad_norm=float("nan"))
    d = _diagnosis(c, run_id)
    assert d["findings"][0]["kind"] == "nan_loss" and d["findings"][0]["step"] == 10 and d["log_points"] == 4
    assert c.get_run(run_id).data.tags[DIAGNOSIS_TAG] == "error: nan_loss"


def test_a_recovered_non_finite_log_resets_the_count(mlflow_run):
    c, run_id = mlflow_run
    watch = TrainingWatch(c, run_id, nan_patience=2)
    for step, loss in [(1, 5.0), (5, float("inf")), (10, 4.0), (15, float("nan")), (20, 3.8)]:
        _log(watch, step, loss)
    assert len(watch.history) == 5


def test_finalize_records_curve_findings(mlflow_run):
    c, run_id = mlflow_run
    watch = TrainingWatch(c, run_id)
    for i in range(40):
        loss = 2.0 + 4.0 * math.exp(-i / 6)
        grad = 1.0
        if i == 30:
            loss, grad = loss * 3, 15.0
        _log(watch, (i + 1) * 5, loss, grad)
    watch.on_log(None, SimpleNamespace(global_step=200), None, logs={"eval_loss": 2.1})  # not a train log
    findings = watch.finalize(eval_loss=2.1)
    assert [f["kind"] for f in findings] == ["loss_spike"] and findings[0]["step"] == 155
    assert _diagnosis(c, run_id)["findings"] == findings
    assert c.get_run(run_id).data.tags[DIAGNOSIS_TAG] == "warning: loss_spike"


def test_a_clean_curve_is_tagged_clean(mlflow_run):
    c, run_id = mlflow_run
    watch = TrainingWatch(c, run_id)
    for i in range(20):
        _log(watch, i + 1, 3.0 * math.exp(-i / 10) + 1.0)
    assert watch.finalize() == []
    assert c.get_run(run_id).data.tags[DIAGNOSIS_TAG] == "clean"


def test_a_real_trainer_with_nan_weights_stops_at_the_second_log(mlflow_run, tokenizer, tmp_path):
    """The injected failure: a model whose final norm is NaN, so every loss is NaN from the first step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    from tasks.specs import HyperParams
    from trainers.data import PadCollator, TokenDataset
    from trainers.train import training_arguments

    c, run_id = mlflow_run
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    ids = tokenizer("今天天气很好，我们去公园散步。")["input_ids"]
    data = TokenDataset([{"input_ids": ids, "labels": ids}] * 16)
    hp = HyperParams(max_steps=6, batch_size=4, logging_steps=1, learning_rate=1e-4)
    watch = TrainingWatch(c, run_id)
    trainer = Trainer(
        model=model,
        args=training_arguments(hp, tmp_path / "out"),
        train_dataset=data,
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[watch],
    )
    with pytest.raises(TrainingDiverged, match="training stopped at step 2: the loss is nan"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert _diagnosis(c, run_id)["findings"][0]["step"] == 1
