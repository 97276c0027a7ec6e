"""trainers/distributed.py: the world from the launcher's env, launch checks, DeepSpeed configs, and
rank-0-only work across two real gloo processes (a failure on rank 0 fails rank 1 too)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket

import pytest

from tasks.specs import DistributedConfig
from trainers import distributed
from trainers.distributed import DistributedError, World, deepspeed_config, world

LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launcher(monkeypatch):
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_world_from_torchrun_env(no_launcher):
    assert world() == World() and world().is_main and not world().distributed
    for key, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}.items():
        no_launcher.setenv(key, value)
    w = world()
    assert (w.rank, w.local_rank, w.world_size, w.local_world_size) == (3, 1, 4, 2)
    assert not w.is_main and w.distributed and not distributed.is_main_process()


def test_launch_must_match_the_spec(no_launcher):
    with pytest.raises(
        DistributedError, match=r"asks for 2 processes but this is a single process.*torchrun"
    ):
        distributed._check_world(DistributedConfig(processes=2), world())
    no_launcher.setenv("WORLD_SIZE", "4")
    with pytest.raises(DistributedError, match=r"asks for 2 processes .* launched with WORLD_SIZE=4"):
        distributed._check_world(DistributedConfig(processes=2), world())
    distributed._check_world(DistributedConfig(processes=2, nodes=2), world())
    # elastic: anything from min_nodes to nodes
    distributed._check_world(DistributedConfig(processes=2, nodes=3, min_nodes=2), world())
    with pytest.raises(DistributedError, match=r"asks for 6..8 processes"):
        distributed._check_world(DistributedConfig(processes=2, nodes=4, min_nodes=3), world())


def test_deepspeed_presets_and_files(forgeflow_home, tmp_path):
    z2, z3 = deepspeed_config("zero2"), deepspeed_config("zero3")
    assert z2["zero_optimization"]["stage"] == 2 and z3["zero_optimization"]["stage"] == 3
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    for config in (z2, z3):
        # CPU-friendly: the Trainer's torch optimizer, nothing DeepSpeed would compile
        assert "optimizer" not in config and config["train_micro_batch_size_per_gpu"] == "auto"
    offload = deepspeed_config("include/deepspeed/zero3_offload.json")  # relative to the project root
    assert offload["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert deepspeed_config(str(own))["zero_optimization"]["stage"] == 1
    from tasks.storage import Lake

    lake = Lake.from_settings()
    lake.write_text(lake.uri("configs", "ds.json"), json.dumps({"zero_optimization": {"stage": 2}}))
    assert deepspeed_config(lake.uri("configs", "ds.json"))["zero_optimization"]["stage"] == 2


def test_bad_deepspeed_files_name_the_field(forgeflow_home, tmp_path):
    with pytest.raises(DistributedError, match=r"distributed.deepspeed '/nope/ds.json': cannot read it"):
        deepspeed_config("/nope/ds.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{stage: 2")
    with pytest.raises(DistributedError, match=r"broken.json': not valid JSON"):
        deepspeed_config(str(broken))
    broken.write_text('{"zero_optimization": 2}')
    with pytest.raises(DistributedError, match=r"expected a JSON object with a zero_optimization object"):
        deepspeed_config(str(broken))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, fail: bool, out: mp.Queue) -> None:
    """One of two processes: join a gloo group as torchrun would, do rank-0 work, report the outcome."""
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )  # fmt: skip

    def work() -> dict:
        if fail:
            raise RuntimeError("MLflow is down")
        return {"run_id": "abc", "rank": distributed.world().rank}

    try:
        distributed.setup(DistributedConfig(processes=2))
        value = distributed.on_main(work)
        distributed.barrier()
        out.put((rank, "ok", value))
    except Exception as e:
        out.put((rank, "error", f"{type(e).__name__}: {e}"))
    finally:
        distributed.teardown()


@pytest.mark.slow  # two spawned processes import torch: ~30 s here
@pytest.mark.parametrize("fail", [False, True])
def test_rank_0_work_reaches_every_rank_and_so_does_its_failure(fail):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, fail, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    outcomes = {}
    for _ in procs:
        rank, status, value = out.get(timeout=120)
        outcomes[rank] = (status, value)
    for p in procs:
        p.join(timeout=60)
    if not fail:
        # rank 0 did the work once; rank 1 got its value
        assert outcomes == {0: ("ok", {"run_id": "abc", "rank": 0}), 1: ("ok", {"run_id": "abc", "rank": 0})}
    else:
        assert outcomes[0] == ("error", "RuntimeError: MLflow is down")
        assert outcomes[1] == ("error", "DistributedError: rank 0 failed: RuntimeError: MLflow is down")
