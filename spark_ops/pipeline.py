"""Run an operator recipe with per-step statistics: kept, dropped, modified, and a few samples of each.

Consecutive row-local steps in pure Spark SQL (mappers, filters, taggers: each record's fate depends on
that record alone; see ``Operator.fusable`` and ``MAX_FUSED``) run as one *segment*: a single projection
over the data in which every step
adds its flags -- dropped here, modified here -- and a record dropped by one step is only marked dead, so the
later steps' flags skip it. The segment's output is persisted once, and one aggregation over it yields every
step's counts, counters and the order keys of its first few dropped and modified records (``min_by`` with
``k``: bounded memory). The samples' contents (text before and after the step, the drop reason) are then
recomputed by replaying the segment on just those records, so no copy of the text per step is ever kept.

Steps that need the whole frame (dedupes) run alone: annotated, persisted, and counted and sampled by one
aggregation. Either way a step costs one pass over its input however many statistics it reports, and the
previous cache is released as soon as the next one is full.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import TEXT_COLUMNS
from spark_ops.operators.base import KEEP, NOTE, STAT, Operator, OperatorContext, stat_columns

log = logging.getLogger("forgeflow.spark_ops")
MODIFIED = "_modified"
BEFORE = "_before_"
ALIVE = "_alive"
SAMPLE_SIZE = 5
SAMPLE_CHARS = 240


@dataclass
class StepStats:
    """What one recipe step did. ``kept`` = records in - ``dropped``; ``modified`` counts kept records only.

    Steps of one segment (``segment``) ran in one pass over the data; ``seconds`` is that pass's time."""

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
    segment: int = 0

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


def _dropped_sample(rid: Any, reason: Any, shown: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "reason": reason, **{c: _clip(v) for c, v in shown.items()}}


