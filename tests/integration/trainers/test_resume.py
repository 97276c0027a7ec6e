"""Checkpoints that survive the process, on a tiny Llama with real MLflow (SQLite) and a file lake.

One uninterrupted reference run (a checkpoint every 3 of 14 steps, two passes over 32 blocks) is the
yardstick: a run SIGKILLed after its checkpoint at step 9 and continued from 'latest' must reproduce its
per-step losses and final weights, and the killed run's MLflow run ends KILLED; so must two ranks under
torchrun (gloo), killed and continued with two ranks; a SIGTERM stops a run with a checkpoint and a
'stopped' result; continue_skip leaves out exactly the skipped samples; weights_only starts a new
schedule from the checkpoint's weights (full model and LoRA adapter).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.specs import DistributedConfig, ResumeSpec, TrainSpec, default_hyperparams

pytestmark = pytest.mark.slow

BATCH = 4
STEPS = 14
TINY = {  # as the conftest's tiny_model: 2 layers, 64 dims
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 512,
    "max_position_embeddings": 128,
}
GATE = Path(__file__).with_name("gated_engine.py")


def _spec(home: Path, key: str, **overrides) -> TrainSpec:
    hp = {
        "max_steps": STEPS,
        "batch_size": BATCH,
        "max_seq_length": 32,
        "learning_rate": 5e-4,
        "warmup_ratio": 0.1,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 3,
        "save_total_limit": None,
        **overrides.pop("hp", {}),
    }
    fields = {
        "run_key": key,
        "method": "pretrain",
        "tiny": TINY,
        "validation_split": 0,
        "train_uri": (home / "lake" / "datasets" / "pretrain" / "v1").as_uri(),
        "output_uri": (home / "lake" / "models" / key).as_uri(),
        "hyperparams": default_hyperparams("pretrain", **hp),
        **overrides,
    }
    return TrainSpec(**fields)


def _write(spec: TrainSpec) -> str:
    from tasks.engine import write_spec
    from tasks.storage import Lake

    lake = Lake.from_settings()
    return write_spec(spec, lake.uri("specs", spec.run_key, "spec.json"))


def _run(spec: TrainSpec) -> dict:
    from tasks.storage import Lake
    from trainers.train import main

    spec_uri = _write(spec)
    rc = main([spec_uri])
    result = Lake.from_settings().read_json(spec_uri.rsplit("/", 1)[0] + "/result.json")
    assert rc == 0 and result["status"] == "success", result
    return result


def _losses(run_id: str) -> dict[int, float]:
    from tasks.registry import client

    return {m.step: m.value for m in client().get_metric_history(run_id, "loss")}


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    name = (
        "adapter_model.safetensors" if (model_dir / "adapter_config.json").exists() else "model.safetensors"
    )
    return load_file(model_dir / name)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _complete(spec: TrainSpec) -> list[tuple[int, bool]]:
    from tasks.storage import Lake
    from trainers.checkpoints import checkpoints_uri, list_checkpoints

    return [
        (r.step, r.complete) for r in list_checkpoints(Lake.from_settings(), checkpoints_uri(spec.output_uri))
    ]


class Seen:
    """Which training samples the Trainer fetched, in order (TokenDataset.__getitem__ is the only way in)."""

    def __init__(self, monkeypatch):
        from trainers.data import TokenDataset

        self.indices: list[int] = []
        original = TokenDataset.__getitem__

        def getitem(ds, i):
            self.indices.append(int(i))
            return original(ds, i)

        monkeypatch.setattr(TokenDataset, "__getitem__", getitem)

    def take(self) -> list[int]:
        out, self.indices = self.indices, []
        return out


@pytest.fixture(scope="module")
def reference(forgeflow_home):
    """The uninterrupted run: its result, per-step losses and the order it read the samples in."""
    mp = pytest.MonkeyPatch()
    seen = Seen(mp)
    spec = _spec(forgeflow_home, "reference")
    result = _run(spec)
    mp.undo()
    from tasks.registry import client

    blocks = int(client().get_run(result["mlflow_run_id"]).data.params["resolved.train_blocks"])
    order = seen.take()
    assert result["steps"] == STEPS and blocks < len(order) < 2 * blocks  # into the second pass
    assert sorted(order[:blocks]) == list(range(blocks))  # a pass is a permutation of the blocks
    losses = _losses(result["mlflow_run_id"])
    return {"spec": spec, "result": result, "losses": losses, "order": order, "blocks": blocks}


def _start_gated(
    spec: TrainSpec, gate_step: int, workdir: Path, processes: int = 1
) -> tuple[subprocess.Popen, Path]:
    """The engine as LocalRunner starts it (own process group, its env; torchrun for several processes),
    every rank parked at ``gate_step``."""
    from tasks.runners import LocalRunner
    from tasks.settings import PROJECT_ROOT

    workdir.mkdir(parents=True, exist_ok=True)
    env = LocalRunner().env() | {
        "FORGEFLOW_TEST_GATE_STEP": str(gate_step),
        "FORGEFLOW_TEST_GATE_DIR": str(workdir),
    }
    cmd = [sys.executable, str(GATE), _write(spec)]
    if processes > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    log_path = workdir / "engine.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300  # a bound on a hung engine, not a timing assertion
    while not all((workdir / f"parked-{rank}").exists() for rank in range(processes)):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                _kill(proc, workdir)
            pytest.fail(f"engine did not reach step {gate_step}:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.05)
    return proc, log_path


def _alive(pid: int) -> bool:
    try:
        state = next(
            line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:")
        )
    except FileNotFoundError:
        return False
    return "zombie" not in state


def _kill(proc: subprocess.Popen, workdir: Path) -> None:
    """SIGKILL the engine's process group and every parked rank's: torchrun starts each rank in a
    session of its own, which the launcher's group does not reach (a lost machine takes them all)."""
    ranks = [int(p.read_text()) for p in workdir.glob("parked-*")]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 60  # a bound, not a timing assertion
    while any(_alive(pid) for pid in ranks if pid != proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in ranks if pid != proc.pid), ranks


