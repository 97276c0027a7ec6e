"""Writing a dataset version's files: Parquet records under data/, rejected records as one JSONL file.

Spark names its part files with a random UUID; they are renamed ``part-00000.parquet``, ... in partition
order, so two runs on the same input produce the same file names with the same records in the same order.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_ops.canonical import POSITION
from spark_ops.readers import SOURCE_ID
from tasks.records import DATA_DIR, QUARANTINE_DIR, columns
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


def _columns(df: DataFrame, usage: Usage) -> tuple[str, ...]:
    """The canonical columns of ``usage``; vision records (an ``image`` column) keep it."""
    return columns(usage, "image" if "image" in df.columns else "text")


def write_records(df: DataFrame, usage: Usage, version_dir: Path, total_chars: int) -> list[str]:
    """Write ``df`` in input order as ``data/part-NNNNN.parquet``; returns the paths relative to the version."""
    data_dir = version_dir / DATA_DIR
    n = files_for(total_chars)
    ordered = df.repartitionByRange(n, POSITION).sortWithinPartitions(POSITION).select(*_columns(df, usage))
    ordered.write.mode("overwrite").option("compression", "zstd").parquet(str(data_dir))
    names = []
    for i, part in enumerate(_tidy(data_dir, ".parquet")):
        target = data_dir / f"part-{i:05d}.parquet"
        part.rename(target)
        names.append(f"{DATA_DIR}/{target.name}")
    return names


ExportFormat = Literal["jsonl", "parquet"]
EXPORT_SUFFIX: dict[str, tuple[str, str]] = {
    "jsonl": (".json", ".jsonl"),
    "parquet": (".parquet", ".parquet"),
}


@dataclass(frozen=True)
class Export:
    """A copy of the output records outside the lake (``forgeflow process``): where, and in which format."""

    directory: Path
    fmt: ExportFormat = "jsonl"


def export_records(df: DataFrame, usage: Usage, export: Export, total_chars: int) -> list[str]:
    """Write ``df`` in input order as ``part-NNNNN.jsonl`` / ``.parquet`` under ``export.directory``.

    ``id`` is the input record's own id where it had one (``_source_id``), else the canonical content hash.
    Returns the file names, relative to the directory. Existing part files there are replaced.
    """
    directory = export.directory
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("part-*"):
        old.unlink()
    ident = F.coalesce(F.col(SOURCE_ID), F.col("id")) if SOURCE_ID in df.columns else F.col("id")
    selected = [ident.alias("id") if c == "id" else F.col(c) for c in _columns(df, usage)]
    ordered = (
        df.repartitionByRange(files_for(total_chars), POSITION)
        .sortWithinPartitions(POSITION)
        .select(*selected)
    )
    tmp = directory / "_spark"
    spark_suffix, suffix = EXPORT_SUFFIX[export.fmt]
    if export.fmt == "parquet":
        ordered.write.mode("overwrite").option("compression", "zstd").parquet(str(tmp))
    else:
        ordered.write.mode("overwrite").json(str(tmp))  # UTF-8, one object per line, nulls left out
    names = []
    for i, part in enumerate(_tidy(tmp, spark_suffix)):
        target = directory / f"part-{i:05d}{suffix}"
        part.replace(target)
        names.append(target.name)
    shutil.rmtree(tmp)
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
