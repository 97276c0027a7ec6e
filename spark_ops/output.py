"""Writing a dataset version's files: Parquet records under data/, rejected records as one JSONL file.

Spark names its part files with a random UUID; they are renamed ``part-00000.parquet``, ... in partition
order, so two runs on the same input produce the same file names with the same records in the same order.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from pyspark.sql import DataFrame

from spark_ops.canonical import POSITION
from tasks.records import COLUMNS, DATA_DIR, QUARANTINE_DIR
from tasks.specs import Usage

# About 64 MB of Parquet per file for CJK text (3 bytes a character, compressing to roughly 1/3).
CHARS_PER_FILE = 64_000_000
MAX_FILES = 256
QUARANTINE_FILE = "quarantine.jsonl"


def files_for(total_chars: int) -> int:
    """How many Parquet files a version of ``total_chars`` characters is written as."""
    return max(1, min(MAX_FILES, math.ceil(total_chars / CHARS_PER_FILE)))


def _tidy(directory: Path, suffix: str) -> list[Path]:
    """Drop Spark's markers and checksums; return the part files in partition order."""
    for p in directory.iterdir():
        if p.name.startswith(("_", ".")):
            p.unlink()
    return sorted(p for p in directory.iterdir() if p.name.startswith("part-") and p.name.endswith(suffix))


def write_records(df: DataFrame, usage: Usage, version_dir: Path, total_chars: int) -> list[str]:
    """Write ``df`` in input order as ``data/part-NNNNN.parquet``; returns the paths relative to the version."""
    data_dir = version_dir / DATA_DIR
    n = files_for(total_chars)
    ordered = df.repartitionByRange(n, POSITION).sortWithinPartitions(POSITION).select(*COLUMNS[usage])
    ordered.write.mode("overwrite").option("compression", "zstd").parquet(str(data_dir))
    names = []
    for i, part in enumerate(_tidy(data_dir, ".parquet")):
        target = data_dir / f"part-{i:05d}.parquet"
        part.rename(target)
        names.append(f"{DATA_DIR}/{target.name}")
    return names


def write_quarantine(quarantine: DataFrame, version_dir: Path) -> str:
    """Write rejected records, ordered by input, file and line, as ``quarantine/quarantine.jsonl``."""
    q_dir = version_dir / QUARANTINE_DIR
    tmp = q_dir / "_spark"
    (
        quarantine.repartition(1)
        .sortWithinPartitions("input", "source_file", "line")
        .write.mode("overwrite")
        .option("ignoreNullFields", False)
        .json(str(tmp))
    )
    parts = _tidy(tmp, ".json")
    target = q_dir / QUARANTINE_FILE
    parts[0].replace(target)
    shutil.rmtree(tmp)
    return f"{QUARANTINE_DIR}/{QUARANTINE_FILE}"
