"""A publication SIGKILLed mid-write leaves no export; the retry publishes exactly once; a third run is a no-op.

The engine runs as the orchestrator runs it, ``python -m spark_ops.publish SPEC`` in its own process group
(the Python driver and its Spark JVM), and the whole group is killed as a pod or a worker would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow
RECORDS = 3000
RESOURCES = {
    "num_executors": 1,
    "executor_cores": 1,
    "executor_memory_gb": 4,
    "driver_cores": 1,
    "driver_memory_gb": 2,
}
SFT = pa.schema(
    [
        ("id", pa.string()),
        ("system", pa.string()),
        ("context", pa.list_(pa.string())),
        ("target", pa.string()),
        ("meta", pa.struct([("source", pa.string()), ("tags", pa.list_(pa.string()))])),
    ]
)


def write_version(path: Path) -> Path:
    rows = [
        {
            "id": f"r{i:05d}",
            "system": "助手" if i % 3 == 0 else None,
            "context": [f"问题 {i}", f"回答 {i}", f"追问 {i}"] if i % 2 else [f"问题 {i}"],
            "target": f"答案 {i} " + "内容" * 50,
            "meta": {"source": "fixture", "tags": []},
        }
        for i in range(RECORDS)
    ]
    (path / "data").mkdir(parents=True)
    for n in range(3):
        pq.write_table(pa.Table.from_pylist(rows[n::3], schema=SFT), path / "data" / f"part-{n:05d}.parquet")
    (path / "manifest.json").write_text(
        json.dumps({"usage": "sft", "run_key": "fixture", "records_out": RECORDS})
    )
    return path


def start(tmp_path: Path, version: Path, out: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    spec = {
        "run_key": "manual__publish",
        "version_uri": str(version),
        "ref": "general/fixture@V1",
        "format": "openai",
        "validation_ratio": 0.1,
        "seed": 7,
        "spark": RESOURCES,
        "output_uri": str(out),
    }
    spec_path = tmp_path / name / "spec.json"
    spec_path.parent.mkdir(parents=True)
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "FORGEFLOW_HOME": str(tmp_path / "home"), "FORGEFLOW_SPARK_MASTER": "local[1]"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spark_ops.publish", str(spec_path)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the driver and the JVM it starts
    )
    return proc, spec_path.parent / "result.json"


def finish(proc: subprocess.Popen[str], result: Path) -> dict[str, Any]:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(result.read_text())


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def staging_dirs(parent: Path) -> list[Path]:
    return sorted(parent.glob(".export.staging-*"))


def test_killed_publication_leaves_nothing_and_the_retry_publishes_once(tmp_path: Path) -> None:
    version = write_version(tmp_path / "version")
    lake = tmp_path / "lake"
    lake.mkdir()
    out = lake / "export"

    proc, _ = start(tmp_path, version, out, "killed")
    deadline = time.monotonic() + 300
    while not any(any(d.iterdir()) for d in staging_dirs(lake)):  # Spark has begun writing the export
        assert proc.poll() is None, f"the engine ended before it was killed: {proc.stderr.read()[-3000:]}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the engine never started writing"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing visible at the export's name
    assert staging_dirs(lake)  # only the staging leftovers, which no reader looks at

    retry = finish(*start(tmp_path, version, out, "retry"))
    assert retry["status"] == "success" and retry["already_published"] is False
    files = tree(out)
    assert sorted(files) == [
        "_SUCCESS",
        "publication.json",
        "train/part-00000.jsonl",
        "validation/part-00000.jsonl",
    ]
    assert retry["counts"] == {"train": 2700, "validation": 300}
    train = files["train/part-00000.jsonl"].decode().splitlines()
    val = files["validation/part-00000.jsonl"].decode().splitlines()
    assert len(train) == 2700 and len(val) == 300 and len(set(train) | set(val)) == RECORDS
    assert staging_dirs(lake) == []  # the leftovers of the killed attempt are gone

    # the same spec published cleanly elsewhere gives the same records in the same files
    reference = finish(*start(tmp_path, version, tmp_path / "ref" / "export", "reference"))
    ref_files = tree(tmp_path / "ref" / "export")
    assert {k: v for k, v in ref_files.items() if k.endswith(".jsonl")} == {
        k: v for k, v in files.items() if k.endswith(".jsonl")
    }
    assert reference["counts"] == retry["counts"]

    third = finish(*start(tmp_path, version, out, "third"))
    assert third["already_published"] is True and third["counts"] == retry["counts"]
    assert tree(out) == files  # nothing rewritten
    assert [p.name for p in lake.iterdir()] == ["export"]
