"""The publishing engine: a dataset version as an export in a training format, split, written atomically.

    python -m spark_ops.publish SPEC_URI

``SPEC_URI`` holds a :class:`tasks.specs.PublishSpec`. The export directory ``output_uri`` holds
``train/part-NNNNN.jsonl``, ``validation/part-NNNNN.jsonl`` (when a validation share is asked),
``publication.json`` (format, counts and files per split, lineage) and ``_SUCCESS``. Readers trust an
export only when ``_SUCCESS`` is there (:func:`completed_publication`).

Formats (records in a seeded shuffled order, the same on every run):
- ``standard``: the canonical records of the usage, as JSONL (``id``, content columns, ``meta``).
- ``openai``: ``{"messages": [{"role", "content"}, ...]}``: ``system`` (when set) as a system message, the
  ``context`` turns alternating user/assistant (the first and last are user turns), ``target`` as the
  final assistant message.
- ``sharegpt``: ``{"system"?, "conversations": [{"from": "human"|"gpt", "value"}, ...]}``, same turns.
reward_model exports its ranking shape (``answers`` with score and rank) in ``standard`` only; pretrain
data has no conversation, so also ``standard`` only.

Split: the validation set is the records whose key ``xxhash64(seed, id)`` is smallest, summed per id until
``validation_count`` (or ``round(n * validation_ratio)``) is reached, so it is exact when ids are unique,
independent of partitioning and record order, and copies of one record (an up-sampled mix) never straddle
train and validation.

Atomicity: on file:// everything is written into a sibling staging directory, ``.NAME.staging-<uuid>``,
with ``_SUCCESS`` last, then renamed onto ``output_uri`` in one ``os.replace``. On s3:// the files go under
a staging prefix, are copied to ``output_uri`` and ``_SUCCESS`` is written there last. A publication killed
at any point leaves no trusted export; the next attempt clears the leftovers (stale staging directories,
an s3 export without ``_SUCCESS``) and writes the same files again; one finding a finished export of the
same run and spec returns it without writing anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

from pyspark import SparkContext
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_ops.output import _tidy, files_for
from spark_ops.sampling import CUM, cumulative_rank, seeded_key
from spark_ops.session import build_session
from tasks.assets import dataset_asset_uri
from tasks.engine import engine_main
from tasks.records import COLUMNS, DATA_DIR, MANIFEST
from tasks.settings import get_settings
from tasks.specs import PublishSpec, slug
from tasks.storage import Lake, LakeError, local_path, to_uri
from tasks.version import code_version

log = logging.getLogger("forgeflow.spark_ops.publish")
SUCCESS = "_SUCCESS"
PUBLICATION = "publication.json"
SPLITS = ("train", "validation")
CHAT_USAGES = ("sft", "rl", "model_test")
MESSAGE = "array<struct<role:string,content:string>>"
TURN = "array<struct<from:string,value:string>>"
VALIDATION = "_validation"
ORDER = "_order"


class PublishError(ValueError):
    """A publication that cannot be made as asked; the message says what and how to fix it."""


class OutputConflict(RuntimeError):
    """``output_uri`` holds another publication (other run or spec), or something that is not an export."""


def spec_fingerprint(spec: PublishSpec) -> str:
    """Hash of what determines the export; run_key and Spark resources do not."""
    return hashlib.sha256(spec.model_dump_json(exclude={"run_key", "spark"}).encode()).hexdigest()


def completed_publication(lake: Lake, uri: str) -> dict[str, Any] | None:
    """The publication.json of a complete export at ``uri``, or None (absent, or no _SUCCESS: partial)."""
    uri = uri.rstrip("/")
    if not lake.exists(f"{uri}/{SUCCESS}"):
        return None
    return lake.read_json(f"{uri}/{PUBLICATION}")


def check_format(usage: str, fmt: str) -> None:
    if fmt == "standard":
        return
    if usage == "reward_model":
        raise PublishError(
            f"reward_model data exports its ranking shape (context, answers with text, score and rank) in "
            f"format 'standard' only; {fmt!r} has no place for scores and ranks"
        )
    if usage not in CHAT_USAGES:
        raise PublishError(f"{usage} data has no conversation to write as {fmt!r}; publish it as 'standard'")


def chat_turns(user: str, assistant: str, role_field: str, text_field: str, dtype: str) -> Column:
    """context turns (alternating, first a user turn) then target, as an array of {role, text} structs."""

    def turn(x: Column, i: Column) -> Column:
        role = F.when(i % 2 == 0, F.lit(user)).otherwise(F.lit(assistant))
        return F.struct(role.alias(role_field), x.alias(text_field))

    answer = F.array(F.struct(F.lit(assistant).alias(role_field), F.col("target").alias(text_field)))
    return F.concat(F.transform(F.coalesce("context", F.array().cast("array<string>")), turn), answer).cast(
        dtype
    )


def formatted(df: DataFrame, usage: str, fmt: str) -> DataFrame:
    """``df`` (canonical records) as the columns of ``fmt``; other columns are kept for the writer."""
    if fmt == "standard":
        return df.select(*COLUMNS[usage], *[c for c in df.columns if c.startswith("_")])
    has_system = F.col("system").isNotNull() & (F.col("system") != "")
    keep = [c for c in df.columns if c.startswith("_")]
    if fmt == "openai":
        system = F.when(
            has_system, F.array(F.struct(F.lit("system").alias("role"), F.col("system").alias("content")))
        ).otherwise(F.array().cast(MESSAGE))
        messages = F.concat(system.cast(MESSAGE), chat_turns("user", "assistant", "role", "content", MESSAGE))
        return df.select(messages.alias("messages"), *keep)
    return df.select(
        F.when(has_system, F.col("system")).alias("system"),
        chat_turns("human", "gpt", "from", "value", TURN).alias("conversations"),
        *keep,
    )


def _check_turns(df: DataFrame, usage: str, fmt: str) -> None:
    """Chat formats need context to end on a user turn (odd length); name the records that do not."""
    if fmt == "standard" or usage not in CHAT_USAGES:
        return
    bad = df.where((F.size(F.coalesce("context", F.array())) % 2) == 0)
    n = bad.count()
    if n:
        ids = [r["id"] for r in bad.select("id").orderBy("id").limit(5).collect()]
        raise PublishError(
            f"{n} record(s) have a context with an even number of turns, so it does not end on a user turn "
            f"and cannot be written as {fmt!r} (first ids: {', '.join(ids)}); fix them with an operator or "
            "publish as 'standard'"
        )


def validation_size(n: int, spec: PublishSpec) -> int:
    if spec.validation_count is not None:
        if spec.validation_count > n:
            raise PublishError(f"validation_count {spec.validation_count} is more than the {n} records")
        return spec.validation_count
    if spec.validation_ratio:
        return int(Fraction(str(spec.validation_ratio)) * n + Fraction(1, 2))
    return 0


def split(df: DataFrame, n_validation: int, seed: int) -> DataFrame:
    """``df`` with VALIDATION (bool): the ids with the smallest split keys, whole, up to ``n_validation``."""
    if n_validation == 0:
        return df.withColumn(VALIDATION, F.lit(False))
    ids = df.groupBy("id").agg(F.count(F.lit(1)).alias("_copies"))
    ranked = cumulative_rank(
        ids, [], seeded_key(seed, "id"), weight=F.col("_copies"), limit=F.lit(n_validation)
    )
    chosen = ranked.where(F.col(CUM) <= n_validation).select("id", F.lit(True).alias(VALIDATION))
    return df.join(chosen, "id", "left").withColumn(VALIDATION, F.coalesce(VALIDATION, F.lit(False)))


def _write_split(df: DataFrame, directory: Path, files: int) -> list[str]:
    """Write ``df`` (ORDER decides the order) as ``part-NNNNN.jsonl`` under ``directory``."""
    tmp = directory.parent / f"_spark_{directory.name}"
    cols = [c for c in df.columns if not c.startswith("_")]
    (
        df.repartitionByRange(files, ORDER)
        .sortWithinPartitions(ORDER)
        .select(*cols)
        .write.mode("overwrite")
        .json(str(tmp))
    )
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i, part in enumerate(_tidy(tmp, ".json")):
        target = directory / f"part-{i:05d}.jsonl"
        part.replace(target)
        names.append(f"{directory.name}/{target.name}")
    shutil.rmtree(tmp)
    return names


def _finished(lake: Lake, output_uri: str, spec: PublishSpec, fingerprint: str) -> dict[str, Any] | None:
    done = completed_publication(lake, output_uri)
    if done is None:
        return None
    if done.get("run_key") != spec.run_key or done.get("spec_fingerprint") != fingerprint:
        raise OutputConflict(
            f"{output_uri} already holds a publication of run {done.get('run_key')!r}"
            + (" for a different spec" if done.get("run_key") == spec.run_key else "")
            + "; a publication does not change: publish to a new output_uri"
        )
    return done


def _ours(rel: str) -> bool:
    """A file name the publisher writes under an export."""
    if rel == PUBLICATION:
        return True
    folder, _, file = rel.partition("/")
    return folder in SPLITS and file.startswith("part-") and file.endswith(".jsonl")


def _clear_leftovers(lake: Lake, output_uri: str) -> None:
    """Remove what killed attempts left: staging directories, and an s3 export that never got _SUCCESS."""
    parent, name = output_uri.rsplit("/", 1)
    if output_uri.startswith("s3://"):
        bucket, prefix = Lake._split(f"{parent}/.{name}.staging-")
        stale = set()
        for page in lake.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            stale.update(obj["Key"][len(prefix) :].split("/", 1)[0] for obj in page.get("Contents", []))
        for suffix in sorted(stale):
            lake.delete(f"{parent}/.{name}.staging-{suffix}")
        left = [u[len(output_uri) + 1 :] for u in lake.list(output_uri)]
        if left:  # a copy into place that was cut short: only our own names, and no _SUCCESS
            if not all(_ours(rel) for rel in left):
                raise OutputConflict(
                    f"{output_uri} holds files that are not a Forgeflow export; choose another output_uri"
                )
            lake.delete(output_uri)
        return
    root = local_path(parent)
    if root.is_dir():
        for stale in root.glob(f".{name}.staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
    final = local_path(output_uri)
    if final.exists():  # never written in place on file://; a directory here is someone else's
        raise OutputConflict(
            f"{output_uri} exists and is not a complete Forgeflow export; choose another output_uri"
        )


def _result(pub: dict[str, Any], output_uri: str, already: bool) -> dict[str, Any]:
    keep = ("format", "usage", "visibility", "ref", "version_uri", "splits", "counts", "files", "asset_uri")
    return {"output_uri": output_uri, **{k: pub[k] for k in keep}, "already_published": already}


def publish(spark: SparkSession, spec: PublishSpec) -> dict[str, Any]:
    """Publish ``spec.version_uri`` to ``spec.output_uri``; exactly once per run and spec."""
    started = time.monotonic()
    lake = Lake.from_settings()
    output_uri = to_uri(spec.output_uri).rstrip("/")
    version_uri = to_uri(spec.version_uri).rstrip("/")
    fingerprint = spec_fingerprint(spec)
    done = _finished(lake, output_uri, spec, fingerprint)
    if done is not None:
        log.info("%s already holds this publication; nothing to do", output_uri)
        return _result(done, output_uri, already=True)
    try:
        manifest = lake.read_json(f"{version_uri}/{MANIFEST}")
    except LakeError as e:
        raise PublishError(f"{version_uri} is not a finished dataset version (no {MANIFEST})") from e
    usage = manifest.get("usage")
    if usage not in COLUMNS:
        raise PublishError(f"{version_uri}/{MANIFEST}: unknown usage {usage!r}")
    check_format(usage, spec.format)
    _clear_leftovers(lake, output_uri)

    s3 = output_uri.startswith("s3://")
    parent, name = output_uri.rsplit("/", 1)
    staging_uri = f"{parent}/.{name}.staging-{uuid.uuid4().hex[:12]}"
    with (
        tempfile.TemporaryDirectory(prefix="forgeflow-publish-") as tmp,
        lake.fetch(f"{version_uri}/{DATA_DIR}") as data,
    ):
        staging = Path(tmp) / name if s3 else local_path(staging_uri)
        staging.mkdir(parents=True)
        df = spark.read.parquet(str(data))
        missing = [c for c in COLUMNS[usage] if c not in df.columns]
        if missing:
            raise PublishError(f"{version_uri}/{DATA_DIR} lacks the {usage} columns {missing}")
        df = df.select(*COLUMNS[usage])
        _check_turns(df, usage, spec.format)
        n = df.count()
        n_validation = validation_size(n, spec)
        order = F.struct(seeded_key(spec.seed, F.lit("order"), "id"), F.col("id"), F.to_json(F.struct("*")))
        df = split(df, n_validation, spec.seed).withColumn(ORDER, order)
        out = formatted(df, usage, spec.format).persist()
        try:
            sizes = {
                r[VALIDATION]: r["n"]
                for r in out.groupBy(VALIDATION).count().withColumnRenamed("count", "n").collect()
            }
            counts = {"train": int(sizes.get(False, 0)), "validation": int(sizes.get(True, 0))}
            chars = sum(v.get("sum", 0) for k, v in (manifest.get("chars") or {}).items() if k != "record")
            splits: dict[str, Any] = {}
            for split_name in SPLITS:
                if counts[split_name] == 0 and split_name == "validation":
                    continue
                part = out.where(F.col(VALIDATION) == (split_name == "validation"))
                n_files = files_for(chars * counts[split_name] // max(n, 1))
                files = _write_split(part, staging / split_name, n_files)
                splits[split_name] = {"count": counts[split_name], "files": files}
        finally:
            out.unpersist()
        if counts["train"] + counts["validation"] != n:
            raise RuntimeError(
                f"split counts {counts} do not add up to {n} records -- a bug in spark_ops.publish"
            )
        pub = {
            "run_key": spec.run_key,
            "spec_fingerprint": fingerprint,
            "format": spec.format,
            "usage": usage,
            "visibility": spec.visibility,
            "ref": spec.ref,
            "version_uri": version_uri,
            "seed": spec.seed,
            "validation_requested": n_validation,
            "splits": splits,
            "counts": counts,
            "files": [f for s in splits.values() for f in s["files"]],
            "asset_uri": dataset_asset_uri(usage),
            "parents": [spec.ref] if spec.ref else [],
            "code_version": code_version(),
            "seconds": round(time.monotonic() - started, 3),
        }
        (staging / PUBLICATION).write_text(json.dumps(pub, ensure_ascii=False, indent=2), encoding="utf-8")
        if s3:
            lake.put_dir(staging, staging_uri)
            lake.move_dir(staging_uri, output_uri)
            lake.write_text(f"{output_uri}/{SUCCESS}", "")
        else:
            (staging / SUCCESS).write_text("")
            try:
                os.replace(staging, local_path(output_uri))
            except OSError:
                # another attempt finished first: the same publication is fine, anything else is a conflict
                shutil.rmtree(staging, ignore_errors=True)
                done = _finished(lake, output_uri, spec, fingerprint)
                if done is None:
                    raise
                return _result(done, output_uri, already=True)
    log.info("published %s as %s: %s", version_uri, spec.format, counts)
    return _result(pub, output_uri, already=False)


def run(spec: PublishSpec) -> dict[str, Any]:
    """The engine entry: a finished publication returns at once; otherwise build the session and publish."""
    output_uri = to_uri(spec.output_uri).rstrip("/")
    done = _finished(Lake.from_settings(), output_uri, spec, spec_fingerprint(spec))
    if done is not None:
        return _result(done, output_uri, already=True)
    owned = SparkContext._active_spark_context is None
    spark = build_session(spec.spark, f"forgeflow-publish-{slug(spec.run_key)}", get_settings().spark_master)
    try:
        return publish(spark, spec)
    finally:
        if owned:
            spark.stop()


def main(argv: list[str] | None = None) -> int:
    return engine_main(PublishSpec, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
