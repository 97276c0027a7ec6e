"""A minimal engine on the spec-file contract, for runner tests: echoes its spec, or fails or stops on request."""

from __future__ import annotations

import sys

from tasks.engine import EngineStopped, engine_main
from tasks.specs import Spec


class EchoSpec(Spec):
    fail: bool = False
    stop: bool = False


def run(spec: EchoSpec) -> dict:
    print(f"echo engine running {spec.run_key}", flush=True)
    if spec.fail:
        raise RuntimeError("asked to fail")
    if spec.stop:
        raise EngineStopped("stopped by SIGTERM at step 2; checkpoint c2 is complete", {"steps": 2})
    return {"echo": spec.run_key}


if __name__ == "__main__":
    sys.exit(engine_main(EchoSpec, run))
