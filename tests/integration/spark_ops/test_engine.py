"""The engine end to end, as the orchestrator runs it: ``python -m spark_ops.run SPEC`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.settings import PROJECT_ROOT

FIXTURE = PROJECT_ROOT / "tests" / "fixtures" / "spark_ops" / "sft_small.jsonl"
RECIPE = [
    {"name": "normalize", "params": {"keep_cjk_punctuation": True}},
    {"name": "empty_filter"},
    {"name": "length_filter", "params": {"min_chars": 3}},
    {"name": "exact_dedupe"},
]
RESOURCES = {
    "num_executors": 1,
    "executor_cores": 1,
    "executor_memory_gb": 4,
    "driver_cores": 1,
    "driver_memory_gb": 2,
}

pytestmark = pytest.mark.slow


def run_engine(tmp_path: Path, name: str, **overrides: Any) -> tuple[int, dict[str, Any], Path]:
    spec = {
        "run_key": "manual__test",
        "inputs": [{"uri": str(FIXTURE), "source": "fixture"}],
        "usage": "sft",
        "operators": RECIPE,
        "spark": RESOURCES,
        "output_uri": str(tmp_path / "out"),
        **overrides,
    }
    spec_path = tmp_path / name / "spec.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "FORGEFLOW_HOME": str(tmp_path / "home"), "FORGEFLOW_SPARK_MASTER": "local[1]"}
    proc = subprocess.run(
        [sys.executable, "-m", "spark_ops.run", str(spec_path)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return (
        proc.returncode,
        json.loads((spec_path.parent / "result.json").read_text()),
        Path(spec["output_uri"]),
    )


def test_engine_writes_a_reconciled_version_and_is_idempotent(tmp_path: Path) -> None:
    code, result, out = run_engine(tmp_path, "first")
    assert code == 0, result
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records_in"] == 12
    assert manifest["quarantined"] == 1
    assert manifest["accepted"] == 11
    ops = {op["name"]: op for op in manifest["operators"]}
    assert ops["normalize"]["modified"] == 2
    assert ops["empty_filter"]["dropped"] == 1
    assert ops["length_filter"]["dropped"] == 1
    assert ops["exact_dedupe"]["dropped"] == 3
    assert manifest["records_out"] == 11 - 1 - 1 - 3 == result["records_out"]
    assert manifest["records_in"] == manifest["accepted"] + manifest["quarantined"]
    assert manifest["accepted"] == manifest["records_out"] + sum(
        op["dropped"] for op in manifest["operators"]
    )
    assert manifest["files"]["data"] == ["data/part-00000.parquet"]

    quarantine = [json.loads(x) for x in (out / "quarantine" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["line"], q["reason"]) for q in quarantine] == [(5, "not valid JSON")]
    assert quarantine[0]["source_file"] == str(FIXTURE)

    df = pd.read_parquet(out / "data")
    assert list(df.columns) == ["id", "system", "context", "target", "meta"]
    assert len(df) == 6
    assert df.iloc[1]["target"] == "你好"  # input order is kept
    assert df.iloc[2]["context"].tolist() == ["1+1等于几？"]
    assert df.iloc[2]["target"] == "答案：1. 2"
    assert df.iloc[0]["meta"]["source"] == "fixture"

    code, again, _ = run_engine(tmp_path, "retry")
    assert code == 0 and again["records_out"] == result["records_out"]

    code, other, _ = run_engine(tmp_path, "other", run_key="another-run")
    assert code == 1 and "already holds a dataset version written by run 'manual__test'" in other["error"]


def test_engine_fails_when_too_many_records_are_rejected(tmp_path: Path) -> None:
    code, result, out = run_engine(tmp_path, "strict", max_reject_ratio=0.05, operators=[])
    assert code == 1
    assert "1 of 12 records (8.3%) were rejected on import, above max_reject_ratio 5.0%" in result["error"]
    assert "1 x not valid JSON (first: " in result["error"] and "jsonl line 5)" in result["error"]
    assert (out / "quarantine" / "quarantine.jsonl").exists()
    assert not (out / "manifest.json").exists()
