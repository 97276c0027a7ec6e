"""One local[1] SparkSession for all spark_ops unit tests, and small helpers to write input files."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_ops.session import build_session
from tasks.specs import SparkResources

TEST_RESOURCES = SparkResources(
    num_executors=1, executor_cores=1, executor_memory_gb=4, driver_cores=1, driver_memory_gb=2
)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = build_session(TEST_RESOURCES, "spark-ops-unit-tests", master="local[1]")
    yield session
    session.stop()
    # py4j logs its shutdown at exit, after pytest has closed the captured streams
    logging.getLogger("py4j").setLevel(logging.WARNING)


def write_jsonl(path: Path, records: list[Any], bom: bool = False) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path
