"""The training engine distributed, on CPU, through the real runner: torchrun with 2 processes (gloo),
DeepSpeed ZeRO-2 and ZeRO-3 (1 and 2 processes), and ZeRO-3 on two nodes (two torchrun agents on this
machine, each with a scratch directory of its own) whose checkpoints must hold both nodes' shards. The
same tiny spec each time; real MLflow (SQLite), real file lake, real subprocesses. Each test takes about
a minute here (2 cores)."""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.specs import DistributedConfig, TrainSpec, default_hyperparams

pytestmark = pytest.mark.slow


def _lake(home: Path, *parts: str) -> str:
    return (home / "lake").joinpath(*parts).as_uri()


SAVE_EVERY_3 = {"save_strategy": "steps", "save_steps": 3}  # checkpoints 3 and 6 of 6 steps


def _spec(home: Path, tiny_model, run_key: str, hp: dict | None = None, **distributed) -> TrainSpec:
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
            "sft_full",
            max_steps=6,
            batch_size=4,
            max_seq_length=64,
            learning_rate=5e-4,
            logging_steps=2,
            **(hp or {}),
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
        assert any(
            line.startswith(f"[rank{rank}]: ") and f"rank {rank}/2 (local {rank}/2), cpu" in line
            for line in lines
        )
    # rank 1 has no MLflow work: only rank 0 logs the result it wrote
    assert any(line.startswith("[rank0]: ") and "result written to" in line for line in lines)
    assert not any(line.startswith("[rank1]: ") and "result written to" in line for line in lines)

    # a retried task: rank 0 finds the finished run and every rank returns it; no second run or version
    again = _run(spec)
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in result.items() if k != "seconds"
    }
    _check_one_run(again, spec, forgeflow_home, world_size=2)


def test_deepspeed_zero2_one_process(forgeflow_home, tiny_model):
    spec = _spec(forgeflow_home, tiny_model, "zero2-1", deepspeed="zero2")
    _check_one_run(_run(spec), spec, forgeflow_home, world_size=1)


def _assert_checkpoints_hold_every_rank(home: Path, run_key: str, rank0: list[str], rank1: list[str]) -> None:
    """Checkpoints 3 and 6 in the lake hold both ranks' files (RNG states, ZeRO shards) and a marker that
    lists exactly what is there; rank 0 alone marked each one, once (``rank0``/``rank1``: their log lines)."""
    root = home / "lake" / "models" / run_key / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    for step in (3, 6):
        d = root / f"checkpoint-{step}"
        files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
        assert ".complete" in files
        files.remove(".complete")
        assert json.loads((d / ".complete").read_text())["files"] == files
        for rank in (0, 1):
            assert f"rng_state_{rank}.pth" in files, (rank, files)
            shard = rf"global_step{step}/(bf16_)?zero_pp_rank_{rank}_mp_rank_00_optim_states\.pt"
            assert any(re.fullmatch(shard, f) for f in files), (rank, files)
        marked = f"{run_key}/checkpoints/checkpoint-{step} complete"
        assert sum(marked in line for line in rank0) == 1 and not any(marked in line for line in rank1)


def test_deepspeed_zero3_two_processes_saves_the_whole_model(forgeflow_home, tiny_model, caplog):
    spec = _spec(forgeflow_home, tiny_model, "zero3-2", hp=SAVE_EVERY_3, deepspeed="zero3", processes=2)
    with caplog.at_level(logging.INFO, logger="forgeflow.runner"):
        result = _run(spec)
    _check_one_run(result, spec, forgeflow_home, world_size=2)
    _assert_model_logged_whole(forgeflow_home, "zero3-2")
    lines = [r.getMessage() for r in caplog.records if r.name == "forgeflow.runner"]
    ranks = [[line for line in lines if line.startswith(f"[rank{rank}]: ")] for rank in (0, 1)]
    _assert_checkpoints_hold_every_rank(forgeflow_home, "zero3-2", *ranks)


def test_deepspeed_zero3_on_two_nodes_publishes_both_nodes_shards(forgeflow_home, tiny_model, tmp_path):
    """Two nodes as two torchrun agents (static rendezvous on 127.0.0.1, one process each). Node 1 has
    FORGEFLOW_HOME, and so its scratch, elsewhere, with the same lake and MLflow: its rank's files exist
    only on its own disk, so they reach the lake only if node 1 uploads them."""
    from tasks.runners import LocalRunner, prepare, read_result
    from tasks.settings import PROJECT_ROOT, get_settings
    from tasks.specs import slug

    spec = _spec(forgeflow_home, tiny_model, "zero3-nodes", hp=SAVE_EVERY_3, deepspeed="zero3", nodes=2)
    spec_uri = prepare(spec, "trainers.train")
    s = get_settings()
    same_stores = {
        "FORGEFLOW_LAKE_URI": s.lake_uri,
        "FORGEFLOW_MLFLOW_TRACKING_URI": s.mlflow_tracking_uri,
        "FORGEFLOW_MLFLOW_ARTIFACT_ROOT": s.mlflow_artifact_root,
        "FORGEFLOW_CATALOG_URL": s.catalog_url,
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    homes = [forgeflow_home, tmp_path / "node1"]
    procs, logs = [], []
    for node, home in enumerate(homes):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        cmd += ["--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port)]
        logs.append(tmp_path / f"node{node}.log")
        with logs[-1].open("w") as out:
            procs.append(
                subprocess.Popen(
                    [*cmd, "-m", "trainers.train", spec_uri],
                    cwd=PROJECT_ROOT,
                    env=LocalRunner().env() | same_stores | {"FORGEFLOW_HOME": str(home)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        rcs = [p.wait(timeout=900) for p in procs]  # a bound on a hung run, not a timing assertion
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [log.read_text() for log in logs]
    assert rcs == [0, 0], "\n".join(t[-3000:] for t in texts)
    result = read_result(spec_uri)
    assert result["steps"] == 6 and result["distributed"]["world_size"] == 2
    assert result["distributed"]["zero_stage"] == 3 and result["distributed"]["nodes"] == 2
    _assert_checkpoints_hold_every_rank(forgeflow_home, "zero3-nodes", *(t.splitlines() for t in texts))
    # node 1 kept its own scratch and removed it at the end
    node1_scratch = homes[1] / "scratch" / "train" / slug(spec.run_key)
    assert homes[1].joinpath("scratch").is_dir() and not node1_scratch.exists()


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
