"""The training engine distributed, on CPU, through the real runner: torchrun with 2 processes (gloo),
DeepSpeed ZeRO-2 and ZeRO-3 (1 and 2 processes). The same tiny spec each time; real MLflow (SQLite),
real file lake, real subprocesses. Each test takes about a minute here (2 cores)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from tasks.specs import DistributedConfig, TrainSpec, default_hyperparams

pytestmark = pytest.mark.slow


def _lake(home: Path, *parts: str) -> str:
    return (home / "lake").joinpath(*parts).as_uri()


def _spec(home: Path, tiny_model, run_key: str, **distributed) -> TrainSpec:
    return TrainSpec(
        run_key=run_key,
        method="sft_full",
        tiny=tiny_model,
        train_uri=_lake(home, "datasets", "sft", "v1"),
        eval_uri=_lake(home, "datasets", "sft-eval", "v1"),
        output_uri=_lake(home, "models", run_key),
        experiment=f"dist-{run_key}",
        register_as=run_key,
        hyperparams=default_hyperparams(
            "sft_full", max_steps=6, batch_size=4, max_seq_length=64, learning_rate=5e-4, logging_steps=2
        ),
        distributed=DistributedConfig(**distributed),
    )


def _run(spec: TrainSpec) -> dict:
    from tasks.runners import LocalRunner, prepare

    return LocalRunner().run("trainers.train", prepare(spec, "trainers.train"))


def _check_one_run(result: dict, spec: TrainSpec, home: Path, world_size: int) -> None:
    """One MLflow run, one registered version, the result, and a whole model that loads and generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.registry import client

    assert result["status"] == "success" and result["steps"] == 6
    stage = {"none": None, "zero2": 2, "zero3": 3}[spec.distributed.deepspeed]
    assert result["distributed"]["world_size"] == world_size
    assert result["distributed"]["zero_stage"] == stage  # DeepSpeed really ran (or really did not)
    if world_size > 1:
        assert result["distributed"]["backend"] == "gloo"
    assert math.isfinite(result["metrics"]["train_loss"]) and math.isfinite(result["metrics"]["eval_loss"])
    c = client()
    exp = c.get_experiment_by_name(spec.experiment)
    runs = c.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [result["mlflow_run_id"]]  # rank 1 opened no run of its own
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["resolved.world_size"] == str(world_size)
    assert run.data.params["distributed.deepspeed"] == spec.distributed.deepspeed
    # the step logger ran once: one loss value per logging step (steps 1, 2, 4, 6), not one per rank
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss")] == [1, 2, 4, 6]
    assert len(c.search_model_versions(f"name='{spec.register_as}'")) == 1
    assert result["model_version"] == "1"

    model_dir = home / "lake" / "models" / spec.run_key / "model"
    assert json.loads((model_dir / "forgeflow.json").read_text())["format"] == "full"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = spec.tiny
    # whole weights, not ZeRO-3 shards (an unsaved shard would load as a freshly initialised tensor)
    up = model.model.layers[0].mlp.up_proj.weight
    assert tuple(up.shape) == (cfg.intermediate_size, cfg.hidden_size)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("三加四等于多少？", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def _assert_model_logged_whole(home: Path, run_key: str) -> None:
    """The model directory in the lake and in MLflow holds every weight as a full, non-empty tensor."""
    from safetensors.numpy import load_file

    from tasks.registry import client

    c = client()
    run_id = c.search_runs([c.get_experiment_by_name(f"dist-{run_key}").experiment_id])[0].info.run_id
    assert "model/model.safetensors" in {a.path for a in c.list_artifacts(run_id, "model")}
    weights = load_file(home / "lake" / "models" / run_key / "model" / "model.safetensors")
    assert weights and all(v.size > 0 for v in weights.values())


def test_torchrun_two_processes(forgeflow_home, tiny_model, caplog):
    spec = _spec(forgeflow_home, tiny_model, "ddp-2", processes=2)
    with caplog.at_level(logging.INFO, logger="forgeflow.runner"):
        result = _run(spec)
    _check_one_run(result, spec, forgeflow_home, world_size=2)
    _assert_model_logged_whole(forgeflow_home, "ddp-2")
    lines = [r.getMessage() for r in caplog.records if r.name == "forgeflow.runner"]
    assert any("torch.distributed.run --standalone --nproc_per_node 2" in line for line in lines)
    # each rank's output reaches the task log, prefixed by its rank
    for rank in (0, 1):
        assert any(line.startswith(f"[rank{rank}]: ") and f"rank {rank}/2 (local {rank}/2), cpu" in line for line in lines)
    # rank 1 has no MLflow work: only rank 0 logs the result it wrote
    assert any(line.startswith("[rank0]: ") and "result written to" in line for line in lines)
    assert not any(line.startswith("[rank1]: ") and "result written to" in line for line in lines)

    # a retried task: rank 0 finds the finished run and every rank returns it; no second run or version
    again = _run(spec)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in result.items() if k != "seconds"}
    _check_one_run(again, spec, forgeflow_home, world_size=2)


def test_deepspeed_zero2_one_process(forgeflow_home, tiny_model):
    spec = _spec(forgeflow_home, tiny_model, "zero2-1", deepspeed="zero2")
    _check_one_run(_run(spec), spec, forgeflow_home, world_size=1)


def test_deepspeed_zero3_two_processes_saves_the_whole_model(forgeflow_home, tiny_model):
    spec = _spec(forgeflow_home, tiny_model, "zero3-2", deepspeed="zero3", processes=2)
    _check_one_run(_run(spec), spec, forgeflow_home, world_size=2)
    _assert_model_logged_whole(forgeflow_home, "zero3-2")


def test_every_rank_fails_and_the_error_is_reported(forgeflow_home, tiny_model):
    from tasks.runners import EngineFailed

    spec = _spec(forgeflow_home, tiny_model, "ddp-broken", processes=2).model_copy(
        update={"train_uri": _lake(forgeflow_home, "datasets", "missing", "v1")}
    )
    with pytest.raises(EngineFailed) as e:
        _run(spec)
    message = str(e.value)
    assert "train_uri" in message and "missing" in message and "exit code" in message
    assert "exit code 0" not in message
    for rank in (0, 1):
        assert f"[rank{rank}]: " in message, rank  # both ranks' errors in the log tail
