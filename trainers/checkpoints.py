"""Checkpoints that survive the process: durable saves, resume in three modes, and a clean stop.

Saving. The Trainer writes each checkpoint into a local scratch directory; ``CheckpointCallback.on_save``
then publishes it to ``<output_uri>/checkpoints/checkpoint-<step>/`` in the lake (file:// or s3://) and
writes ``.complete`` last, so a checkpoint counts only once every file is there. ``lake.stage`` cannot do
this: on S3 it uploads when the run ends, which a SIGKILL never reaches. After each save the lake keeps
the newest ``save_total_limit`` complete checkpoints (None: all) and drops the rest of the directory:
interrupted saves, and checkpoints past the current step (a timeline this run has replaced).

Several ranks. A checkpoint is spread over the ranks' files (``rng_state_<rank>.pth``; under ZeRO each
rank's ``global_step<N>/*_optim_states.pt``) and, on several nodes, over their scratch disks. Every rank
takes part in ``on_save`` at the same step: world rank 0 removes a leftover at the checkpoint's URI;
barrier (every rank has also finished writing: the Trainer does not wait); each node's local rank 0
uploads the files its node wrote, merging file by file into the one URI (each file lands whole, so two
nodes sharing one scratch filesystem upload the same file twice harmlessly); barrier; world rank 0 writes
``.complete``, listing every file now in the lake, and applies retention; barrier, so no rank goes on
before the marker exists. One process: the same steps, without the waits. The Trainer rotates scratch
checkpoints on rank 0 only, so the local rank 0 of every other node keeps its own to the same limit.

Resuming (``TrainSpec.resume``): ``weights_only`` starts a new training from the checkpoint's weights (a
LoRA checkpoint: its adapter); ``continue`` hands the checkpoint to ``Trainer.train(resume_from_checkpoint)``
(weights, optimizer, scheduler, RNG, data position); ``continue_skip`` continues and also drops the next
N samples of the data stream. Skips are recorded in every later checkpoint, so resuming one of those
replays the same data order.

Stopping. SIGTERM (what LocalRunner and Kubernetes send) or SIGINT during training lets the current
optimizer step finish, saves a checkpoint, and ends the run as *stopped* (``EngineStopped``: result status
'stopped', MLflow run KILLED, no model registered). Before training starts there is nothing to save and
the engine stops at once.

MLflow. A resumed run is a new MLflow run tagged with the run and checkpoint it resumed from. In the
continue modes Trainer steps go on from the checkpoint's step and the earlier run's metric history up
to that step is copied in, so the new run shows one continuous loss curve; and the earlier run, when
MLflow still shows it RUNNING (a SIGKILL, OOM kill or lost node never ends a run), is set KILLED and
tagged ``forgeflow.ended_by`` with the run that took over. A run that ended is left as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from tasks.engine import EngineStopped
from tasks.settings import get_settings
from tasks.specs import slug
from tasks.storage import Lake, local_path, to_uri
from trainers import distributed

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from tasks.specs import TrainSpec
    from trainers.methods import TrainMethod

log = logging.getLogger("forgeflow.trainers.checkpoints")

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = ".complete"
META_FILE = "forgeflow_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
RESUMED_FROM_RUN_TAG = "forgeflow.resumed_from_run"
RESUMED_FROM_CHECKPOINT_TAG = "forgeflow.resumed_from_checkpoint"
RESUME_MODE_TAG = "forgeflow.resume_mode"
RESUME_STEP_TAG = "forgeflow.resume_step"
SKIP_SAMPLES_TAG = "forgeflow.skip_samples"
STOPPED_TAG = "forgeflow.stopped"
ENDED_BY_TAG = "forgeflow.ended_by"
# What decides the model's shape and the order of the data: a 'continue' must match the checkpoint here.
CONTINUE_FIELDS = (
    "method",
    "base_model",
    "train_uri",
    "max_records",
    "validation_split",
    "chat_template",
    "tiny",
)
CONTINUE_HYPERPARAMS = ("seed", "batch_size", "gradient_accumulation_steps", "max_seq_length", "lora_r")

Window = tuple[int, int]  # (position in the unskipped sample stream, number of samples skipped)


class CheckpointError(ValueError):
    """A checkpoint cannot be used as asked; the message names it and what to do."""


# ---------------------------------------------------------------- addressing and listing


@dataclass(frozen=True)
class CheckpointRef:
    uri: str
    step: int
    complete: bool


def checkpoints_uri(output_uri: str) -> str:
    return f"{to_uri(output_uri).rstrip('/')}/{CHECKPOINTS_DIR}"


def checkpoint_uri(output_uri: str, step: int) -> str:
    return f"{checkpoints_uri(output_uri)}/checkpoint-{step}"


def list_checkpoints(lake: Lake, root_uri: str) -> list[CheckpointRef]:
    """Every ``checkpoint-<step>`` directory under ``root_uri``, complete or not, by step."""
    root = to_uri(root_uri).rstrip("/")
    found: dict[int, bool] = {}
    if root.startswith("s3://"):
        for uri in lake.list(root):
            parts = uri[len(root) + 1 :].split("/")
            m = CHECKPOINT_RE.match(parts[0])
            if m and len(parts) >= 2:
                step = int(m[1])
                found[step] = found.get(step, False) or parts[1:] == [COMPLETE_MARKER]
    else:
        path = local_path(root)
        for child in path.iterdir() if path.is_dir() else []:
            m = CHECKPOINT_RE.match(child.name)
            if m and child.is_dir():
                found[int(m[1])] = (child / COMPLETE_MARKER).is_file()
    return [CheckpointRef(f"{root}/checkpoint-{s}", s, found[s]) for s in sorted(found)]


def _describe(refs: list[CheckpointRef]) -> str:
    complete = [r.uri for r in refs if r.complete]
    return "complete checkpoints found: " + (", ".join(complete) if complete else "none")


def resolve_checkpoint(lake: Lake, from_uri: str, output_uri: str) -> CheckpointRef | None:
    """The checkpoint ``resume.from_uri`` names (see ResumeSpec); None when 'latest' finds none yet."""
    if from_uri == "latest":
        root, want = checkpoints_uri(output_uri), None
    else:
        uri = to_uri(from_uri).rstrip("/")
        parent, _, name = uri.rpartition("/")
        m = CHECKPOINT_RE.match(name)
        if m:
            root, want = parent, int(m[1])
        else:
            root, want = (uri if name == CHECKPOINTS_DIR else f"{uri}/{CHECKPOINTS_DIR}"), None
    refs = list_checkpoints(lake, root)
    if want is None:
        complete = [r for r in refs if r.complete]
        if not complete:
            if from_uri == "latest":
                return None
            raise CheckpointError(
                f"resume.from_uri {from_uri}: no complete checkpoint under {root} ({_describe(refs)}); "
                "name a checkpoint directory, or train with hyperparams.save_strategy 'steps'/'epoch'"
            )
        return complete[-1]
    match = [r for r in refs if r.step == want]
    if not match:
        raise CheckpointError(
            f"resume.from_uri {from_uri}: no such checkpoint; {_describe(refs)} under {root}"
        )
    if not match[0].complete:
        raise CheckpointError(
            f"resume.from_uri {from_uri}: incomplete checkpoint (no {COMPLETE_MARKER}: its save was "
            f"interrupted); {_describe(refs)} under {root}"
        )
    return match[0]


# ---------------------------------------------------------------- publishing and retention


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link when scratch and lake share a filesystem (no second copy of a large model), else copy.
    Safe because the Trainer writes each checkpoint file once and later only deletes whole directories."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def upload_checkpoint_files(lake: Lake, local_dir: Path, uri: str) -> None:
    """Add the files of ``local_dir`` to the checkpoint at ``uri``, keeping what other nodes put there.
    Each file lands whole (S3: one PUT; file://: linked or copied to a temporary name, then renamed), so
    an upload of the same file by two nodes that share a scratch filesystem is harmless."""
    if uri.startswith("s3://"):
        lake.put_dir(local_dir, uri)
        return
    dst_root = local_path(uri)
    for src in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        dst = dst_root / src.relative_to(local_dir)
        dst.parent.mkdir(parents=True, exist_ok=True)
        part = dst.with_name(f".{dst.name}.{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}.part")
        part.unlink(missing_ok=True)
        _link_or_copy(str(src), str(part))
        os.replace(part, dst)
        part.unlink(missing_ok=True)  # still there when dst already was this file (another node linked it)


def checkpoint_files(lake: Lake, uri: str) -> list[str]:
    """The files under the checkpoint at ``uri`` (paths relative to it), but its marker."""
    if uri.startswith("s3://"):
        files = [u[len(uri.rstrip("/")) + 1 :] for u in lake.list(uri)]
    else:
        root = local_path(uri)
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in files if f != COMPLETE_MARKER)


def publish_checkpoint(
    lake: Lake, local_dir: Path, uri: str, *, first: bool = True, uploads: bool = True
) -> list[str]:
    """Publish a finished checkpoint to ``uri`` and mark it complete, the marker strictly last.

    Every rank calls this at the same step (the barriers are no-ops in one process): ``first`` (world
    rank 0) clears the URI and writes the marker, ``uploads`` (each node's local rank 0) adds its node's
    files. Returns the files the marker lists (rank 0; [] elsewhere)."""
    if first:
        lake.delete(uri)  # a leftover of an interrupted save or of a replaced timeline
    distributed.barrier()  # ... gone before anyone uploads; and every rank has written its files
    if uploads:
        upload_checkpoint_files(lake, local_dir, uri)
    distributed.barrier()  # every node's files are in
    if not first:
        return []
    files = checkpoint_files(lake, uri)
    lake.write_json(f"{uri}/{COMPLETE_MARKER}", {"files": files, "completed_at": time.time()})
    return files


def retention(refs: list[CheckpointRef], current: int, keep: int | None) -> list[CheckpointRef]:
    """Which checkpoints to delete once ``current`` is complete: later steps (a replaced timeline),
    incomplete earlier ones, and complete ones beyond the newest ``keep`` (None keeps all)."""
    doomed = [r for r in refs if r.step > current or (not r.complete and r.step != current)]
    kept = [r for r in refs if r.complete and r.step <= current]
    if keep is not None and len(kept) > keep:
        doomed += kept[: len(kept) - keep]
    return sorted(doomed, key=lambda r: r.step)


def prune_checkpoints(lake: Lake, output_uri: str, current: int, keep: int | None) -> list[str]:
    doomed = retention(list_checkpoints(lake, checkpoints_uri(output_uri)), current, keep)
    for r in doomed:
        lake.delete(r.uri)
    return [r.uri for r in doomed]


def rotate_node_scratch(output_dir: Path, keep: int | None) -> None:
    """Keep the newest ``keep`` checkpoints in a node's scratch (the Trainer rotates only rank 0's).
    On a scratch shared with rank 0 these are the ones the Trainer removes anyway."""
    if keep is None:
        return
    found = sorted(
        (int(m[1]), p) for p in output_dir.glob("checkpoint-*") if (m := CHECKPOINT_RE.match(p.name))
    )
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def scratch_dir(spec: TrainSpec) -> Path:
    """Local working directory of a run (the Trainer's output_dir); the same path for every rank."""
    return get_settings().path("scratch", "train", slug(spec.run_key))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------- resume plan


@dataclass
class Resume:
    """A resolved ``TrainSpec.resume``: the checkpoint, a local view of it and what it recorded."""

    ref: CheckpointRef
    mode: str
    local: Path
    meta: dict[str, Any]
    skip_samples: int = 0

    @property
    def step(self) -> int:
        return self.ref.step

    @property
    def continues(self) -> bool:
        return self.mode in ("continue", "continue_skip")

    @property
    def windows(self) -> list[Window]:
        """Skips recorded by earlier continue_skip resumes of this training (replayed when continuing)."""
        return [(int(a), int(b)) for a, b in self.meta.get("skip_windows", [])]

    @property
    def has_adapter(self) -> bool:
        return (self.local / "adapter_config.json").is_file()

    @property
    def has_full_weights(self) -> bool:
        return (self.local / "config.json").is_file() and any(self.local.glob("model*.safetensors"))


def incompatible(checkpoint_spec: dict[str, Any], spec: TrainSpec, checkpoint_world: int) -> list[str]:
    """The fields in which a 'continue' spec differs from the run that wrote the checkpoint."""
    now = spec.model_dump(mode="json")
    diffs = [
        f"{k}: checkpoint {checkpoint_spec[k]!r}, spec {now.get(k)!r}"
        for k in CONTINUE_FIELDS
        if k in checkpoint_spec and checkpoint_spec[k] != now.get(k)
    ]
    old_hp, new_hp = checkpoint_spec.get("hyperparams", {}), now["hyperparams"]
    diffs += [
        f"hyperparams.{k}: checkpoint {old_hp[k]!r}, spec {new_hp.get(k)!r}"
        for k in CONTINUE_HYPERPARAMS
        if k in old_hp and old_hp[k] != new_hp.get(k)
    ]
    if checkpoint_world != world_size():
        diffs.append(f"world size: checkpoint {checkpoint_world}, now {world_size()}")
    return diffs


def prepare_resume(lake: Lake, spec: TrainSpec) -> Resume | None:
    """Resolve ``spec.resume`` to a local checkpoint and check it can be used as asked (before any work)."""
    if spec.resume is None:
        return None
    r = spec.resume
    ref = resolve_checkpoint(lake, r.from_uri, spec.output_uri)
    if ref is None:
        if r.if_missing == "start":
            log.info(
                "resume 'latest': no complete checkpoint under %s yet; starting from scratch", spec.output_uri
            )
            return None
        raise CheckpointError(
            f"resume.from_uri 'latest': no complete checkpoint under {checkpoints_uri(spec.output_uri)} "
            "(complete checkpoints found: none); set resume.if_missing 'start' to train from scratch then"
        )
    if ref.uri.startswith("s3://"):
        rank = os.environ.get("RANK", "0")
        local = scratch_dir(spec) / f"resume-rank{rank}" / ref.uri.rsplit("/", 1)[-1]
        shutil.rmtree(local, ignore_errors=True)
        lake.get_dir(ref.uri, local)
    else:
        local = local_path(ref.uri)
    meta_path = local / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    resume = Resume(ref, r.mode, local, meta, r.skip_samples)
    if resume.continues:
        if not (local / TRAINER_STATE).is_file():
            raise CheckpointError(
                f"resume.from_uri {ref.uri}: no {TRAINER_STATE}, so it cannot be continued; "
                "use resume.mode weights_only"
            )
        diffs = incompatible(meta.get("spec", {}), spec, int(meta.get("world_size", world_size())))
        if diffs:
            raise CheckpointError(
                f"resume.mode {r.mode} from {ref.uri}: the spec differs from the run that saved it in "
                f"{'; '.join(diffs)}. Continuing needs the same model, data order and batch layout: "
                "restore those fields, or use resume.mode weights_only to start a new schedule from its weights"
            )
    elif not (resume.has_adapter or resume.has_full_weights):
        raise CheckpointError(
            f"resume.from_uri {ref.uri}: neither model weights (config.json + model*.safetensors) nor a "
            "LoRA adapter (adapter_config.json) in it"
        )
    log.info("resuming (%s) from %s at step %d", r.mode, ref.uri, ref.step)
    return resume


# ---------------------------------------------------------------- the model to start from


def start_model(
    resume: Resume | None, method: TrainMethod
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
    """weights_only from full weights: the checkpoint is the base model (the method's own loader)."""
    if resume is None or resume.mode != "weights_only" or not resume.has_full_weights:
        return None
    return method.load_base(resume.local)


def resumed_base_ref(resume: Resume | None, spec: TrainSpec) -> str | None:
    """The base a resumed run stands on: the checkpoint itself for weights_only from full weights, else
    the pinned base its checkpoint was trained on (so 'models:/NAME/latest' cannot move under a resume);
    None when the spec names another base than the checkpoint's run did."""
    if resume is None:
        return None
    if resume.mode == "weights_only" and resume.has_full_weights:
        return resume.ref.uri
    if resume.meta.get("spec", {}).get("base_model") == spec.base_model:
        return resume.meta.get("base_model_ref")
    return None


def checkpoint_tokenizer(resume: Resume | None) -> PreTrainedTokenizerBase | None:
    """The tokenizer a checkpoint was trained with; a 'tiny' run reuses it instead of training a new one,
    so token ids keep their meaning (required when the checkpoint came from other data)."""
    if resume is None:
        return None
    from transformers import AutoTokenizer

    if not (resume.local / "tokenizer_config.json").is_file():
        raise CheckpointError(f"resume.from_uri {resume.ref.uri}: no tokenizer in the checkpoint")
    return AutoTokenizer.from_pretrained(resume.local)


def load_start_adapter(resume: Resume | None, model: PreTrainedModel) -> None:
    """weights_only from a LoRA checkpoint: load its adapter into the freshly wrapped model."""
    if resume is None or resume.mode != "weights_only" or not resume.has_adapter:
        return
    from peft import PeftModel
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    if not isinstance(model, PeftModel):
        raise CheckpointError(
            f"resume.from_uri {resume.ref.uri} holds a LoRA adapter, which only a LoRA method (sft_lora) "
            "can start from; use its exported model directory as base_model instead"
        )
    result = set_peft_model_state_dict(model, load_peft_weights(str(resume.local)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(
            f"resume.from_uri {resume.ref.uri}: its adapter does not fit this model (e.g. {unexpected[:3]}); "
            "check base_model and the lora_* hyperparameters"
        )


# ---------------------------------------------------------------- skipping samples (continue_skip)


def to_stream_position(position: int, windows: list[Window]) -> int:
    """Position in the unskipped sample stream of the sample at ``position`` of the skipped stream."""
    for start, n in sorted(windows):
        if start > position:
            break
        position += n
    return position


def kept_positions(first: int, count: int, windows: list[Window]) -> list[int]:
    """Unskipped-stream positions of ``count`` samples from ``first`` of the skipped stream."""
    ws = sorted(windows)
    u = to_stream_position(first, ws)
    i = sum(1 for start, _ in ws if start <= u)
    out: list[int] = []
    while len(out) < count:
        if i < len(ws) and u >= ws[i][0]:
            u = ws[i][0] + ws[i][1]
            i += 1
            continue
        out.append(u)
        u += 1
    return out


class SkipWindowSampler:
    """The Trainer's seeded sampler with windows of the sample stream cut out.

    The stream is every epoch's order (the seedable sampler's permutation for that epoch) one after
    another. Cutting N samples moves the rest up, so every epoch still yields ``len(inner)`` samples and
    the Trainer's step and epoch accounting (and a later resume's data position) stay exact.
    """

    def __init__(self, inner: Any, windows: list[Window]):
        self.inner = inner
        self.windows = sorted(windows)
        self.epoch = int(getattr(inner, "epoch", 0))

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, epoch: int) -> list[int]:
        self.inner.set_epoch(epoch)
        return list(iter(self.inner))

    def __iter__(self) -> Iterator[int]:
        n = len(self.inner)
        orders: dict[int, list[int]] = {}
        for u in kept_positions(self.epoch * n, n, self.windows):
            k, offset = divmod(u, n)
            if k not in orders:
                orders = {k: self._order(k)}  # positions only move forward: one epoch's order at a time
            yield orders[k][offset]
        self.epoch += 1


def install_data_skip(trainer: Trainer, resume: Resume, saver: CheckpointCallback) -> None:
    """Make the trainer's data loader skip the recorded windows, plus ``skip_samples`` for continue_skip.

    The new window starts at the checkpoint's data position: ``global_step`` optimizer steps of
    batch x accumulation x world-size samples each, counted from the start of the checkpoint's epoch.
    """
    from accelerate.data_loader import SeedableRandomSampler

    original = trainer.get_train_dataloader

    def get_train_dataloader():
        loader = original()
        holder = loader.batch_sampler
        holder = getattr(holder, "batch_sampler", holder)  # BatchSamplerShard (several processes)
        inner = getattr(holder, "sampler", None)
        if not isinstance(inner, SeedableRandomSampler):
            raise CheckpointError(
                f"resume.mode {resume.mode}: the training data is not read through a seeded random sampler "
                f"({type(inner).__name__}), so the samples to skip cannot be located"
            )
        windows = list(resume.windows)
        if resume.mode == "continue_skip":
            args = trainer.args
            batches = len(loader)
            per_epoch = max(
                batches // args.gradient_accumulation_steps
                + int(batches % args.gradient_accumulation_steps > 0),
                1,
            )
            epochs, steps = divmod(resume.step, per_epoch)
            position = (
                epochs * len(inner)
                + steps * holder.batch_size * args.gradient_accumulation_steps * args.world_size
            )
            windows.append((to_stream_position(position, windows), resume.skip_samples))
            log.info(
                "continue_skip: skipping samples %d..%d of the data stream (after step %d)",
                windows[-1][0],
                windows[-1][0] + resume.skip_samples - 1,
                resume.step,
            )
        holder.sampler = SkipWindowSampler(inner, windows)
        saver.windows = windows
        return loader

    trainer.get_train_dataloader = get_train_dataloader


def train(trainer: Trainer, resume: Resume | None, saver: CheckpointCallback):
    """``trainer.train()``, continuing from the checkpoint in the continue modes."""
    if resume is None or not resume.continues:
        return trainer.train()
    if resume.windows or resume.mode == "continue_skip":
        install_data_skip(trainer, resume, saver)
    return trainer.train(resume_from_checkpoint=str(resume.local))


# ---------------------------------------------------------------- stop requests


class StopSignal:
    """SIGTERM / SIGINT as a stop request. In 'setup' it stops at once (nothing to save yet); in
    'training' the checkpoint callback saves after the current step and stops; in 'finishing' (export,
    registration) the run is complete and finishes."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.phase = "setup"

    def reset(self) -> None:
        self.requested, self.phase = None, "setup"

    def handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            log.warning("%s again: already stopping (a SIGKILL ends the engine without a checkpoint)", name)
            return
        self.requested = name
        if self.phase == "setup":
            _end_mlflow_run("KILLED", f"{name} before training started")
            raise EngineStopped(f"stopped by {name} before training started; nothing to resume from")
        if self.phase == "training":
            log.warning("%s: saving a checkpoint after the current step, then stopping", name)
        else:
            log.warning("%s after training finished: completing the run", name)


STOP = StopSignal()


@contextlib.contextmanager
def stop_signals(stop: StopSignal = STOP) -> Iterator[StopSignal]:
    """Route SIGTERM and SIGINT to ``stop`` for the block (main thread only; elsewhere a no-op)."""
    stop.reset()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _end_mlflow_run(status: str, reason: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.set_tag(STOPPED_TAG, reason)
        mlflow.end_run(status)


def _agreed(flag: bool, device: Any) -> bool:
    """Every rank stops at the same step: a stop seen by any rank is seen by all."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    import torch

    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ---------------------------------------------------------------- the callback


@dataclass(eq=False)
class CheckpointCallback(TrainerCallback):
    """Publishes every checkpoint to the lake as it is saved, applies retention there, and turns a stop
    request into a checkpoint at the next step boundary."""

    lake: Lake
    spec: TrainSpec
    mlflow_run_id: str
    resume: Resume | None = None
    base_ref: str | None = None  # the pinned base model, recorded so a resume trains on the same one
    stop: StopSignal = STOP
    windows: list[Window] = field(default_factory=list)
    saved: list[CheckpointRef] = field(default_factory=list)
    stopped_at: int | None = None

    def __post_init__(self) -> None:
        if self.resume is not None and self.resume.continues:
            self.windows = list(self.resume.windows)

    @property
    def local_dir(self) -> Path:
        return scratch_dir(self.spec) / CHECKPOINTS_DIR

    def on_train_begin(self, args, state, control, **kwargs):
        if self.stop.phase == "setup":
            self.stop.phase = "training"

    def on_step_end(self, args, state, control, **kwargs):
        if not _agreed(self.stop.requested is not None, args.device) or self.stopped_at is not None:
            return
        if state.max_steps and state.global_step >= state.max_steps:
            return  # that was the last step: the run finishes (and saves as its strategy says)
        self.stopped_at = state.global_step
        control.should_save = True
        control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # already saved at the stop step; an epoch save would repeat it
            control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        if any(r.step == step for r in self.saved):  # every rank keeps the list, so all skip together
            return
        first = state.is_world_process_zero
        local = Path(args.output_dir) / f"checkpoint-{step}"
        if first:
            (local / META_FILE).write_text(json.dumps(self._meta(state), ensure_ascii=False, indent=2))
        uri = checkpoint_uri(self.spec.output_uri, step)
        started = time.monotonic()
        files = publish_checkpoint(self.lake, local, uri, first=first, uploads=state.is_local_process_zero)
        keep = self.spec.hyperparams.save_total_limit
        if first:
            dropped = prune_checkpoints(self.lake, self.spec.output_uri, step, keep)
            log.info(
                "checkpoint %s complete: %d files (%.1fs)%s",
                uri,
                len(files),
                time.monotonic() - started,
                f"; removed {', '.join(dropped)}" if dropped else "",
            )
        elif state.is_local_process_zero:
            rotate_node_scratch(Path(args.output_dir), keep)
        distributed.barrier()  # no rank goes on (or can be killed) before the marker exists
        self.saved.append(CheckpointRef(uri, step, True))

    def on_train_end(self, args, state, control, **kwargs):
        self.stop.phase = "finishing"
        if state.is_local_process_zero:  # each node's scratch
            shutil.rmtree(scratch_dir(self.spec), ignore_errors=True)

    def _meta(self, state: Any) -> dict[str, Any]:
        return {
            "step": state.global_step,
            "epoch": state.epoch,
            "run_key": self.spec.run_key,
            "mlflow_run_id": self.mlflow_run_id,
            "world_size": world_size(),
            "skip_windows": [list(w) for w in self.windows],
            "resumed_from": self.resume.ref.uri if self.resume else None,
            "base_model_ref": self.base_ref,
            "spec": self.spec.redacted(),  # no teacher API key in the lake
        }


def raise_if_stopped(saver: CheckpointCallback) -> None:
    """After ``trainer.train()``: a run stopped on request ends here as 'stopped', before export and
    registration; the message says which checkpoint to resume from."""
    if saver.stopped_at is None:
        return
    signame = saver.stop.requested or "a stop request"
    checkpoint = saver.saved[-1].uri if saver.saved else None
    where = (
        f"checkpoint {checkpoint} is complete; resume with resume.from_uri '{checkpoint}' (or 'latest' "
        "with the same output_uri) and mode 'continue'"
        if checkpoint
        else "no checkpoint could be saved"
    )
    _end_mlflow_run("KILLED", f"{signame} at step {saver.stopped_at}")
    raise EngineStopped(
        f"stopped by {signame} at step {saver.stopped_at}; {where}",
        {
            "mlflow_run_id": saver.mlflow_run_id,
            "steps": saver.stopped_at,
            "checkpoint_uri": checkpoint,
            "registered_model": None,
            "model_version": None,
        },
    )


# ---------------------------------------------------------------- MLflow


def resume_tags(resume: Resume | None) -> dict[str, str]:
    if resume is None:
        return {}
    tags = {
        RESUMED_FROM_CHECKPOINT_TAG: resume.ref.uri,
        RESUME_MODE_TAG: resume.mode,
        RESUME_STEP_TAG: str(resume.step),
    }
    if resume.meta.get("mlflow_run_id"):
        tags[RESUMED_FROM_RUN_TAG] = resume.meta["mlflow_run_id"]
    if resume.mode == "continue_skip":
        tags[SKIP_SAMPLES_TAG] = str(resume.skip_samples)
    return tags


def copy_metric_history(client: Any, resume: Resume | None, run_id: str) -> int:
    """Continue modes: the earlier run's metrics up to the checkpoint's step, copied into this run, so its
    curves start at step 1 and go on without a gap. A missing earlier run only warns."""
    if resume is None or not resume.continues or not resume.meta.get("mlflow_run_id"):
        return 0
    from mlflow.entities import Metric

    source = resume.meta["mlflow_run_id"]
    try:
        keys = list(client.get_run(source).data.metrics)
        points = [
            Metric(m.key, m.value, m.timestamp, m.step)
            for key in keys
            for m in client.get_metric_history(source, key)
            if m.step <= resume.step
        ]
        for i in range(0, len(points), 1000):
            client.log_batch(run_id, metrics=points[i : i + 1000], synchronous=True)
    except Exception as e:
        log.warning(
            "could not copy the metric history of MLflow run %s (curves start at the resume): %s", source, e
        )
        return 0
    return len(points)


def end_interrupted_run(client: Any, resume: Resume | None, run_id: str) -> str | None:
    """Continue modes: the run that wrote the checkpoint, if MLflow still shows it RUNNING (it was killed
    without ending its run), is set KILLED and tagged with the run that took over; returns its id. A run
    that ended (FINISHED, FAILED, KILLED) is left alone, and so is the source of a weights_only start (a
    new training, which may begin from a checkpoint of a run that is still going). A failure only warns."""
    if resume is None or not resume.continues or not resume.meta.get("mlflow_run_id"):
        return None
    source = resume.meta["mlflow_run_id"]
    if source == run_id:
        return None
    try:
        status = client.get_run(source).info.status
        if status != "RUNNING":
            return None
        client.set_tag(source, ENDED_BY_TAG, f"resumed by {run_id}")
        client.set_terminated(source, "KILLED")
    except Exception as e:
        log.warning("could not end MLflow run %s (left as it was): %s", source, e)
        return None
    log.warning(
        "MLflow run %s, which wrote %s, was still RUNNING (its process was killed): set KILLED, "
        "resumed by run %s",
        source,
        resume.ref.uri,
        run_id,
    )
    return source
