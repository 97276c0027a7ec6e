"""The pure parts of trainers/checkpoints.py: listing, resolution, retention, publishing (one process, and
several ranks on simulated nodes), resume checks, the skipped sample stream, stop requests, the
'stopped' result contract, and ending the MLflow run a kill left RUNNING."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from tasks.engine import EngineStopped, engine_main
from tasks.specs import ResumeSpec, Spec, TrainSpec, default_hyperparams
from tasks.storage import Lake
from trainers import checkpoints as ck
from trainers import distributed


def _ckpt(root: Path, step: int, complete: bool = True, **files: str) -> Path:
    d = root / "checkpoints" / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for name, text in {"trainer_state.json": json.dumps({"global_step": step}), **files}.items():
        (d / name).write_text(text)
    if complete:
        (d / ck.COMPLETE_MARKER).write_text("{}")
    return d


def _spec(output: Path, **overrides) -> TrainSpec:
    return TrainSpec(
        run_key="r",
        method="pretrain",
        train_uri="file:///data/v1",
        output_uri=output.as_uri(),
        hyperparams=default_hyperparams("pretrain", batch_size=4),
        **overrides,
    )


# ---------------------------------------------------------------- spec


def test_resume_spec_ties_skip_samples_to_its_mode():
    assert ResumeSpec(from_uri="latest").mode == "continue"
    assert ResumeSpec(from_uri="latest", mode="continue_skip", skip_samples=5).skip_samples == 5
    with pytest.raises(ValidationError, match="continue_skip needs resume.skip_samples >= 1"):
        ResumeSpec(from_uri="latest", mode="continue_skip")
    with pytest.raises(ValidationError, match="only applies to mode continue_skip"):
        ResumeSpec(from_uri="latest", skip_samples=3)
    with pytest.raises(ValidationError, match="if_missing 'start' applies to from_uri 'latest' only"):
        ResumeSpec(from_uri="file:///x/checkpoints/checkpoint-1", if_missing="start")
    with pytest.raises(ValidationError, match="save_total_limit"):
        default_hyperparams("pretrain", save_total_limit=0)


# ---------------------------------------------------------------- listing, resolution, retention


def test_list_and_resolve_only_trust_complete_checkpoints(tmp_path):
    lake = Lake(tmp_path.as_uri())
    out = tmp_path / "run"
    for step, complete in ((3, True), (6, True), (9, False)):
        _ckpt(out, step, complete)
    (out / "checkpoints" / "notes").mkdir()  # not a checkpoint
    refs = ck.list_checkpoints(lake, ck.checkpoints_uri(out.as_uri()))
    assert [(r.step, r.complete) for r in refs] == [(3, True), (6, True), (9, False)]

    latest = ck.resolve_checkpoint(lake, "latest", out.as_uri())
    assert latest.step == 6 and latest.uri == ck.checkpoint_uri(out.as_uri(), 6)
    for other_run in (out.as_uri(), out.as_uri() + "/checkpoints", str(out)):  # another run's output
        assert ck.resolve_checkpoint(lake, other_run, (tmp_path / "new").as_uri()).step == 6
    assert ck.resolve_checkpoint(lake, ck.checkpoint_uri(out.as_uri(), 3), "file:///x").step == 3

    with pytest.raises(
        ck.CheckpointError, match=r"incomplete checkpoint.*found: .*checkpoint-3, .*checkpoint-6 under"
    ):
        ck.resolve_checkpoint(lake, ck.checkpoint_uri(out.as_uri(), 9), "file:///x")
    with pytest.raises(
        ck.CheckpointError, match="checkpoint-12: no such checkpoint; complete checkpoints found"
    ):
        ck.resolve_checkpoint(lake, ck.checkpoint_uri(out.as_uri(), 12), "file:///x")
    with pytest.raises(ck.CheckpointError, match=r"no complete checkpoint under .*empty/checkpoints.*none"):
        ck.resolve_checkpoint(lake, (tmp_path / "empty").as_uri(), "file:///x")
    assert ck.resolve_checkpoint(lake, "latest", (tmp_path / "empty").as_uri()) is None


def test_retention_keeps_the_newest_n_and_drops_leftovers():
    def refs(*steps_complete):
        return [ck.CheckpointRef(f"u/{s}", s, c) for s, c in steps_complete]

    current = refs((2, True), (4, False), (6, True), (8, True), (10, True), (12, False))
    steps = lambda rs: [r.step for r in rs]  # noqa: E731
    # at step 8: 10 and 12 belong to a replaced timeline, 4 is an interrupted save, keep 2 of 2/6/8
    assert steps(ck.retention(current, 8, keep=2)) == [2, 4, 10, 12]
    assert steps(ck.retention(current, 8, keep=None)) == [4, 10, 12]  # None: all complete ones
    assert steps(ck.retention(refs((5, True)), 5, keep=1)) == []


def test_publish_marks_complete_last_and_replaces_a_stale_copy(tmp_path):
    lake = Lake(tmp_path.as_uri())
    local = tmp_path / "scratch" / "checkpoint-4"
    (local / "sub").mkdir(parents=True)
    (local / "model.safetensors").write_bytes(b"weights")
    (local / "sub" / "x.json").write_text("{}")
    uri = ck.checkpoint_uri((tmp_path / "run").as_uri(), 4)
    stale = _ckpt(tmp_path / "run", 4, complete=False, **{"stale.bin": "old"})
    ck.publish_checkpoint(lake, local, uri)
    assert not (stale / "stale.bin").exists() and (stale / "model.safetensors").read_bytes() == b"weights"
    marker = json.loads((stale / ck.COMPLETE_MARKER).read_text())
    assert marker["files"] == ["model.safetensors", "sub/x.json"]
    local.joinpath("model.safetensors").unlink()  # the Trainer rotating its local copy
    assert (stale / "model.safetensors").read_bytes() == b"weights"


def _rank_files(rank: int, step: int) -> dict[str, bytes]:
    """What one rank of a ZeRO run writes into its node's checkpoint-<step> (rank 0 also the rest)."""
    files = {
        f"rng_state_{rank}.pth": f"rng {rank}".encode(),
        f"global_step{step}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt": f"shard {rank}".encode(),
    }
    if rank == 0:
        files |= {"model.safetensors": b"weights", "trainer_state.json": b"{}", "latest": b"global_step6"}
    return files


