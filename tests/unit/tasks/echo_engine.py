"""A minimal engine on the spec-file contract, for runner tests: echoes its spec, or fails or stops on request."""

from __future__ import annotations

import os
import signal
import sys

from pydantic import Field

from tasks.engine import EngineStopped, engine_main
from tasks.specs import DistributedConfig, Spec


class EchoSpec(Spec):
    fail: bool = False
    stop: bool = False
    fail_rank: int | None = None  # under torchrun: only this rank fails
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    say: list[str] = []  # lines printed before anything else (e.g. a library's error message)
    kill: bool = False  # SIGKILL itself, as the kernel's OOM killer would


def run(spec: EchoSpec) -> dict:
    rank = int(os.environ.get("RANK", "0"))
    print(f"echo engine running {spec.run_key} as rank {rank}", flush=True)
    for line in spec.say:
        print(line, flush=True)
    if spec.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.fail or spec.fail_rank == rank:
        raise RuntimeError(f"asked to fail on rank {rank}")
    if spec.stop:
        raise EngineStopped("stopped by SIGTERM at step 2; checkpoint c2 is complete", {"steps": 2})
    return {"echo": spec.run_key, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}


if __name__ == "__main__":
    sys.exit(engine_main(EchoSpec, run))
