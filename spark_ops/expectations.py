"""Great Expectations suites per usage: the gate a dataset version passes before publication.

Suites live in ``include/expectations/<usage>.json`` in Great Expectations 1.x format (``name``,
``expectations: [{type, kwargs, meta}]``) and are meant to be edited: any GX expectation works. Bounds are
suite parameters (``{"$PARAMETER": "target_max_chars"}``) with defaults in ``meta.forgeflow.parameters``;
a run overrides them (``QualitySpec.suite_parameters``).

Validation runs on Spark with GX's Spark datasource (it works on Spark 4.2: checked with GX 1.24.1), so
every record is checked -- no sample. GX computes each metric as its own Spark job (a suite is some tens
of jobs), so the frame it validates is persisted once (the datasource's ``persist``). That frame is the
version's records plus derived columns for what GX cannot see inside lists:

- ``<col>__chars``: characters of a text column (list turns summed);
- for list columns (``context``, ``answers``): ``<col>__text`` (the items joined by newlines, for regex
  expectations), ``<col>__items`` (turns / answers per record), ``<col>__blank_items``;
- ``answers__ranks_valid``: the ranks of a record's answers are 1..n, each once.

Table-level schema expectations (``expect_table_columns_*``) run on the records alone, so the derived
columns do not count as extra columns.

The PII expectations are regexes: the desensitize detectors' own patterns (phone, ID card, e-mail, bank
card), which Java and Python read alike. A regex cannot check a checksum, so a look-alike the desensitizer
leaves alone (a 16-digit number failing Luhn) still fails the expectation: the gate is stricter than the
operator. The quality report's "PII left" counts only checksum-validated matches; a reviewer who sees the
difference can override the gate with a reason.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import TEXT_COLUMNS, content_columns, text_length, text_values
from tasks.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("forgeflow.spark_ops")

SUITES_DIR = PROJECT_ROOT / "include" / "expectations"
PARAMETER = "$PARAMETER"
# Expectations about the set of columns see the records as stored, not the derived columns.
SCHEMA_PREFIX = "expect_table_column"
BLANK_RE = r"^[\s\p{Z}]*$"


class SuiteError(ValueError):
    """A suite file or parameter override that cannot be used; the message names the file and the field."""


def suite_path(usage: str) -> Path:
    return SUITES_DIR / f"{usage}.json"


def _referenced(value: Any) -> list[str]:
    if isinstance(value, dict):
        if set(value) == {PARAMETER}:
            return [str(value[PARAMETER])]
        return [p for v in value.values() for p in _referenced(v)]
    if isinstance(value, list):
        return [p for v in value for p in _referenced(v)]
    return []


def load_suite(usage: str, path: str | Path | None = None) -> dict[str, Any]:
    """The suite JSON of ``usage`` (or the file ``path``), checked for shape and parameter defaults."""
    file = Path(path) if path is not None else suite_path(usage)
    if not file.is_file():
        raise SuiteError(f"expectation suite {file} does not exist")
    try:
        suite = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SuiteError(f"{file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise SuiteError(f"{file}: a suite is an object with a list 'expectations'")
    defaults = suite.get("meta", {}).get("forgeflow", {}).get("parameters", {})
    if not isinstance(defaults, dict):
        raise SuiteError(f"{file}: meta.forgeflow.parameters must be an object of name -> value")
    for i, exp in enumerate(suite["expectations"]):
        if not isinstance(exp, dict) or not isinstance(exp.get("type"), str):
            raise SuiteError(
                f"{file}: expectations[{i}] needs a 'type' (e.g. expect_column_values_to_be_unique)"
            )
        if not isinstance(exp.get("kwargs", {}), dict):
            raise SuiteError(f"{file}: expectations[{i}].kwargs must be an object")
        missing = [p for p in _referenced(exp.get("kwargs", {})) if p not in defaults]
        if missing:
            raise SuiteError(
                f"{file}: expectations[{i}] ({exp['type']}) uses parameter(s) {', '.join(missing)} with no "
                "default in meta.forgeflow.parameters"
            )
    suite.setdefault("name", f"forgeflow-{usage}")
    suite["_file"] = str(file)
    return suite


def suite_parameters(suite: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The suite's parameter defaults with ``overrides``; an unknown name is an error that lists the known."""
    defaults = dict(suite.get("meta", {}).get("forgeflow", {}).get("parameters", {}))
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise SuiteError(
            f"suite {suite.get('_file', suite['name'])} has no parameter(s) {', '.join(unknown)}; "
            f"it has: {', '.join(sorted(defaults)) or '(none)'}"
        )
    return {**defaults, **(overrides or {})}


