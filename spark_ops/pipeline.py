"""Run an operator recipe with per-step statistics: kept, dropped, modified, and a few samples of each.

Each step's annotated frame is persisted once; the counts are one aggregation over it (which also fills
the cache) and the samples are top-k queries on the cached data, so a step costs one pass over its input
however many statistics it reports. The previous step's cache is released as soon as the next one is full.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import TEXT_COLUMNS
from spark_ops.operators.base import KEEP, NOTE, STAT, Operator, OperatorContext, stat_columns

MODIFIED = "_modified"
BEFORE = "_before_"
SAMPLE_SIZE = 5
SAMPLE_CHARS = 240


@dataclass
class StepStats:
    """What one recipe step did. ``kept`` = records in - ``dropped``; ``modified`` counts kept records only."""

    index: int
    name: str
    params: dict[str, Any]
    records_in: int
    kept: int
    dropped: int
    modified: int
    seconds: float
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Operator-specific totals over the step's input (e.g. PII found per type, sensitive words per category).
    counters: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "kept": self.kept, "dropped": self.dropped, "modified": self.modified}


@dataclass
class PipelineResult:
    df: DataFrame
    steps: list[StepStats]
    cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        """Free the cached step frames once ``df`` has been written."""
        for c in self.cached:
            c.unpersist()
        self.cached.clear()


def _clip(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= SAMPLE_CHARS else value[:SAMPLE_CHARS] + "…"
    if isinstance(value, list):
        return [_clip(v) for v in value[:6]]
    if hasattr(value, "asDict"):
        return {k: _clip(v) for k, v in value.asDict(recursive=False).items()}
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(_as_text(v) for v in value)
    if hasattr(value, "asDict"):
        d = value.asDict(recursive=True)
        # an answer shows its text; other structs (meta, written by taggers) show all their fields
        return str(d.get("text", "")) if "text" in d else json.dumps(d, ensure_ascii=False, sort_keys=True)
    return "" if value is None else str(value)


def _diff_window(before: str, after: str) -> tuple[str, str]:
    """The part of before/after around their first difference, so long texts still show the change."""
    i = 0
    while i < min(len(before), len(after)) and before[i] == after[i]:
        i += 1
    start = max(0, i - SAMPLE_CHARS // 3)
    prefix = "…" if start else ""
    return prefix + _clip(before[start:]), prefix + _clip(after[start:])


def _dropped_samples(
    ann: DataFrame, columns: tuple[str, ...], order: tuple[str, ...]
) -> list[dict[str, Any]]:
    rows = ann.filter(~F.col(KEEP)).orderBy(*order).select("id", NOTE, *columns).limit(SAMPLE_SIZE).collect()
    return [{"id": r["id"], "reason": r[NOTE], **{c: _clip(r[c]) for c in columns}} for r in rows]


def _modified_samples(
    ann: DataFrame, writes: tuple[str, ...], order: tuple[str, ...]
) -> list[dict[str, Any]]:
    cols = [c for w in writes for c in (w, BEFORE + w)]
    rows = ann.filter(F.col(MODIFIED)).orderBy(*order).select("id", *cols).limit(SAMPLE_SIZE).collect()
    out = []
    for r in rows:
        changes = {}
        for w in writes:
            before, after = _as_text(r[BEFORE + w]), _as_text(r[w])
            if before != after:
                b, a = _diff_window(before, after)
                changes[w] = {"before": b, "after": a}
        out.append({"id": r["id"], "changes": changes})
    return out


def run_step(
    df: DataFrame, op: Operator, ctx: OperatorContext, index: int
) -> tuple[DataFrame, DataFrame, StepStats]:
    """Annotate ``df`` with one step, persist it and count; returns (kept records, cached frame, stats)."""
    started = time.monotonic()
    writes = op.writes(ctx)
    staged = df.withColumns({BEFORE + c: F.col(c) for c in writes}) if writes else df
    ann = op.annotate(staged, ctx)
    if KEEP not in ann.columns:
        ann = ann.withColumn(KEEP, F.lit(True))
    if NOTE not in ann.columns:
        ann = ann.withColumn(NOTE, F.lit(None).cast(T.StringType()))
    changed = reduce(
        lambda a, b: a | b, [~F.col(c).eqNullSafe(F.col(BEFORE + c)) for c in writes], F.lit(False)
    )
    ann = ann.withColumn(MODIFIED, F.col(KEEP) & changed).persist()
    stats_cols = stat_columns(ann)
    row = ann.agg(
        F.count(F.lit(1)).alias("n"),
        F.count(F.when(~F.col(KEEP), 1)).alias("dropped"),
        F.count(F.when(F.col(MODIFIED), 1)).alias("modified"),
        *[F.coalesce(F.sum(c), F.lit(0)).cast("long").alias(c) for c in stats_cols],
    ).first()
    n, dropped, modified = int(row["n"]), int(row["dropped"]), int(row["modified"])
    samples: dict[str, list[dict[str, Any]]] = {}
    shown = tuple(c for c in TEXT_COLUMNS[ctx.usage] if c in ann.columns)
    if dropped:
        samples["dropped"] = _dropped_samples(ann, shown, ctx.order_by)
    if modified:
        samples["modified"] = _modified_samples(ann, writes, ctx.order_by)
    kept = ann.filter(F.col(KEEP)).drop(KEEP, NOTE, MODIFIED, *stats_cols, *[BEFORE + c for c in writes])
    stats = StepStats(
        index=index,
        name=op.name,
        params=op.describe()["params"],
        records_in=n,
        kept=n - dropped,
        dropped=dropped,
        modified=modified,
        seconds=round(time.monotonic() - started, 3),
        samples=samples,
        counters={c[len(STAT) :]: int(row[c]) for c in stats_cols},
    )
    return kept, ann, stats


def run_operators(df: DataFrame, operators: list[Operator], ctx: OperatorContext) -> PipelineResult:
    """Apply ``operators`` in order; the result's ``df`` reads from the last step's cache."""
    result = PipelineResult(df, [])
    for i, op in enumerate(operators):
        kept, cached, stats = run_step(result.df, op, ctx, i)
        result.release()  # the new cache is full, so the previous one is no longer read
        result.cached.append(cached)
        result.df = kept
        result.steps.append(stats)
    return result
