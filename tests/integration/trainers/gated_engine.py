"""The real training engine, parked at one optimizer step so a test can kill or stop it there.

    python tests/integration/trainers/gated_engine.py SPEC_URI

Test double for "a run that is still going": at the end of step ``FORGEFLOW_TEST_GATE_STEP`` it writes
``<FORGEFLOW_TEST_GATE_DIR>/parked-<rank>`` (its pid) and waits until a stop is requested (SIGTERM) or
ten minutes pass, then carries on. Everything else is ``python -m trainers.train``; under torchrun every
rank parks (``torchrun ... gated_engine.py SPEC_URI``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

GATE_STEP = int(os.environ["FORGEFLOW_TEST_GATE_STEP"])
GATE_DIR = Path(os.environ["FORGEFLOW_TEST_GATE_DIR"])


def main() -> int:
    from trainers import checkpoints
    from trainers.train import main as engine_main

    original = checkpoints.CheckpointCallback.on_step_end

    def gated(self, args, state, control, **kwargs):
        if state.global_step == GATE_STEP:
            (GATE_DIR / f"parked-{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
            deadline = time.monotonic() + 600
            while self.stop.requested is None and time.monotonic() < deadline:
                time.sleep(0.05)
        return original(self, args, state, control, **kwargs)

    checkpoints.CheckpointCallback.on_step_end = gated
    return engine_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
