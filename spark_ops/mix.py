"""The mixing engine: two or more dataset versions into one, by dataset or by tag, by counts or ratios.

    python -m spark_ops.mix SPEC_URI

``SPEC_URI`` holds a :class:`tasks.specs.MixSpec` (its docstring states the sampling semantics). The
engine reads each input version (``data/*.parquet`` and ``manifest.json``; every input must have the same
usage), counts what every part holds, plans integer targets (:func:`tasks.mixing.plan_mix`), samples
them with a seeded hash of (seed, origin ref, record id, copy index) -- the same spec takes the same
records whatever the partitioning -- and writes a new version: ``data/part-NNNNN.parquet`` in a seeded
shuffled order, then ``manifest.json`` (the completion marker) with, per part, what was available,
requested, targeted and taken, the up-sampled copies and the requested vs achieved proportion as exact
fractions, and the parents (input refs) for lineage.

Each record keeps its origin: ``meta.tags`` gets ``mix:<ref>`` of the version it came from (earlier
``mix:`` tags are replaced, as taggers replace their own key). Up-sampled copies are the same record
(same id, same text); the publisher's split keeps copies of one id together.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import ExitStack
from functools import reduce
from typing import Any

from pyspark import SparkContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_ops import manifest as mf
from spark_ops.canonical import POSITION
from spark_ops.output import write_records
from spark_ops.sampling import CUM, cumulative_rank, seeded_key
from spark_ops.session import build_session
from tasks.engine import engine_main
from tasks.mixing import MixError, plan_mix
from tasks.records import COLUMNS, DATA_DIR, MANIFEST
from tasks.settings import get_settings
from tasks.specs import MixSpec, slug
from tasks.storage import Lake, LakeError, to_uri
from tasks.version import code_version

log = logging.getLogger("forgeflow.spark_ops.mix")
PART = "_mix_part"
ORIGIN = "_mix_origin"
COPY = "_mix_copy"
MIX_TAG = "mix:"


class OutputConflict(RuntimeError):
    """``output_uri`` already holds a finished version from another run or another spec."""


def spec_fingerprint(spec: MixSpec) -> str:
    """Hash of what determines the mixed records; run_key and Spark resources do not."""
    payload = spec.model_dump_json(exclude={"run_key", "spark"})
    return hashlib.sha256(payload.encode()).hexdigest()


def _sources(spec: MixSpec) -> list[tuple[str, str, str]]:
    """(label, ref, uri) of every version read: the parts by dataset, the inputs by tag."""
    if spec.by == "dataset":
        return [(f"parts[{i}] ({p.label})", p.ref, p.uri) for i, p in enumerate(spec.parts)]  # type: ignore[misc]
    return [(f"inputs[{i}] ({s.ref})", s.ref, s.uri) for i, s in enumerate(spec.inputs)]


def read_version(
    spark: SparkSession, lake: Lake, uri: str, where: str, stack: ExitStack
) -> tuple[DataFrame, str]:
    """The canonical records of a version directory and its usage; errors name the part and the file."""
    uri = to_uri(uri).rstrip("/")
    try:
        manifest = lake.read_json(f"{uri}/{MANIFEST}")
    except LakeError as e:
        raise MixError(f"{where}: {uri} is not a finished dataset version (no {MANIFEST})") from e
    usage = manifest.get("usage")
    if usage not in COLUMNS:
        raise MixError(f"{where}: {uri}/{MANIFEST} has no known usage (got {usage!r})")
    local = stack.enter_context(lake.fetch(f"{uri}/{DATA_DIR}"))
    df = spark.read.parquet(str(local))
    missing = [c for c in COLUMNS[usage] if c not in df.columns]
    if missing:
        raise MixError(f"{where}: {uri}/{DATA_DIR} lacks the {usage} columns {missing}")
    return df.select(*COLUMNS[usage]), usage


def _tags(df_tags: Column) -> Column:
    return F.coalesce(df_tags, F.array().cast("array<string>"))


def _tag_part(spec: MixSpec) -> Column:
    """Index of the first part whose tags a record carries all of (null: none)."""
    tags = _tags(F.col("meta")["tags"])
    expr: Column | None = None
    for i, p in enumerate(spec.parts):
        cond = reduce(lambda a, b: a & b, [F.array_contains(tags, t) for t in p.tags or []], F.lit(True))
        expr = F.when(cond, F.lit(i)) if expr is None else expr.when(cond, F.lit(i))
    assert expr is not None
    return expr


def sample_parts(df: DataFrame, targets: dict[int, tuple[int, int]], seed: int) -> DataFrame:
    """Take every record of part ``i`` ``q`` times and a seeded sample of ``r`` once more, for
    ``targets[i] = (q, r)``; adds COPY (0-based copy index). Needs PART, ORIGIN and id on ``df``."""
    spark = df.sparkSession
    plan = spark.createDataFrame(
        [(i, q, r) for i, (q, r) in sorted(targets.items())], f"{PART} int, _q int, _r int"
    )
    rows = df.join(F.broadcast(plan), PART)
    whole = rows.where(F.col("_q") > 0).withColumn(COPY, F.explode(F.sequence(F.lit(0), F.col("_q") - 1)))
    # the copy index is in the key, so the sampled remainder is independent of which copy number it is
    key = seeded_key(seed, ORIGIN, "id", "_q")
    ranked = cumulative_rank(
        rows.where(F.col("_r") > 0), [PART], key, tiebreak=[F.to_json("meta")], limit=F.col("_r")
    )
    rest = ranked.where(F.col(CUM) <= F.col("_r")).withColumn(COPY, F.col("_q"))
    columns = [*df.columns, COPY]
    return whole.select(*columns).unionByName(rest.select(*columns))


def _with_origin_tag(df: DataFrame) -> DataFrame:
    tags = F.filter(_tags(F.col("meta")["tags"]), lambda t: ~t.startswith(MIX_TAG))
    merged = F.array_distinct(F.concat(tags, F.array(F.concat(F.lit(MIX_TAG), F.col(ORIGIN)))))
    return df.withColumn("meta", F.struct(F.col("meta")["source"].alias("source"), merged.alias("tags")))


def _finished(lake: Lake, output_uri: str, spec: MixSpec, fingerprint: str) -> dict[str, Any] | None:
    uri = f"{output_uri}/{MANIFEST}"
    if not lake.exists(uri):
        return None
    done = lake.read_json(uri)
    if done.get("run_key") != spec.run_key:
        raise OutputConflict(
            f"{output_uri} already holds a dataset version written by run {done.get('run_key')!r}; "
            "versions are immutable, so write this mix to a new output_uri"
        )
    if done.get("spec_fingerprint") != fingerprint:
        raise OutputConflict(
            f"{output_uri} holds the result of run {spec.run_key!r} for a different mix spec; "
            "start a new run or write to a new output_uri"
        )
    return done


def _result(manifest: dict[str, Any], output_uri: str) -> dict[str, Any]:
    m = manifest["mix"]
    return {
        "output_uri": output_uri,
        "manifest_uri": f"{output_uri}/{MANIFEST}",
        "usage": manifest["usage"],
        "records_out": manifest["records_out"],
        "parents": manifest["parents"],
        "parts": m["parts"],
        "warnings": m["warnings"],
    }


def mix(spark: SparkSession, spec: MixSpec) -> dict[str, Any]:
    """Mix the spec's versions into ``output_uri``; idempotent per run_key. Returns the engine result."""
    started = time.monotonic()
    lake = Lake.from_settings()
    output_uri = to_uri(spec.output_uri).rstrip("/")
    fingerprint = spec_fingerprint(spec)
    done = _finished(lake, output_uri, spec, fingerprint)
    if done is not None:
        log.info("%s already holds this run's mix; nothing to do", output_uri)
        return _result(done, output_uri)
    lake.delete(f"{output_uri}/{DATA_DIR}")  # what a crashed attempt may have left

    with ExitStack() as stack:
        frames, usages = [], []
        for i, (where, ref, uri) in enumerate(_sources(spec)):
            df, usage = read_version(spark, lake, uri, where, stack)
            usages.append((where, usage))
            df = df.withColumn(ORIGIN, F.lit(ref))
            frames.append(df.withColumn(PART, F.lit(i)) if spec.by == "dataset" else df)
        usage = spec.usage or usages[0][1]
        wrong = [f"{w} is {u}" for w, u in usages if u != usage]
        if wrong:
            raise MixError(
                f"all parts of a mix must share one usage ({usage}"
                + (" as the spec says" if spec.usage else f", that of {usages[0][0]}")
                + f"); but {', '.join(wrong)}"
            )
        union = reduce(DataFrame.unionByName, frames)
        if spec.by == "tag":
            union = union.withColumn(PART, _tag_part(spec))
        counts = {r[PART]: r["n"] for r in union.groupBy(PART).agg(F.count(F.lit(1)).alias("n")).collect()}
        available = [int(counts.get(i, 0)) for i in range(len(spec.parts))]
        unmatched = int(counts.get(None, 0))
        records_in = sum(available) + unmatched
        plan = plan_mix(spec, available)
        for w in plan.warnings:
            log.warning("%s", w)

        targets = {i: (p.whole_copies, p.sampled) for i, p in enumerate(plan.parts)}
        mixed = _with_origin_tag(sample_parts(union.where(F.col(PART).isNotNull()), targets, spec.seed))
        # A seeded shuffle, so the version interleaves the parts; (id, copy, meta) break ties between equal keys.
        order = seeded_key(spec.seed, F.lit("order"), ORIGIN, "id", COPY)
        mixed = mixed.withColumn(
            POSITION, F.struct(order, F.col("id"), F.col(COPY), F.to_json("meta"))
        ).persist()
        try:
            taken = {r[PART]: r["n"] for r in mixed.groupBy(PART).agg(F.count(F.lit(1)).alias("n")).collect()}
            records_out, chars = mf.text_stats(mixed, usage)  # type: ignore[arg-type]
            total_chars = sum(v["sum"] for k, v in chars.items() if k != "record")
            version_dir = stack.enter_context(lake.stage(output_uri))
            data_files = write_records(mixed, usage, version_dir, total_chars)  # type: ignore[arg-type]
        finally:
            mixed.unpersist()

    report = plan.report()
    for i, row in enumerate(report):
        row["taken"] = int(taken.get(i, 0))
        row["ref"] = spec.parts[i].ref
        row["tags"] = spec.parts[i].tags
    repeated = sum(p.upsampled_copies for p in plan.parts)
    not_taken = sum(max(0, p.available - p.target) for p in plan.parts)
    if (
        any(r["taken"] != r["target"] for r in report)
        or records_out != plan.total
        or (records_in - not_taken - unmatched + repeated != records_out)
    ):
        raise RuntimeError(
            f"mix counts do not reconcile: targets {[r['target'] for r in report]}, taken "
            f"{[r['taken'] for r in report]}, out {records_out} -- this is a bug in spark_ops.mix"
        )
    parents = list(dict.fromkeys(ref for _, ref, _ in _sources(spec)))
    manifest = {
        "manifest_version": mf.MANIFEST_VERSION,
        "run_key": spec.run_key,
        "spec_fingerprint": fingerprint,
        "usage": usage,
        "columns": mf.column_schema(usage),  # type: ignore[arg-type]
        "id": "the input record's id (up-sampled copies keep it)",
        "records_in": records_in,
        "accepted": records_in,
        "quarantined": 0,
        "dropped": not_taken + unmatched,
        "repeated": repeated,
        "records_out": records_out,
        "parents": parents,
        "inputs": [{"ref": ref, "uri": to_uri(uri)} for _, ref, uri in _sources(spec)],
        "operators": [],
        "mix": {
            "by": spec.by,
            "preset": spec.preset,
            "seed": spec.seed,
            "sampling": plan.sampling,
            "method": plan.method,
            "total": plan.total,
            "unmatched": unmatched,
            "tag": "meta.tags holds mix:<ref> of the version each record came from",
            "parts": report,
            "warnings": plan.warnings,
        },
        "chars": chars,
        "files": {"data": data_files, "quarantine": None},
        "spark": {"version": spark.version},
        "timings": {"total": round(time.monotonic() - started, 3)},
        "code_version": code_version(),
        "created_at": mf.now_iso(),
    }
    lake.write_json(f"{output_uri}/{MANIFEST}", manifest)
    log.info("mixed %d records from %d parts into %s", records_out, len(report), output_uri)
    return _result(manifest, output_uri)


def run(spec: MixSpec) -> dict[str, Any]:
    """The engine entry: build (or join) the session from settings and mix."""
    done = _finished(Lake.from_settings(), to_uri(spec.output_uri).rstrip("/"), spec, spec_fingerprint(spec))
    if done is not None:
        return _result(done, to_uri(spec.output_uri).rstrip("/"))
    owned = SparkContext._active_spark_context is None
    spark = build_session(spec.spark, f"forgeflow-mix-{slug(spec.run_key)}", get_settings().spark_master)
    try:
        return mix(spark, spec)
    finally:
        if owned:
            spark.stop()


def main(argv: list[str] | None = None) -> int:
    return engine_main(MixSpec, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
