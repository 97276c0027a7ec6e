"""Distributed training: which process this is, work done on rank 0 only, and DeepSpeed set-up.

The engine is the same program whether it runs as one process (``python -m trainers.train``), as
several on one machine (``torchrun --standalone``, the local runner or one pod) or on several machines
(``torchrun`` in each pod of a PyTorchJob). torchrun sets RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; this module reads them.

The rules the engine follows:

- shared state (the MLflow run, registered versions, the saved model, ``result.json``) is written by
  rank 0 only, through :func:`on_main`, whose value *or failure* reaches every rank, so a failure on
  rank 0 fails every process and the launcher reports it;
- collective steps (training, evaluation, gathering ZeRO-3 weights, publishing a checkpoint: each node
  uploads the files it wrote, see trainers/checkpoints.py) run on every rank.

DeepSpeed on CPU, as DeepSpeed 0.19.8, accelerate 1.15 and transformers 5.23 behave:

- ``deepspeed.comm.init_distributed`` needs RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and LOCAL_RANK
  even for one process (accelerate calls it with MPI discovery off), so :func:`setup` provides them;
- DeepSpeed's CPU accelerator talks ``ccl`` when oneccl_bindings_for_pytorch is importable, else
  ``gloo`` (deepspeed/accelerator/cpu_accelerator.py); this project has no oneCCL, so gloo;
- accelerate ignores DeepSpeed when TrainingArguments(use_cpu=True) (``ACCELERATE_USE_DEEPSPEED ... and
  not cpu`` in accelerate/state.py), and with use_cpu=False and no CUDA it gets no backend and counts
  one process whatever WORLD_SIZE says, so DeepSpeed's batch check fails with 2 processes. The engine
  therefore builds accelerate's PartialState itself (backend gloo) and tells the Trainer to use it
  (``accelerator_config={"use_configured_state": True}``);
- DeepSpeed JIT-compiles a shared-memory all-reduce kernel when its comm backend starts on CPU. It serves
  only tensor-parallel inference (``inference_all_reduce``); the engine marks it unavailable so a run
  does not spend minutes compiling C++ (and does not need a compiler in the image).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tasks.settings import PROJECT_ROOT, get_settings

if TYPE_CHECKING:
    from transformers import Trainer

    from tasks.specs import DistributedConfig

log = logging.getLogger("forgeflow.trainers.distributed")
T = TypeVar("T")

DEEPSPEED_DIR = PROJECT_ROOT / "include" / "deepspeed"
TIMEOUT = timedelta(minutes=30)  # a rank waiting this long for the others has lost them
_object_group: Any = None  # a gloo group for Python objects when the main backend is NCCL


class DistributedError(RuntimeError):
    """The run's processes disagree with the spec, or another rank failed."""


@dataclass(frozen=True)
class World:
    """This process's place in the run (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world() -> World:
    """Read from the launcher's environment (torchrun, a PyTorchJob pod), else a single process."""

    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() else default

    size = env_int("WORLD_SIZE", 1)
    return World(
        rank=env_int("RANK", 0),
        local_rank=env_int("LOCAL_RANK", 0),
        world_size=size,
        local_world_size=env_int("LOCAL_WORLD_SIZE", size),
    )


def is_main_process() -> bool:
    """Rank 0: the process that talks to MLflow and writes the model and result."""
    return world().is_main


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier(group=_object_group)


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank (pickled; for small things: results, tokenizers)."""
    if not _initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_object_group)
    return box[0]


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only; every rank gets its return value, or fails when it failed."""
    if not _initialized():
        return fn(*args, **kwargs)
    if is_main_process():
        try:
            value = fn(*args, **kwargs)
        except Exception as e:
            broadcast_object(("error", f"{type(e).__name__}: {e}"))
            raise
        return broadcast_object(("ok", value))[1]
    status, value = broadcast_object(None)
    if status == "error":
        raise DistributedError(f"rank 0 failed: {value}")
    return value


@contextmanager
def local_main_first() -> Iterator[None]:
    """Local rank 0 of each node runs the block first (e.g. fills a download cache), then the others."""
    w = world()
    if w.local_rank != 0:
        barrier()
    yield
    if w.local_rank == 0:
        barrier()


# ---------------------------------------------------------------- set-up


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_world(cfg: DistributedConfig, w: World) -> None:
    launched = "WORLD_SIZE" in os.environ
    low = (cfg.min_nodes or cfg.nodes) * cfg.processes
    if launched and not low <= w.world_size <= cfg.world_size:
        want = str(cfg.world_size) if low == cfg.world_size else f"{low}..{cfg.world_size}"
        raise DistributedError(
            f"distributed: the spec asks for {want} processes (nodes={cfg.nodes}, processes={cfg.processes}) "
            f"but this run was launched with WORLD_SIZE={w.world_size}; start it through the runner "
            "(LocalRunner, the training pod or the PyTorchJob), which launches what the spec says"
        )
    if not launched and cfg.world_size > 1:
        raise DistributedError(
            f"distributed: the spec asks for {cfg.world_size} processes but this is a single process; run "
            f"`torchrun --standalone --nproc_per_node {cfg.processes} -m trainers.train SPEC` (the local "
            "runner does), or set distributed.processes and distributed.nodes to 1"
        )