def _modified_sample(rid: Any, pairs: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    changes = {}
    for w, (before_v, after_v) in pairs.items():
        before, after = _as_text(before_v), _as_text(after_v)
        if before != after:
            b, a = _diff_window(before, after)
            changes[w] = {"before": b, "after": a}
    return {"id": rid, "changes": changes}


def _changed(writes: tuple[str, ...], before: dict[str, str]) -> Column:
    return reduce(lambda a, b: a | b, [~F.col(c).eqNullSafe(F.col(before[c])) for c in writes], F.lit(False))


def _order_key(ctx: OperatorContext) -> Column:
    return F.struct(*[F.col(c) for c in ctx.order_by])


def _first(value: Column, flag: str, ctx: OperatorContext) -> Column:
    """The ``SAMPLE_SIZE`` values of ``value`` with the smallest order keys among rows where ``flag`` holds."""
    return F.min_by(value, F.when(F.col(flag), _order_key(ctx)), SAMPLE_SIZE)


def _shown(df: DataFrame, ctx: OperatorContext) -> tuple[str, ...]:
    return tuple(c for c in TEXT_COLUMNS[ctx.usage] if c in df.columns)


# ------------------------------------------------------------------------------- steps needing the whole frame


def _step_stats(
    op: Operator,
    index: int,
    records_in: int,
    dropped: int,
    modified: int,
    seconds: float,
    samples: dict[str, list[dict[str, Any]]],
    counters: dict[str, int],
    segment: int,
) -> StepStats:
    return StepStats(
        index=index,
        name=op.name,
        params=op.describe()["params"],
        records_in=records_in,
        kept=records_in - dropped,
        dropped=dropped,
        modified=modified,
        seconds=seconds,
        samples=samples,
        counters=counters,
        segment=segment,
    )


def run_step(
    df: DataFrame, op: Operator, ctx: OperatorContext, index: int, segment: int = 0
) -> tuple[DataFrame, DataFrame, StepStats]:
    """Annotate ``df`` with one step, persist it, count and sample in one aggregation; returns (kept records,
    cached frame, stats)."""
    started = time.monotonic()
    writes = op.writes(ctx)
    before = {c: BEFORE + c for c in writes}
    staged = df.withColumns({b: F.col(c) for c, b in before.items()}) if writes else df
    ann = op.annotate(staged, ctx)
    if KEEP not in ann.columns:
        ann = ann.withColumn(KEEP, F.lit(True))
    if NOTE not in ann.columns:
        ann = ann.withColumn(NOTE, F.lit(None).cast(T.StringType()))
    ann = ann.withColumns({MODIFIED: F.col(KEEP) & _changed(writes, before), "_dropped": ~F.col(KEEP)})
    ann = ann.persist()
    stats_cols = stat_columns(ann)
    shown = _shown(ann, ctx)
    row = ann.agg(
        F.count(F.lit(1)).alias("n"),
        F.count(F.when(F.col("_dropped"), 1)).alias("dropped"),
        F.count(F.when(F.col(MODIFIED), 1)).alias("modified"),
        *[F.coalesce(F.sum(c), F.lit(0)).cast("long").alias(c) for c in stats_cols],
        _first(F.struct("id", NOTE, *shown), "_dropped", ctx).alias("_s_dropped"),
        _first(F.struct("id", *writes, *before.values()), MODIFIED, ctx).alias("_s_modified")
        if writes
        else F.lit(None).alias("_s_modified"),
    ).first()
    n, dropped, modified = int(row["n"]), int(row["dropped"]), int(row["modified"])
    samples: dict[str, list[dict[str, Any]]] = {}
    if dropped:
        samples["dropped"] = [
            _dropped_sample(r["id"], r[NOTE], {c: r[c] for c in shown}) for r in row["_s_dropped"]
        ]
    if modified:
        samples["modified"] = [
            _modified_sample(r["id"], {w: (r[before[w]], r[w]) for w in writes}) for r in row["_s_modified"]
        ]
    kept = ann.filter(F.col(KEEP)).drop(KEEP, NOTE, MODIFIED, "_dropped", *stats_cols, *before.values())
    stats = _step_stats(
        op,
        index,
        n,
        dropped,
        modified,
        round(time.monotonic() - started, 3),
        samples,
        {c[len(STAT) :]: int(row[c]) for c in stats_cols},
        segment,
    )
    return kept, ann, stats


# ------------------------------------------------------------------------------------- row-local segments


def _col(j: int, kind: str, name: str = "") -> str:
    return f"_seg{j}_{kind}" + (f"_{name}" if name else "")


def annotate_segment(
    df: DataFrame, ops: list[Operator], ctx: OperatorContext, replay: bool = False
) -> DataFrame:
    """``df`` through row-local ``ops`` in one projection, with ``_alive`` and per step j the flags
    ``_seg{j}_d`` (dropped by step j), ``_seg{j}_m`` (modified by step j) and counters ``_seg{j}_s_*``.

    ``replay`` (for samples, on a handful of records) also keeps each step's note, the written columns
    before it and the shown/written columns after it."""
    cur = df.withColumn(ALIVE, F.lit(True))
    shown = _shown(df, ctx)
    for j, op in enumerate(ops):
        writes = op.writes(ctx)
        before = {c: _col(j, "b", c) for c in writes}
        staged = cur.withColumns({b: F.col(c) for c, b in before.items()}) if writes else cur
        ann = op.annotate(staged, ctx)
        keep = F.col(KEEP) if KEEP in ann.columns else F.lit(True)
        alive = F.col(ALIVE)
        stats = stat_columns(ann)
        flags = {
            _col(j, "d"): alive & ~keep,
            _col(j, "m"): alive & keep & _changed(writes, before),
            **{_col(j, "s", c[len(STAT) :]): F.when(alive, F.col(c)) for c in stats},
        }
        if replay:
            note = F.col(NOTE) if NOTE in ann.columns else F.lit(None).cast(T.StringType())
            flags[_col(j, "n")] = note
            flags.update({_col(j, "a", c): F.col(c) for c in dict.fromkeys((*shown, *writes))})
        ann = ann.withColumns(flags).withColumn(ALIVE, alive & keep)
        gone = [KEEP, NOTE, *stats, *([] if replay else before.values())]
        cur = ann.drop(*[c for c in gone if c in ann.columns])
    return cur


def run_segment(
    df: DataFrame, ops: list[Operator], ctx: OperatorContext, first_index: int, segment: int
) -> tuple[DataFrame, DataFrame, list[StepStats]]:
    """Row-local ``ops`` in one pass: (kept records, cached frame, one StepStats per step)."""
    started = time.monotonic()
    ann = annotate_segment(df, ops, ctx).persist()
    stat_names = [[c for c in ann.columns if c.startswith(_col(j, "s") + "_")] for j in range(len(ops))]
    aggs = [F.count(F.lit(1)).alias("n")]
    for j in range(len(ops)):
        aggs += [
            F.count(F.when(F.col(_col(j, "d")), 1)).alias(f"d{j}"),
            F.count(F.when(F.col(_col(j, "m")), 1)).alias(f"m{j}"),
            _first(_order_key(ctx), _col(j, "d"), ctx).alias(f"kd{j}"),
            _first(_order_key(ctx), _col(j, "m"), ctx).alias(f"km{j}"),
            *[F.coalesce(F.sum(c), F.lit(0)).cast("long").alias(c) for c in stat_names[j]],
        ]
    row = ann.agg(*aggs).first()
    counted = time.monotonic()
    samples = _replay_samples(df, ops, ctx, row)
    seconds = round(time.monotonic() - started, 3)
    log.info(
        "segment %d (%s): pass + counts %.1fs, samples %.1fs",
        segment,
        ", ".join(op.name for op in ops),
        counted - started,
        seconds - (counted - started),
    )
    steps = []
    records_in = int(row["n"])
    for j, op in enumerate(ops):
        dropped, modified = int(row[f"d{j}"]), int(row[f"m{j}"])
        steps.append(
            _step_stats(
                op,
                first_index + j,
                records_in,
                dropped,
                modified,
                seconds,
                samples[j],
                {c[len(_col(j, "s")) + 1 :]: int(row[c]) for c in stat_names[j]},
                segment,
            )
        )
        records_in -= dropped
    flags = [c for c in ann.columns if c.startswith("_seg") or c == ALIVE]
    kept = ann.filter(F.col(ALIVE)).drop(*flags)
    return kept, ann, steps


def _replay_samples(
    df: DataFrame, ops: list[Operator], ctx: OperatorContext, row: Any
) -> list[dict[str, list[dict[str, Any]]]]:
    """Each step's samples, recomputed by running the segment again on only the sampled records."""
    wanted: list[tuple[list[tuple], list[tuple]]] = []
    keys: set[tuple] = set()
    for j in range(len(ops)):
        kd = [tuple(k) for k in row[f"kd{j}"] or []]
        km = [tuple(k) for k in row[f"km{j}"] or []]
        wanted.append((kd, km))
        keys.update(kd)
        keys.update(km)
    out: list[dict[str, list[dict[str, Any]]]] = [{} for _ in ops]
    if not keys:
        return out
    key_schema = T.StructType([df.schema[c] for c in ctx.order_by])
    key_df = df.sparkSession.createDataFrame(sorted(keys, key=repr), key_schema)
    renamed = key_df.select(*[F.col(c).alias(f"_key_{c}") for c in ctx.order_by])
    match = reduce(lambda a, b: a & b, [F.col(c).eqNullSafe(F.col(f"_key_{c}")) for c in ctx.order_by])
    small = df.join(F.broadcast(renamed), match, "left_semi")
    rows = {tuple(r[c] for c in ctx.order_by): r for r in annotate_segment(small, ops, ctx, True).collect()}
    shown = _shown(df, ctx)
    for j, op in enumerate(ops):
        kd, km = wanted[j]
        writes = op.writes(ctx)
        if kd:
            out[j]["dropped"] = [
                _dropped_sample(
                    rows[k]["id"], rows[k][_col(j, "n")], {c: rows[k][_col(j, "a", c)] for c in shown}
                )
                for k in kd
            ]
        if km:
            out[j]["modified"] = [
                _modified_sample(
                    rows[k]["id"], {w: (rows[k][_col(j, "b", w)], rows[k][_col(j, "a", w)]) for w in writes}
                )
                for k in km
            ]
    return out


# Row-local steps fused into one projection at most. Catalyst's optimiser works on expression *trees*; pure
# Spark SQL steps fuse well (pretrain_clean's first eight plan in well under a second), while steps with
# Python UDFs never fuse (Operator.fusable). The cap bounds the plan's depth all the same.
MAX_FUSED = 8


def run_operators(
    df: DataFrame, operators: list[Operator], ctx: OperatorContext, max_fused: int = MAX_FUSED
) -> PipelineResult:
    """Apply ``operators`` in order; the result's ``df`` reads from the last step's cache."""
    result = PipelineResult(df, [])
    i = 0
    segment = 0
    while i < len(operators):
        j = i
        while j < len(operators) and operators[j].fusable and j - i < max_fused:
            j += 1
        if j == i and operators[i].row_local:
            j = i + 1  # row-local but not fusable: a segment of its own
        if j > i:
            kept, cached, steps = run_segment(result.df, operators[i:j], ctx, i, segment)
        else:
            kept, cached, step = run_step(result.df, operators[i], ctx, i, segment)
            steps, j = [step], i + 1
        result.release()  # the new cache is full (and sampled), so the previous one is no longer read
        result.cached.append(cached)
        result.df = kept
        result.steps.extend(steps)
        for st in steps:
            log.info(
                "step %d %s: %.1fs, dropped %d, modified %d",
                st.index,
                st.name,
                st.seconds,
                st.dropped,
                st.modified,
            )
        i = j
        segment += 1
    return result
