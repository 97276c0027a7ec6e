"""The local runner under torchrun (a real 2-process launch of the echo engine), the distributed spec
section, and the resource rules of engine pods."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from tasks.engine import result_uri_for, write_spec
from tasks.runners import EngineFailed, LocalRunner, distributed_config
from tasks.specs import DistributedConfig, PodResources, parse_quantity
from tasks.storage import Lake

ECHO = "tests.unit.tasks.echo_engine"


def _echo_spec(lake: Lake, **fields) -> str:
    from tests.unit.tasks.echo_engine import EchoSpec

    uri = lake.uri("runs", "dist", "spec.json")
    write_spec(EchoSpec(run_key="dist-run", **fields), uri, lake)
    return uri


@pytest.mark.slow  # torchrun starts two Python processes
def test_two_processes_run_under_torchrun_and_rank_0_writes_the_result(ff_home, caplog):
    lake = Lake.from_settings()
    uri = _echo_spec(lake, distributed=DistributedConfig(processes=2))
    with caplog.at_level(logging.INFO, logger="forgeflow.runner"):
        result = LocalRunner().run(ECHO, uri)
    assert result["status"] == "success" and result["world_size"] == 2
    lines = [r.getMessage() for r in caplog.records]
    assert any("torch.distributed.run --standalone --nproc_per_node 2" in m for m in lines)
    for rank in (0, 1):
        assert f"[rank{rank}]: echo engine running dist-run as rank {rank}" in lines
    # each rank's output is also kept on disk, per attempt and rank
    logs = list((ff_home / "run" / "torchrun").rglob("stdout.log"))
    assert len(logs) == 2


@pytest.mark.slow
def test_a_failing_rank_fails_the_run_and_says_which(ff_home):
    lake = Lake.from_settings()
    uri = _echo_spec(lake, distributed=DistributedConfig(processes=2), fail_rank=1)
    with pytest.raises(EngineFailed) as e:
        LocalRunner().run(ECHO, uri)
    message = str(e.value)
    assert "RuntimeError: asked to fail on rank 1" in message and "code 1" in message
    # whichever rank finished first, the result records rank 1's failure, not rank 0's success
    result = lake.read_json(result_uri_for(uri))
    assert result["status"] == "failed" and result["error"] == "rank 1: RuntimeError: asked to fail on rank 1"


def test_more_than_one_node_needs_the_kubernetes_runner(ff_home):
    lake = Lake.from_settings()
    uri = _echo_spec(lake, distributed=DistributedConfig(processes=2, nodes=2))
    with pytest.raises(ValueError, match=r"nodes=2 needs the Kubernetes runner"):
        LocalRunner().command(ECHO, uri)


def test_one_process_runs_the_engine_itself_and_a_bad_section_is_left_to_the_engine(ff_home):
    lake = Lake.from_settings()
    cmd, _ = LocalRunner().command(ECHO, _echo_spec(lake))
    assert cmd[1:] == ["-m", ECHO, lake.uri("runs", "dist", "spec.json")]
    uri = lake.uri("runs", "bad", "spec.json")
    lake.write_json(uri, {"run_key": "x", "distributed": {"processes": "many"}})
    assert distributed_config(uri) == DistributedConfig()
    with pytest.raises(EngineFailed, match=r"distributed.processes: Input should be a valid integer"):
        LocalRunner().run(ECHO, uri)


def test_distributed_section_is_validated():
    with pytest.raises(ValidationError, match="neither a preset nor a JSON config"):
        DistributedConfig(deepspeed="zero4")
    with pytest.raises(ValidationError, match="min_nodes 3 exceeds nodes 2"):
        DistributedConfig(nodes=2, min_nodes=3)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        DistributedConfig(processes=0)
    assert DistributedConfig(deepspeed="include/deepspeed/zero3_offload.json").uses_deepspeed
    assert DistributedConfig(processes=4, nodes=2).world_size == 8


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("500m", 0.5), ("2", 2), ("16Gi", 16 * 2**30), ("1.5G", 1.5e9), ("1e3", 1000), ("128974848", 128974848)],
)
def test_kubernetes_quantities(quantity, value):
    assert parse_quantity(quantity) == pytest.approx(value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"memory_limit": "32GB"}, r"memory_limit '32GB' is not a Kubernetes quantity \(Kubernetes spells"),
        ({"cpu_request": "four"}, r"cpu_request 'four' is not a Kubernetes quantity"),
        ({"cpu_request": "8", "cpu_limit": "4"}, r"cpu_request 8 exceeds cpu_limit 4"),
        (
            {"memory_request": "64Gi", "memory_limit": "32Gi"},
            r"memory_request 64Gi exceeds memory_limit 32Gi",
        ),
        ({"cpu_request": "0"}, r"cpu_request '0' must be positive"),
        ({"shm_size": "64Gi"}, r"shm_size 64Gi exceeds memory_limit 32Gi"),
        (
            {"tolerations": [{"key": "gpu", "efect": "NoSchedule"}]},
            r"tolerations\[0\]: unknown key\(s\) \['efect'\]",
        ),
        ({"tolerations": [{"key": "gpu", "operator": "In"}]}, r"tolerations\[0\].operator 'In'"),
        ({"tolerations": [{"key": "gpu", "effect": "NoRun"}]}, r"tolerations\[0\].effect 'NoRun'"),
        ({"gpus": -1}, r"gpus"),
    ],
)
def test_invalid_resources_are_rejected_with_the_field(fields, message):
    with pytest.raises(ValidationError, match=message):
        PodResources(**fields)