def validation_view(df: DataFrame, usage: str) -> DataFrame:
    """The records plus the derived columns the suites check (see the module docstring)."""
    types = {f.name: f.dataType for f in df.schema.fields}
    derived = {}
    for c in content_columns(usage):  # type: ignore[arg-type]
        dtype = types.get(c)
        if dtype is None:
            continue  # the schema expectation reports the missing column
        if c in TEXT_COLUMNS[usage] or not isinstance(dtype, T.StringType):  # type: ignore[index]
            derived[f"{c}__chars"] = text_length(c, dtype)
        if isinstance(dtype, T.ArrayType):
            values = text_values(c, dtype)
            derived[f"{c}__text"] = F.array_join(values, "\n")
            derived[f"{c}__items"] = F.coalesce(F.size(F.col(c)), F.lit(0))
            derived[f"{c}__blank_items"] = F.coalesce(
                F.size(F.filter(values, lambda s: s.isNull() | s.rlike(BLANK_RE))), F.lit(0)
            )
    if isinstance(types.get("answers"), T.ArrayType):
        ranks = F.array_sort(F.transform(F.col("answers"), lambda a: a["rank"]))
        n = F.size(F.col("answers"))
        derived["answers__ranks_valid"] = F.coalesce(
            F.when(n <= 0, F.lit(True)).otherwise(ranks == F.sequence(F.lit(1), n)), F.lit(False)
        )
    return df.withColumns(derived)


def _compact(res: Any, exp: dict[str, Any], examples: int) -> dict[str, Any]:
    """One expectation's result, small enough for the catalogue: ids as examples, never the text."""
    r = res.result or {}
    info = res.exception_info or {}
    error = None
    if isinstance(info, dict) and info.get("raised_exception"):
        error = info.get("exception_message")
    ids = [row.get("id") for row in r.get("partial_unexpected_index_list") or [] if isinstance(row, dict)]
    kwargs = exp.get("kwargs", {})
    observed = r.get("observed_value")
    return {
        "name": exp["type"],
        "title": exp.get("meta", {}).get("title") or exp["type"],
        "column": kwargs.get("column"),
        "success": bool(res.success),
        "observed": observed
        if isinstance(observed, (int, float, str, bool, list, type(None)))
        else str(observed),
        "unexpected_count": r.get("unexpected_count"),
        "unexpected_percent": None
        if r.get("unexpected_percent") is None
        else round(float(r["unexpected_percent"]), 4),
        "examples": [i for i in dict.fromkeys(ids) if i is not None][:examples],
        "error": error,
    }


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no usage statistics sent anywhere
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # before the import: it logs on import
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    return gx


def validate_version(
    spark: SparkSession,
    version_dir: str,
    usage: str,
    suite: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    *,
    examples: int = 5,
) -> dict[str, Any]:
    """Run ``suite`` (default: the usage's) on the version's records with GX's ephemeral context.

    Returns ``{suite, suite_file, success, evaluated, failed, parameters, expectations: [{name, title,
    column, success, observed, unexpected_count, unexpected_percent, examples (record ids), error}]}`` in
    the suite's order.
    """
    from spark_ops.quality import read_version

    suite = suite if suite is not None else load_suite(usage)
    params = suite_parameters(suite, parameters)
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    records = read_version(spark, version_dir)
    view = validation_view(records, usage)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_spark("forgeflow", persist=True)
    definition = source.add_dataframe_asset("version").add_batch_definition_whole_dataframe("all")
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": max(examples, 1),
        "unexpected_index_column_names": ["id"],
        "return_unexpected_index_query": False,
    }
    numbered = list(enumerate(suite["expectations"]))
    parts = {
        "schema": [(i, e) for i, e in numbered if e["type"].startswith(SCHEMA_PREFIX)],
        "records": [(i, e) for i, e in numbered if not e["type"].startswith(SCHEMA_PREFIX)],
    }
    frames = {"schema": records, "records": view}
    by_position: dict[int, dict[str, Any]] = {}
    try:
        for part, exps in parts.items():
            if not exps:
                continue
            configs = []
            for pos, e in exps:
                config = {"type": e["type"], "kwargs": e.get("kwargs", {}), "meta": e.get("meta", {})}
                try:  # one at a time, so that a typo is reported with its position
                    gx.ExpectationSuite(name="check", expectations=[config])
                except Exception as err:
                    raise SuiteError(
                        f"{suite.get('_file', suite['name'])}: expectations[{pos}] ({e['type']}) is not a valid "
                        f"Great Expectations expectation: {err}"
                    ) from err
                configs.append(config)
            gx_suite = ctx.suites.add(
                gx.ExpectationSuite(name=f"{suite['name']}:{part}", expectations=configs)
            )
            ids = {e.id: i for i, e in enumerate(gx_suite.expectations)}
            batch = definition.get_batch(batch_parameters={"dataframe": frames[part]})
            res = batch.validate(gx_suite, expectation_parameters=params, result_format=result_format)
            for r in res.results:
                pos, exp = exps[ids[r.expectation_config.id]]
                by_position[pos] = _compact(r, exp, examples)
    finally:
        view.unpersist()
        records.unpersist()
    results = [by_position[i] for i in sorted(by_position)]
    failed = sum(not r["success"] for r in results)
    return {
        "suite": suite["name"],
        "suite_file": suite.get("_file"),
        "success": failed == 0,
        "evaluated": len(results),
        "failed": failed,
        "parameters": params,
        "expectations": results,
    }
