"""A minimal engine on the spec-file contract, for runner tests: echoes its spec, or fails on request."""

from __future__ import annotations

import os
import sys

from pydantic import Field

from tasks.engine import engine_main
from tasks.specs import DistributedConfig, Spec


class EchoSpec(Spec):
    fail: bool = False
    fail_rank: int | None = None  # under torchrun: only this rank fails
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


def run(spec: EchoSpec) -> dict:
    rank = int(os.environ.get("RANK", "0"))
    print(f"echo engine running {spec.run_key} as rank {rank}", flush=True)
    if spec.fail or spec.fail_rank == rank:
        raise RuntimeError(f"asked to fail on rank {rank}")
    return {"echo": spec.run_key, "world_size": int(os.environ.get("WORLD_SIZE", "1"))}


if __name__ == "__main__":
    sys.exit(engine_main(EchoSpec, run))
