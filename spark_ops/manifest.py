"""The manifest of a dataset version: counts that reconcile, operator statistics, text lengths, lineage."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_ops.canonical import FIELD_TYPES, TEXT_COLUMNS, text_length
from tasks.records import COLUMNS
from tasks.specs import ProcessSpec, Usage

MANIFEST_VERSION = 1
PERCENTILES = (0.5, 0.9, 0.99)


def spec_fingerprint(spec: ProcessSpec) -> str:
    """Hash of what determines the data (inputs, usage, recipe, reject ratio); Spark resources do not."""
    payload = spec.model_dump_json(include={"inputs", "usage", "operators", "max_reject_ratio", "output_uri"})
    return hashlib.sha256(payload.encode()).hexdigest()


def text_stats(df: DataFrame, usage: Usage) -> tuple[int, dict[str, dict[str, Any]]]:
    """Record count and character statistics per text column (and per record when there are several)."""
    types = {f.name: f.dataType for f in df.schema.fields}
    lengths = {c: text_length(c, types[c]) for c in TEXT_COLUMNS[usage]}
    if len(lengths) > 1:
        total = F.lit(0).cast("long")
        for expr in lengths.values():
            total = total + expr
        lengths["record"] = total
    aggs = [F.count(F.lit(1)).alias("n")]
    for name, expr in lengths.items():
        aggs += [
            F.sum(expr).alias(f"{name}__sum"),
            F.min(expr).alias(f"{name}__min"),
            F.max(expr).alias(f"{name}__max"),
            F.percentile_approx(expr, list(PERCENTILES), 10_000).alias(f"{name}__pct"),
        ]
    row = df.agg(*aggs).first()
    n = int(row["n"])
    stats = {}
    for name in lengths:
        total_chars = int(row[f"{name}__sum"] or 0)
        pct = row[f"{name}__pct"] or [0] * len(PERCENTILES)
        stats[name] = {
            "sum": total_chars,
            "mean": round(total_chars / n, 2) if n else 0.0,
            "min": int(row[f"{name}__min"] or 0),
            **{f"p{round(q * 100)}": int(v) for q, v in zip(PERCENTILES, pct, strict=True)},
            "max": int(row[f"{name}__max"] or 0),
        }
    return n, stats


def column_schema(usage: Usage) -> list[dict[str, str]]:
    return [{"name": c, "type": FIELD_TYPES[c].simpleString()} for c in COLUMNS[usage]]


def now_iso() -> str:
    """Creation time for the manifest (metadata only; never an input to the data)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