def test_sigkill_then_continue_matches_the_uninterrupted_run(forgeflow_home, reference, tmp_path):
    from tasks.registry import client
    from trainers.checkpoints import ENDED_BY_TAG, RESUMED_FROM_CHECKPOINT_TAG, RESUMED_FROM_RUN_TAG

    spec = _spec(forgeflow_home, "killed", hp={"save_total_limit": 2})
    proc, log_path = _start_gated(spec, gate_step=11, workdir=tmp_path)  # steps 10 and 11 are not saved
    _kill(proc, tmp_path)
    out = forgeflow_home / "lake" / "models" / "killed"
    assert _complete(spec) == [(6, True), (9, True)]  # keep 2, in the lake too
    assert not (out / "model").exists()
    killed_meta = json.loads((out / "checkpoints" / "checkpoint-9" / "forgeflow_checkpoint.json").read_text())
    killed_run = killed_meta["mlflow_run_id"]
    assert client().get_run(killed_run).info.status == "RUNNING"  # nothing ended it

    resumed = spec.model_copy(update={"run_key": "killed-resumed", "resume": ResumeSpec(from_uri="latest")})
    r = _run(resumed)
    assert r["steps"] == STEPS
    assert _complete(spec) == [(12, True), (14, True)]

    # The same global steps and the same loss at each of them, before and after the kill.
    losses = _losses(r["mlflow_run_id"])
    assert sorted(losses) == sorted(reference["losses"]) == list(range(1, STEPS + 1))
    for step, loss in reference["losses"].items():
        assert losses[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step
    ref_out = forgeflow_home / "lake" / "models" / "reference"
    assert _max_diff(_weights(ref_out / "model"), _weights(out / "model")) < 1e-4

    tags = client().get_run(r["mlflow_run_id"]).data.tags
    assert tags[RESUMED_FROM_RUN_TAG] == killed_run != r["mlflow_run_id"]
    assert tags[RESUMED_FROM_CHECKPOINT_TAG].endswith("/killed/checkpoints/checkpoint-9")
    # the killed run no longer shows as running: the resume ended it and says so
    killed = client().get_run(killed_run)
    assert killed.info.status == "KILLED" and killed.info.end_time is not None
    assert killed.data.tags[ENDED_BY_TAG] == f"resumed by {r['mlflow_run_id']}"


TWO_RANK_STEPS = 9


def test_two_ranks_sigkilled_then_continued_with_two_ranks_match_the_uninterrupted_run(
    forgeflow_home, tmp_path
):
    """torchrun, 2 processes (gloo), through the real runner: an uninterrupted run, and one SIGKILLed
    (every process) at step 8 after its complete checkpoint at 6, then continued from 'latest' with 2
    ranks.

    Losses must match the uninterrupted run step by step, with the single-process test's tolerance: with
    two ranks each all-reduced value is a sum of two addends, which IEEE addition gives bit-identically
    in either order, so gloo adds no nondeterminism; the checkpoint restores weights, AdamW state,
    schedule, both ranks' RNG states (rng_state_0/1.pth) and the data position. Here the losses and
    final weights come out bit-identical; the tolerance only leaves room for float32 round-off of CPU
    kernels that may differ between machines, and is far below a step's change in loss (~0.02-0.2).
    """
    from tasks.registry import client
    from tasks.runners import LocalRunner, prepare
    from trainers.checkpoints import ENDED_BY_TAG

    def run_two(spec: TrainSpec) -> dict:
        return LocalRunner().run("trainers.train", prepare(spec, "trainers.train"))

    two = {"distributed": DistributedConfig(processes=2), "hp": {"max_steps": TWO_RANK_STEPS}}
    reference = run_two(_spec(forgeflow_home, "two-ranks-reference", **two))
    assert reference["steps"] == TWO_RANK_STEPS and reference["distributed"]["world_size"] == 2

    spec = _spec(forgeflow_home, "two-ranks", register_as="two-ranks", **two)
    proc, _ = _start_gated(spec, gate_step=8, workdir=tmp_path, processes=2)
    _kill(proc, tmp_path)
    out = forgeflow_home / "lake" / "models" / "two-ranks"
    assert _complete(spec) == [(3, True), (6, True)] and not (out / "model").exists()
    checkpoint = out / "checkpoints" / "checkpoint-6"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    killed_run = json.loads((checkpoint / "forgeflow_checkpoint.json").read_text())["mlflow_run_id"]
    assert json.loads((checkpoint / "forgeflow_checkpoint.json").read_text())["world_size"] == 2
    c = client()
    assert c.get_run(killed_run).info.status == "RUNNING"

    r = run_two(
        spec.model_copy(update={"run_key": "two-ranks-resumed", "resume": ResumeSpec(from_uri="latest")})
    )
    assert r["steps"] == TWO_RANK_STEPS and r["distributed"]["world_size"] == 2
    assert r["model_version"] == "1" and len(c.search_model_versions("name='two-ranks'")) == 1
    assert _complete(spec) == [(3, True), (6, True), (9, True)]  # save_total_limit None: all
    ref_losses, losses = _losses(reference["mlflow_run_id"]), _losses(r["mlflow_run_id"])
    assert sorted(losses) == sorted(ref_losses) == list(range(1, TWO_RANK_STEPS + 1))  # no gap, no repeat
    for step in range(1, TWO_RANK_STEPS + 1):  # 1..6 copied from the killed run, 7..9 trained after resume
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-4, abs=1e-5), step
    ref_model = forgeflow_home / "lake" / "models" / "two-ranks-reference" / "model"
    assert _max_diff(_weights(ref_model), _weights(out / "model")) < 1e-4
    killed = c.get_run(killed_run)
    assert killed.info.status == "KILLED"
    assert killed.data.tags[ENDED_BY_TAG] == f"resumed by {r['mlflow_run_id']}"


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_registers_nothing(
    forgeflow_home, reference, monkeypatch
):
    from tasks.registry import client
    from tasks.runners import EngineStoppedError, read_result
    from tasks.storage import Lake
    from trainers import checkpoints
    from trainers.train import main

    # In this process: a real SIGTERM, delivered during step 5, to the engine's handler (the process
    # group / LocalRunner side is the SIGKILL test's). save_strategy 'no': the only checkpoint is the
    # one the stop request saves.
    original = checkpoints.CheckpointCallback.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(checkpoints.CheckpointCallback, "on_step_end", on_step_end)
    spec = _spec(forgeflow_home, "stopped", register_as="resume-stopped", hp={"save_strategy": "no"})
    spec_uri = _write(spec)
    assert main([spec_uri]) == 3
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is not checkpoints.STOP.handle  # handler restored

    lake = Lake.from_settings()
    result = lake.read_json(spec_uri.rsplit("/", 1)[0] + "/result.json")
    ckpt_uri = spec.output_uri + "/checkpoints/checkpoint-5"
    assert result["status"] == "stopped" and result["steps"] == 5 and result["checkpoint_uri"] == ckpt_uri
    assert "SIGTERM at step 5" in result["error"] and ckpt_uri in result["error"]
    assert _complete(spec) == [(5, True)]
    assert not (forgeflow_home / "lake" / "models" / "stopped" / "model").exists()
    c = client()
    assert c.get_run(result["mlflow_run_id"]).info.status == "KILLED"
    assert c.search_model_versions("name='resume-stopped'") == []
    with pytest.raises(EngineStoppedError, match="checkpoint-5"):
        read_result(spec_uri)  # what the Airflow task raises

    r = _run(spec.model_copy(update={"run_key": "stopped-resumed", "resume": ResumeSpec(from_uri="latest")}))
    assert r["steps"] == STEPS and r["model_version"] == "1"
    assert checkpoints.ENDED_BY_TAG not in c.get_run(result["mlflow_run_id"]).data.tags  # it had ended
    losses = _losses(r["mlflow_run_id"])
    for step in range(1, STEPS + 1):
        assert losses[step] == pytest.approx(reference["losses"][step], rel=1e-4, abs=1e-5), step


