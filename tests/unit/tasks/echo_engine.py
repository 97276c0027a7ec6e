"""A minimal engine on the spec-file contract, for runner tests: echoes its spec, or fails on request."""

from __future__ import annotations

import os
import signal
import sys

from tasks.engine import engine_main
from tasks.specs import Spec


class EchoSpec(Spec):
    fail: bool = False
    say: list[str] = []  # lines printed before anything else (e.g. a library's error message)
    kill: bool = False  # SIGKILL itself, as the kernel's OOM killer would


def run(spec: EchoSpec) -> dict:
    print(f"echo engine running {spec.run_key}", flush=True)
    for line in spec.say:
        print(line, flush=True)
    if spec.kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.fail:
        raise RuntimeError("asked to fail")
    return {"echo": spec.run_key}


if __name__ == "__main__":
    sys.exit(engine_main(EchoSpec, run))
