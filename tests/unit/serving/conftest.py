"""Fixtures for serving unit tests: an isolated FORGEFLOW_HOME and throwaway processes to stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def forgeflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from tasks.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("FORGEFLOW_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a python snippet in its own session, like deploy starts servers; killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def _spawn(code: str = "import time; time.sleep(600)") -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