@pytest.mark.parametrize(
    ("nodes", "per_node", "shared_scratch"), [(2, 1, False), (2, 2, False), (2, 2, True)]
)
def test_every_node_publishes_its_files_and_rank_0_marks_the_checkpoint_once(
    tmp_path, monkeypatch, nodes, per_node, shared_scratch
):
    """Ranks as threads, nodes as separate scratch directories (or one shared by all), a barrier for
    torch.distributed's: on_save must merge every node's files into one checkpoint, write one marker
    after all uploads, and return on no rank before the marker exists."""
    world = nodes * per_node
    monkeypatch.setenv("WORLD_SIZE", str(world))
    lake = Lake(tmp_path.as_uri())
    out = tmp_path / "run"
    spec = _spec(out)
    spec.hyperparams.save_total_limit = 1
    _ckpt(out, 3)  # an earlier complete checkpoint: retention drops it
    stale = _ckpt(out, 6, complete=False, **{"stale.bin": "old"})  # an interrupted save of this step
    scratch = {n: tmp_path / ("scratch" if shared_scratch else f"node{n}") for n in range(nodes)}
    expected: dict[str, bytes] = {}
    for rank in range(world):
        for name, data in _rank_files(rank, 6).items():
            path = scratch[rank // per_node] / "checkpoint-6" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            expected[name] = data
    for d in set(scratch.values()):
        (d / "checkpoint-3").mkdir()  # an older local checkpoint on every node

    events: list[tuple] = []
    barrier = threading.Barrier(world, timeout=60)  # a bound on a hung rank, not a timing assertion
    monkeypatch.setattr(distributed, "barrier", barrier.wait)
    upload = ck.upload_checkpoint_files

    def recording_upload(lake_, local_dir, uri):
        events.append(("upload", threading.current_thread().name))
        upload(lake_, local_dir, uri)

    monkeypatch.setattr(ck, "upload_checkpoint_files", recording_upload)
    write_json = lake.write_json

    def recording_write_json(uri, obj):
        present = sorted(p.relative_to(stale).as_posix() for p in stale.rglob("*") if p.is_file())
        events.append(("marker", threading.current_thread().name, present))
        write_json(uri, obj)

    lake.write_json = recording_write_json
    savers = [ck.CheckpointCallback(lake, spec, "run-1") for _ in range(world)]
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        state = SimpleNamespace(
            global_step=6,
            epoch=1.0,
            is_world_process_zero=rank == 0,
            is_local_process_zero=rank % per_node == 0,
        )
        try:
            savers[rank].on_save(SimpleNamespace(output_dir=str(scratch[rank // per_node])), state, None)
            events.append(("returned", f"rank{rank}", (stale / ck.COMPLETE_MARKER).is_file()))
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,), name=f"rank{r}") for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    local_zero = {f"rank{r}" for r in range(0, world, per_node)}
    assert sorted(e[1] for e in events if e[0] == "upload") == sorted(local_zero)
    markers = [i for i, e in enumerate(events) if e[0] == "marker"]
    assert len(markers) == 1 and events[markers[0]][1] == "rank0"
    everything = sorted([*expected, ck.META_FILE])
    assert events[markers[0]][2] == everything  # written once every node's files were in
    assert max(i for i, e in enumerate(events) if e[0] == "upload") < markers[0]
    returned = [(i, e) for i, e in enumerate(events) if e[0] == "returned"]
    assert len(returned) == world and all(i > markers[0] and e[2] for i, e in returned)

    assert json.loads((stale / ck.COMPLETE_MARKER).read_text())["files"] == everything
    for name, data in expected.items():
        assert (stale / name).read_bytes() == data, name
    assert not (stale / "stale.bin").exists()  # cleared by rank 0 before anyone uploaded
    refs = ck.list_checkpoints(lake, ck.checkpoints_uri(out.as_uri()))
    assert [(r.step, r.complete) for r in refs] == [(6, True)]  # keep 1
    for d in {scratch[n] for n in range(1, nodes)}:  # the other nodes keep save_total_limit as rank 0 does
        assert sorted(p.name for p in d.iterdir()) == ["checkpoint-6"]
    assert all([r.step for r in s.saved] == [6] for s in savers)


# ---------------------------------------------------------------- resume plans


def test_prepare_resume_checks_the_checkpoint_fits(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGEFLOW_HOME", str(tmp_path / "home"))
    from tasks.settings import get_settings

    get_settings.cache_clear()
    lake = Lake(tmp_path.as_uri())
    out = tmp_path / "run"
    spec = _spec(out, resume=ResumeSpec(from_uri="latest"))
    meta = {
        "spec": spec.model_dump(mode="json"),
        "world_size": 1,
        "skip_windows": [[12, 6]],
        "mlflow_run_id": "r0",
    }
    _ckpt(out, 5, **{ck.META_FILE: json.dumps(meta)})
    plan = ck.prepare_resume(lake, spec)
    assert (
        plan.step == 5
        and plan.continues
        and plan.windows == [(12, 6)]
        and plan.local == out / "checkpoints" / "checkpoint-5"
    )
    assert ck.resume_tags(plan) == {
        ck.RESUMED_FROM_CHECKPOINT_TAG: plan.ref.uri,
        ck.RESUME_MODE_TAG: "continue",
        ck.RESUME_STEP_TAG: "5",
        ck.RESUMED_FROM_RUN_TAG: "r0",
    }

    changed = _spec(out, resume=ResumeSpec(from_uri="latest"), validation_split=0.2)
    changed.hyperparams.batch_size = 8
    with pytest.raises(ck.CheckpointError) as e:
        ck.prepare_resume(lake, changed)
    assert "validation_split: checkpoint 0.05, spec 0.2" in str(e.value)
    assert "hyperparams.batch_size: checkpoint 4, spec 8" in str(e.value) and "weights_only" in str(e.value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ck.CheckpointError, match="world size: checkpoint 1, now 2"):
        ck.prepare_resume(lake, spec)
    monkeypatch.delenv("WORLD_SIZE")

    with pytest.raises(ck.CheckpointError, match="neither model weights .* nor a LoRA adapter"):
        ck.prepare_resume(lake, _spec(out, resume=ResumeSpec(from_uri="latest", mode="weights_only")))
    fresh = tmp_path / "fresh"
    with pytest.raises(ck.CheckpointError, match="set resume.if_missing 'start'"):
        ck.prepare_resume(lake, _spec(fresh, resume=ResumeSpec(from_uri="latest")))
    assert (
        ck.prepare_resume(lake, _spec(fresh, resume=ResumeSpec(from_uri="latest", if_missing="start")))
        is None
    )
    get_settings.cache_clear()


def test_a_resume_trains_on_the_base_its_checkpoint_pinned(tmp_path):
    spec = _spec(tmp_path, base_model="models:/base/latest")
    meta = {"spec": {"base_model": "models:/base/latest"}, "base_model_ref": "models:/base/3"}
    ref = ck.CheckpointRef("file:///c/checkpoint-4", 4, True)
    assert ck.resumed_base_ref(ck.Resume(ref, "continue", tmp_path, meta), spec) == "models:/base/3"
    other = _spec(tmp_path, base_model="models:/other/1")
    assert ck.resumed_base_ref(ck.Resume(ref, "continue", tmp_path, meta), other) is None
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert ck.resumed_base_ref(ck.Resume(ref, "weights_only", tmp_path, meta), spec) == ref.uri
    assert ck.resumed_base_ref(None, spec) is None


# ---------------------------------------------------------------- skipping samples


def test_stream_positions_skip_each_window_once():
    windows = [(10, 5), (20, 3)]
    assert [ck.to_stream_position(p, windows) for p in (0, 9, 10, 14, 15, 16)] == [0, 9, 15, 19, 23, 24]
    assert ck.kept_positions(8, 8, windows) == [8, 9, 15, 16, 17, 18, 19, 23]
    assert ck.kept_positions(8, 4, [(10, 2), (12, 2)]) == [8, 9, 14, 15]  # adjacent windows
    assert ck.kept_positions(3, 3, []) == [3, 4, 5]


def _passes(sampler, n: int) -> list[list[int]]:
    """What the Trainer reads: set_epoch(e), then one iteration, for each epoch."""
    out = []
    for epoch in range(n):
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_skip_window_sampler_is_the_seeded_order_with_the_window_cut_out():
    from accelerate.data_loader import SeedableRandomSampler

    def seeded():
        return SeedableRandomSampler(range(10), data_seed=7)

    stream = [i for p in _passes(seeded(), 3) for i in p]
    assert _passes(ck.SkipWindowSampler(seeded(), []), 3) == [stream[:10], stream[10:20], stream[20:]]

    cut = ck.SkipWindowSampler(seeded(), [(6, 7)])  # 4 samples of pass 1 and 3 of pass 2
    passes = _passes(cut, 2)
    assert [len(p) for p in passes] == [10, 10] and len(cut) == 10  # epochs keep their length
    assert passes[0] + passes[1] == stream[:6] + stream[13:27]


# ---------------------------------------------------------------- stop requests and the result contract


def test_a_stop_before_training_ends_at_once_and_during_training_at_the_step():
    stop = ck.StopSignal()
    with pytest.raises(EngineStopped, match="SIGTERM before training started"):
        stop.handle(signal.SIGTERM, None)
    stop.reset()
    stop.phase = "training"
    stop.handle(signal.SIGTERM, None)
    assert stop.requested == "SIGTERM"

    spec = _spec(Path("/tmp/out"))
    saver = ck.CheckpointCallback(Lake("file:///tmp"), spec, "run-1", stop=stop)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    saver.on_step_end(SimpleNamespace(device="cpu"), SimpleNamespace(global_step=10, max_steps=10), control)
    assert not control.should_save and saver.stopped_at is None  # the last step: the run just finishes
    saver.on_step_end(SimpleNamespace(device="cpu"), SimpleNamespace(global_step=7, max_steps=10), control)
    assert control.should_save and control.should_training_stop and saver.stopped_at == 7
    control.should_save = True
    saver.on_epoch_end(None, None, control)
    assert not control.should_save  # the stop checkpoint is not saved twice

    with pytest.raises(EngineStopped) as e:
        ck.raise_if_stopped(saver)
    assert "stopped by SIGTERM at step 7; no checkpoint could be saved" in str(e.value)
    assert e.value.result["steps"] == 7 and e.value.result["model_version"] is None


def test_stop_signals_routes_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with ck.stop_signals() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop.handle == signal.getsignal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before


def test_engine_main_writes_a_stopped_result(tmp_path, monkeypatch):
    from tasks.settings import get_settings

    monkeypatch.setenv("FORGEFLOW_HOME", str(tmp_path))
    get_settings.cache_clear()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(Spec(run_key="x").model_dump_json())

    def run(spec):
        raise EngineStopped("stopped by SIGTERM at step 3; checkpoint c is complete", {"steps": 3})

    assert engine_main(Spec, run, [str(spec_path)]) == 3
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "stopped" and result["steps"] == 3 and "checkpoint c" in result["error"]
    get_settings.cache_clear()


# ---------------------------------------------------------------- the MLflow run a kill left RUNNING


class FakeMlflowClient:
    """The three MlflowClient calls end_interrupted_run makes, over a dict of run statuses."""

    def __init__(self, statuses: dict[str, str]):
        self.statuses = dict(statuses)
        self.tags: dict[str, dict[str, str]] = {}

    def get_run(self, run_id: str):
        if run_id not in self.statuses:
            raise RuntimeError(f"Run '{run_id}' not found")
        return SimpleNamespace(info=SimpleNamespace(status=self.statuses[run_id]))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.tags.setdefault(run_id, {})[key] = value

    def set_terminated(self, run_id: str, status: str) -> None:
        self.statuses[run_id] = status


@pytest.mark.parametrize("status", ["RUNNING", "FINISHED", "FAILED", "KILLED"])
@pytest.mark.parametrize("mode", ["continue", "continue_skip", "weights_only"])
def test_only_a_running_run_that_a_continue_takes_over_is_ended(tmp_path, status, mode):
    client = FakeMlflowClient({"old": status})
    ref = ck.CheckpointRef("file:///c/checkpoint-9", 9, True)
    resume = ck.Resume(ref, mode, tmp_path, {"mlflow_run_id": "old"}, 3 if mode == "continue_skip" else 0)
    ended = ck.end_interrupted_run(client, resume, "new")
    if status == "RUNNING" and mode != "weights_only":
        assert ended == "old" and client.statuses["old"] == "KILLED"
        assert client.tags == {"old": {ck.ENDED_BY_TAG: "resumed by new"}}
    else:
        assert ended is None and client.statuses["old"] == status and client.tags == {}


def test_ending_an_interrupted_run_tolerates_a_missing_one(tmp_path, caplog):
    ref = ck.CheckpointRef("file:///c/checkpoint-9", 9, True)
    client = FakeMlflowClient({})
    assert (
        ck.end_interrupted_run(client, ck.Resume(ref, "continue", tmp_path, {"mlflow_run_id": "gone"}), "new")
        is None
    )
    assert "could not end MLflow run gone" in caplog.text
    assert ck.end_interrupted_run(client, ck.Resume(ref, "continue", tmp_path, {}), "new") is None
    assert ck.end_interrupted_run(client, None, "new") is None