def test_continue_skip_leaves_out_exactly_the_skipped_samples(forgeflow_home, reference, monkeypatch):
    from trainers.checkpoints import SKIP_SAMPLES_TAG

    # The samples in the order the reference fetched them: pass 1, then part of pass 2 (the data loader
    # fetches one batch ahead, so a few more than it trained on).
    order, blocks = reference["order"], reference["blocks"]
    ref_ckpt = reference["spec"].output_uri + "/checkpoints/checkpoint-3"
    seen = Seen(monkeypatch)
    skip = _spec(
        forgeflow_home, "skip", resume=ResumeSpec(from_uri=ref_ckpt, mode="continue_skip", skip_samples=6)
    )
    r = _run(skip)
    after = seen.take()
    assert r["steps"] == STEPS  # the same number of steps
    # Step 3 ends at sample 12; samples 12..17 are skipped and the stream goes on at 18, into pass 2.
    assert len(after) > len(order) - 18 and after[: len(order) - 18] == order[18:]
    assert not set(order[12:18]) & set(after[: blocks - 18])  # not seen in the pass they were cut from
    from tasks.registry import client

    assert client().get_run(r["mlflow_run_id"]).data.tags[SKIP_SAMPLES_TAG] == "6"
    meta = json.loads(
        (
            forgeflow_home
            / "lake"
            / "models"
            / "skip"
            / "checkpoints"
            / "checkpoint-9"
            / "forgeflow_checkpoint.json"
        ).read_text()
    )
    assert meta["skip_windows"] == [[12, 6]]

    # Continuing a checkpoint written after the skip replays it: the same samples as the skip run.
    cont = _spec(
        forgeflow_home,
        "skip-continued",
        resume=ResumeSpec(from_uri=skip.output_uri + "/checkpoints/checkpoint-9"),
    )
    r2 = _run(cont)
    per_pass = -(-blocks // BATCH)  # steps; the last batch of a pass may be short
    position = (9 // per_pass) * blocks + (9 % per_pass) * BATCH  # in the skip run's (skipped) stream
    assert r2["steps"] == STEPS and seen.take() == after[position - 12 :]


def test_weights_only_starts_a_new_schedule_from_the_weights(forgeflow_home, reference):
    from tasks.registry import client
    from trainers.checkpoints import RESUME_MODE_TAG

    ckpt_dir = forgeflow_home / "lake" / "models" / "reference" / "checkpoints" / "checkpoint-9"
    spec = _spec(
        forgeflow_home,
        "weights-only",
        resume=ResumeSpec(from_uri=ckpt_dir.as_uri(), mode="weights_only"),
        hp={"max_steps": 2, "learning_rate": 1e-6, "warmup_ratio": 0, "save_strategy": "no"},
    )
    r = _run(spec)
    assert r["steps"] == 2  # a fresh schedule: steps count from 0, not from the checkpoint's 9
    run = client().get_run(r["mlflow_run_id"])
    assert run.data.tags[RESUME_MODE_TAG] == "weights_only" and sorted(_losses(run.info.run_id)) == [1, 2]
    start, after = _weights(ckpt_dir), _weights(forgeflow_home / "lake" / "models" / "weights-only" / "model")
    assert _max_diff(start, after) < 2e-5  # two steps at LR 1e-6 from the checkpoint's weights
    # ... where five more steps of the reference moved them by much more
    assert _max_diff(start, _weights(forgeflow_home / "lake" / "models" / "reference" / "model")) > 2e-4


def test_weights_only_from_a_lora_checkpoint_loads_the_adapter(forgeflow_home):
    lora = dict(
        method="sft_lora",
        train_uri=(forgeflow_home / "lake" / "datasets" / "sft" / "v1").as_uri(),
    )
    first = _spec(forgeflow_home, "lora", hp={"max_steps": 3, "max_seq_length": 64}, **lora)
    _run(first)
    ckpt_dir = forgeflow_home / "lake" / "models" / "lora" / "checkpoints" / "checkpoint-3"
    adapter = _weights(ckpt_dir)
    assert max(float(v.abs().max()) for k, v in adapter.items() if "lora_B" in k) > 1e-4  # trained, not init

    again = _spec(
        forgeflow_home,
        "lora-weights-only",
        resume=ResumeSpec(from_uri=first.output_uri, mode="weights_only"),  # a run's output: its latest
        hp={
            "max_steps": 1,
            "learning_rate": 1e-6,
            "warmup_ratio": 0,
            "save_strategy": "no",
            "max_seq_length": 64,
        },
        **lora,
    )
    assert _run(again)["steps"] == 1
    after = _weights(forgeflow_home / "lake" / "models" / "lora-weights-only" / "adapter")
    assert _max_diff(adapter, after) < 1e-5  # one step at LR 1e-6; a fresh adapter has lora_B = 0


def test_resume_errors_name_the_checkpoint_and_list_the_complete_ones(forgeflow_home, reference):
    from tasks.storage import Lake
    from trainers.train import main

    ckpts = forgeflow_home / "lake" / "models" / "reference" / "checkpoints"
    (ckpts / "checkpoint-99").mkdir()  # an interrupted save: no .complete marker
    bad = _spec(forgeflow_home, "bad-resume", resume=ResumeSpec(from_uri=(ckpts / "checkpoint-99").as_uri()))
    spec_uri = _write(bad)
    assert main([spec_uri]) == 1
    error = Lake.from_settings().read_json(spec_uri.rsplit("/", 1)[0] + "/result.json")["error"]
    assert "checkpoint-99" in error and "incomplete" in error and "checkpoint-14" in error

    drift = _spec(
        forgeflow_home,
        "drift",
        hp={"batch_size": 8},
        resume=ResumeSpec(from_uri=(ckpts / "checkpoint-9").as_uri()),
    )
    spec_uri = _write(drift)
    assert main([spec_uri]) == 1
    error = Lake.from_settings().read_json(spec_uri.rsplit("/", 1)[0] + "/result.json")["error"]
    assert "hyperparams.batch_size: checkpoint 4, spec 8" in error and "weights_only" in error
    (ckpts / "checkpoint-99").rmdir()
