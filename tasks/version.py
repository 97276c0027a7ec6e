"""The code version recorded with every dataset version, training run and evaluation."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache

from tasks.settings import PROJECT_ROOT


def code_version() -> str:
    """``FORGEFLOW_CODE_VERSION`` (set in images and by the runner), else ``git describe`` of this
    checkout (``-dirty`` when it has uncommitted changes), else 'unknown'.

    The environment is read on every call (a runner or a test may set it after the first call);
    only the git lookup is cached."""
    if env := os.environ.get("FORGEFLOW_CODE_VERSION"):
        return env
    return _git_version()


@lru_cache(maxsize=1)
def _git_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
