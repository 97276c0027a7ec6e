"""The Spark data engine: import raw inputs, run an operator recipe, write a dataset version.

    python -m spark_ops.run SPEC_URI

``SPEC_URI`` holds a :class:`tasks.specs.ProcessSpec`. The engine writes under ``output_uri``:
``data/part-NNNNN.parquet`` (canonical records in input order), ``quarantine/quarantine.jsonl`` (rejected
records with file, line and reason, when any) and, last, ``manifest.json`` -- the completion marker. A retry
of the same run finds the manifest and returns its result without redoing the work; a run that died half
way leaves no manifest, and the next attempt clears its partial files first.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from typing import Any

from pyspark import SparkContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_ops import manifest as mf
from spark_ops.canonical import POSITION
from spark_ops.operators import OperatorContext, build_operators
from spark_ops.output import Export, export_records, write_quarantine, write_records
from spark_ops.pipeline import run_operators
from spark_ops.readers import Import, ReaderError, read_inputs, resolve_input
from spark_ops.session import build_session
from tasks.engine import engine_main
from tasks.records import DATA_DIR, MANIFEST, QUARANTINE_DIR
from tasks.settings import get_settings
from tasks.specs import ProcessSpec, slug
from tasks.storage import Lake, to_uri
from tasks.version import code_version

log = logging.getLogger("forgeflow.spark_ops")
TOP_REASONS = 5


class ImportRejected(RuntimeError):
    """More records were rejected on import than the spec's max_reject_ratio allows."""


class OutputConflict(RuntimeError):
    """``output_uri`` already holds a finished version from another run or another spec."""


def _result(manifest: dict[str, Any], output_uri: str) -> dict[str, Any]:
    return {
        "output_uri": output_uri,
        "manifest_uri": f"{output_uri}/{MANIFEST}",
        "records_in": manifest["records_in"],
        "quarantined": manifest["quarantined"],
        "records_out": manifest["records_out"],
        "operators": [
            {k: op[k] for k in ("name", "kept", "dropped", "modified")} for op in manifest["operators"]
        ],
    }


def _finished(lake: Lake, output_uri: str, spec: ProcessSpec, fingerprint: str) -> dict[str, Any] | None:
    """The manifest of a previous successful attempt of this run, or None; raises on someone else's version."""
    uri = f"{output_uri}/{MANIFEST}"
    if not lake.exists(uri):
        return None
    done = lake.read_json(uri)
    if done.get("run_key") != spec.run_key:
        raise OutputConflict(
            f"{output_uri} already holds a dataset version written by run {done.get('run_key')!r}; "
            "versions are immutable, so write this run to a new output_uri"
        )
    if done.get("spec_fingerprint") != fingerprint:
        raise OutputConflict(
            f"{output_uri} holds the result of run {spec.run_key!r} for a different spec (inputs, usage or "
            "recipe changed); start a new run or write to a new output_uri"
        )
    return done


def _rejection_message(imp: Import, spec: ProcessSpec, quarantine_uri: str) -> str:
    ratio = imp.quarantined / imp.records_in
    lines = [
        f"{imp.quarantined} of {imp.records_in} records ({ratio:.1%}) were rejected on import, "
        f"above max_reject_ratio {spec.max_reject_ratio:.1%}. Most common reasons:"
    ]
    top = (
        imp.quarantine.groupBy("reason")
        .agg(F.count(F.lit(1)).alias("n"), F.min(F.struct("input", "source_file", "line")).alias("first"))
        .orderBy(F.desc("n"), "reason")
        .limit(TOP_REASONS)
        .collect()
    )
    for r in top:
        where = r["first"]["source_file"] + (f" line {r['first']['line']}" if r["first"]["line"] else "")
        lines.append(f"  - {r['n']} x {r['reason']} (first: {where})")
    if top and top[0]["reason"].startswith("missing required field"):
        # The usual cause is a format or field_map that does not match the records: say what they hold.
        first = (
            imp.quarantine.orderBy("input", "source_file", "line").select(F.json_object_keys("raw")).first()
        )
        keys = set(first[0] or []) if first else set()
        if {"instruction", "output"} <= keys:
            lines.append("The records look like Alpaca ({instruction, input, output}): set format to alpaca.")
        elif "conversations" in keys:
            lines.append("The records look like ShareGPT ({conversations: [...]}): set format to sharegpt.")
        elif "messages" in keys:
            lines.append("The records look like OpenAI chat ({messages: [...]}): set format to openai.")
        elif keys:
            lines.append(
                f"The first rejected record has the fields {', '.join(sorted(keys))}: map them with field_map."
            )
    lines.append(f"Quarantine: {quarantine_uri}")
    lines.append("Fix the input (or its format / field_map), or raise max_reject_ratio.")
    return "\n".join(lines)


def _clear_partial(lake: Lake, output_uri: str) -> None:
    """Remove what a crashed attempt may have left; only the engine's own names, never the whole directory."""
    for name in (DATA_DIR, QUARANTINE_DIR):
        lake.delete(f"{output_uri}/{name}")


