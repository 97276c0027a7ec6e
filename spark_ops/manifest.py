"""The manifest of a dataset version: counts that reconcile, operator statistics, text lengths, lineage."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_ops.canonical import FIELD_TYPES, TEXT_COLUMNS, text_length
from tasks.records import columns
from tasks.specs import ProcessSpec, Usage

MANIFEST_VERSION = 1
PERCENTILES = (0.5, 0.9, 0.99)


def spec_fingerprint(spec: ProcessSpec) -> str:
    """Hash of what determines the data (inputs, usage, recipe, reject ratio); Spark resources do not.

    Fields added later (modality, labelled, an input's encoding) count only when they differ from their
    defaults, so versions written before them keep their fingerprint and a retry still finds its result.
    """
    data = spec.model_dump(
        mode="json",
        include={"inputs", "usage", "modality", "labelled", "operators", "max_reject_ratio", "output_uri"},
    )
    for key, default in (("modality", "text"), ("labelled", True)):
        if data[key] == default:
            del data[key]
    for src in data["inputs"]:
        if src["encoding"] == "utf-8":
            del src["encoding"]
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))  # as model_dump_json writes it
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


def column_schema(usage: Usage, modality: str = "text") -> list[dict[str, str]]:
    return [{"name": c, "type": FIELD_TYPES[c].simpleString()} for c in columns(usage, modality)]


def now_iso() -> str:
    """Creation time for the manifest (metadata only; never an input to the data)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
