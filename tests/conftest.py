"""Shared test configuration: no hub access, and an isolated Forgeflow home per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Airflow reads its configuration on first import: give tests a throwaway AIRFLOW_HOME, never ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="forgeflow-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORGEFLOW_ENV = [
    "FORGEFLOW_HOME", "FORGEFLOW_LAKE_URI", "FORGEFLOW_CATALOG_URL", "FORGEFLOW_MLFLOW_TRACKING_URI",
    "FORGEFLOW_MLFLOW_ARTIFACT_ROOT", "FORGEFLOW_RUNNER", "FORGEFLOW_S3_ENDPOINT_URL", "FORGEFLOW_SPARK_MASTER",
]


@pytest.fixture
def ff_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh FORGEFLOW_HOME (file lake, SQLite catalogue and MLflow) for one test."""
    from tasks.settings import get_settings

    for key in FORGEFLOW_ENV:
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "forgeflow"
    monkeypatch.setenv("FORGEFLOW_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