def deepspeed_config(value: str) -> dict[str, Any]:
    """The DeepSpeed config a spec's ``distributed.deepspeed`` names, as a dict (presets, paths, lake URIs)."""
    from tasks.storage import Lake

    where = f"distributed.deepspeed {value!r}"
    if value in ("zero2", "zero3"):
        path = DEEPSPEED_DIR / f"{value}.json"
        return json.loads(path.read_text())
    try:
        if "://" in value:
            raw = Lake.from_settings().read_text(value)
        else:
            path = Path(value)
            path = path if path.is_absolute() or path.exists() else PROJECT_ROOT / path
            raw = path.read_text()
    except Exception as e:
        raise DistributedError(f"{where}: cannot read it ({type(e).__name__}: {e})") from e
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise DistributedError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization", {}), dict):
        raise DistributedError(f"{where}: expected a JSON object with a zero_optimization object")
    return config


def _skip_shm_kernel() -> None:
    """Mark DeepSpeed's CPU shared-memory all-reduce op unavailable (inference only; see the module doc)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def setup(cfg: DistributedConfig) -> dict[str, Any]:
    """Prepare this process for ``cfg``; returns the extra TrainingArguments (deepspeed, backend, ...).

    Checks the launch matches the spec, gives a single DeepSpeed process the environment DeepSpeed
    needs, starts the process group early (so rank-0 work can be shared before the Trainer exists) and,
    for DeepSpeed on CPU, configures accelerate's state for gloo.
    """
    import torch

    w = world()
    _check_world(cfg, w)
    cuda = torch.cuda.is_available()
    overrides: dict[str, Any] = {"ddp_timeout": int(TIMEOUT.total_seconds())}
    if cfg.uses_deepspeed:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(get_settings().path("torch_extensions")))
        if not w.distributed:
            for key, value in (
                ("RANK", "0"),
                ("LOCAL_RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("LOCAL_WORLD_SIZE", "1"),
                ("MASTER_ADDR", "127.0.0.1"),
            ):
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        overrides["deepspeed"] = deepspeed_config(cfg.deepspeed)
    if w.distributed:
        _init_process_group("nccl" if cuda else "gloo", w)
        overrides["ddp_backend"] = "nccl" if cuda else "gloo"
    if cfg.uses_deepspeed and not cuda:
        _skip_shm_kernel()
        _configure_cpu_deepspeed_state()
        overrides["use_cpu"] = False  # accelerate drops DeepSpeed when use_cpu is set
        overrides["accelerator_config"] = {"use_configured_state": True}
        overrides.pop("ddp_backend", None)
    log.info(
        "rank %s/%s (local %s/%s), %s, deepspeed %s",
        w.rank,
        w.world_size,
        w.local_rank,
        w.local_world_size,
        "cuda" if cuda else "cpu",
        cfg.deepspeed,
    )
    return overrides


def _init_process_group(backend: str, w: World) -> None:
    global _object_group
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if backend == "nccl":
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    # Python objects travel over gloo: NCCL would need them on the GPU first.
    _object_group = dist.new_group(backend="gloo") if backend == "nccl" else None


def _configure_cpu_deepspeed_state() -> None:
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo", timeout=TIMEOUT)


def teardown() -> None:
    """End the process group (torch warns about one left open at exit)."""
    global _object_group
    if _initialized():
        import torch.distributed as dist

        dist.destroy_process_group()
    _object_group = None


@contextmanager
def full_weights(trainer: Trainer) -> Iterator[None]:
    """Inside the block every rank holds the whole model (ZeRO-3 gathers its shards; else a no-op).

    Entered on every rank: the gather is collective. Changes made inside (a LoRA merge) are not kept.
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not (getattr(trainer, "is_deepspeed_enabled", False) and is_deepspeed_zero3_enabled()):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None):
        yield


def describe(trainer: Trainer, cfg: DistributedConfig) -> dict[str, Any]:
    """What actually ran (for result.json): world size, DeepSpeed config and the ZeRO stage in effect."""
    stage = None
    if getattr(trainer, "is_deepspeed_enabled", False):
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage
    return {
        "world_size": world().world_size,
        "nodes": cfg.nodes,
        "processes_per_node": cfg.processes,
        "deepspeed": cfg.deepspeed,
        "zero_stage": stage,
        "backend": trainer.args.distributed_state.backend if trainer.args.distributed_state else None,
    }