def run(spec: ProcessSpec, export: Export | None = None) -> dict[str, Any]:
    """Run the engine on a validated spec; returns the result recorded in result.json.

    ``export`` (``forgeflow process``) also writes the output records outside the lake as JSONL or Parquet,
    keeping each input record's own ``id``; the result then lists those files under ``export``.
    """
    started = time.monotonic()
    lake = Lake.from_settings()
    output_uri = to_uri(spec.output_uri).rstrip("/")
    fingerprint = mf.spec_fingerprint(spec)
    done = _finished(lake, output_uri, spec, fingerprint)
    if done is not None:
        log.info("%s already holds this run's result; nothing to do", output_uri)
        return _result(done, output_uri)
    operators = build_operators(spec.operators, spec.usage)  # a bad recipe fails before the JVM starts
    _clear_partial(lake, output_uri)
    timings: dict[str, float] = {}

    with ExitStack() as stack:
        local_inputs = [stack.enter_context(lake.fetch(to_uri(src.uri))) for src in spec.inputs]
        resolved = [
            resolve_input(src, spec.usage, i, local, modality=spec.modality, labelled=spec.labelled)
            for i, (src, local) in enumerate(zip(spec.inputs, local_inputs, strict=True))
        ]
        t = time.monotonic()
        master = get_settings().spark_master
        # Any context already running in this process (a test, a notebook, concurrent importers on threads,
        # whose JVM threads see no "active" session) stays its owner's to stop.
        owned = SparkContext._active_spark_context is None
        spark = build_session(spec.spark, f"forgeflow-process-{slug(spec.run_key)}", master)
        if owned:  # a session someone else started (a test, a notebook) stays theirs to stop
            stack.callback(spark.stop)
        timings["session"] = round(time.monotonic() - t, 3)

        version_dir = stack.enter_context(lake.stage(output_uri))
        t = time.monotonic()
        imp = read_inputs(spark, resolved, spec.usage, source_ids=export is not None)
        if imp.records_in == 0:
            raise ReaderError(
                "the inputs hold no records: " + ", ".join(f"{s.uri} ({s.files} files)" for s in imp.inputs)
            )
        quarantine_file = write_quarantine(imp.quarantine, version_dir) if imp.quarantined else None
        timings["import"] = round(time.monotonic() - t, 3)
        log.info(
            "imported %d records: %d accepted, %d quarantined",
            imp.records_in,
            imp.accepted_count,
            imp.quarantined,
        )
        if imp.quarantined / imp.records_in > spec.max_reject_ratio:
            raise ImportRejected(_rejection_message(imp, spec, f"{output_uri}/{quarantine_file}"))

        t = time.monotonic()
        ctx = OperatorContext(usage=spec.usage, order_by=(POSITION, "id"))
        result = run_operators(imp.accepted, operators, ctx)
        for s in result.steps:
            log.info(
                "operator %d %s: kept %d, dropped %d, modified %d",
                s.index,
                s.name,
                s.kept,
                s.dropped,
                s.modified,
            )
        timings["operators"] = round(time.monotonic() - t, 3)

        t = time.monotonic()
        final: DataFrame = result.df
        if not operators:
            final = final.persist()  # read twice below: statistics, then the write
            result.cached.append(final)
        records_out, chars = mf.text_stats(final, spec.usage)
        total_chars = sum(v["sum"] for k, v in chars.items() if k != "record")
        data_files = write_records(final, spec.usage, version_dir, total_chars)
        exported = export_records(final, spec.usage, export, total_chars) if export else None
        result.release()
        imp.release()
        timings["write"] = round(time.monotonic() - t, 3)

        dropped = sum(s.dropped for s in result.steps)
        if (
            imp.records_in != imp.accepted_count + imp.quarantined
            or imp.accepted_count != records_out + dropped
        ):
            raise RuntimeError(
                f"counts do not reconcile: in {imp.records_in}, accepted {imp.accepted_count}, quarantined "
                f"{imp.quarantined}, dropped {dropped}, out {records_out} -- this is a bug in spark_ops"
            )
        manifest = {
            "manifest_version": mf.MANIFEST_VERSION,
            "run_key": spec.run_key,
            "spec_fingerprint": fingerprint,
            "usage": spec.usage,
            "modality": spec.modality,
            "labelled": spec.labelled,
            "columns": mf.column_schema(spec.usage, spec.modality),
            "id": "sha256 hex prefix of the record as imported (before operators)",
            "records_in": imp.records_in,
            "accepted": imp.accepted_count,
            "quarantined": imp.quarantined,
            "dropped": dropped,
            "records_out": records_out,
            "inputs": [vars(s) for s in imp.inputs],
            "operators": [vars(s) for s in result.steps],
            "chars": chars,
            "files": {"data": data_files, "quarantine": quarantine_file},
            "spark": {
                "version": spark.version,
                "master": master,
                "resources": spec.spark.model_dump(mode="json"),
            },
            "timings": {**timings, "total": round(time.monotonic() - started, 3)},
            "code_version": code_version(),
            "created_at": mf.now_iso(),
        }
    # Written after the staged files are in place: its presence is what marks the version complete.
    lake.write_json(f"{output_uri}/{MANIFEST}", manifest)
    log.info("wrote %d records to %s", records_out, output_uri)
    out = _result(manifest, output_uri)
    if export is not None:
        out["export"] = {"directory": str(export.directory), "format": export.fmt, "files": exported}
    return out


def main(argv: list[str] | None = None) -> int:
    return engine_main(ProcessSpec, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
