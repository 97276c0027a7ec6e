"""Quality of a dataset version: statistics with charts, and its Great Expectations suite -- an engine.

    python -m spark_ops.quality SPEC_URI

``SPEC_URI`` holds a :class:`tasks.specs.QualitySpec`. The engine validates the version with its usage's
suite (:mod:`spark_ops.expectations`), computes the report (:func:`quality_report`) and writes
``report.json`` and ``report.html`` (self-contained, inline SVG charts) under ``out_uri``; ``result.json``
carries the compact summary and the suite result that :func:`tasks.quality.gate` decides on.

The statistics come from one Spark pass over the records that computes, per record, only small values
(lengths, token counts, PII counts per type, emptiness flags, language, a content hash) -- the text is
read once and never collected. That narrow frame is persisted and then aggregated: once for everything
scalar (counts, sums, percentiles, exact power-of-two histograms, languages, PII, empty fields), once
grouped by content hash for duplicates, plus a few ``ORDER BY id LIMIT k`` look-ups for example ids.

Tokens: with ``tokenizer`` (a Hugging Face tokenizer directory or ``tokenizer.json``) each text is
encoded with the ``tokenizers`` library, special tokens excluded; the tokenizer JSON is broadcast, so
executors need no access to the file. Without one, an approximation: every CJK character (Han, kana,
Hangul) is one token, and so is every run of other letters and digits (a word); punctuation and spaces
count nothing. It is a rough, tokenizer-free size, not what any model sees.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import TEXT_COLUMNS, content_columns, text_length, text_values
from spark_ops.operators.base import OperatorContext
from spark_ops.operators.dedupe import content_key
from spark_ops.operators.tagging import LanguageTagger
from tasks.pii import ALL_TYPES, PiiType, ScanConfig, desensitize_text
from tasks.specs import QualitySpec, Usage

if TYPE_CHECKING:
    import pandas as pd
    from pyspark import Broadcast
    from pyspark.sql import SparkSession

log = logging.getLogger("forgeflow.spark_ops")

REPORT_VERSION = 1
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PERCENTILES = (0.5, 0.9, 0.99)
# Power-of-two buckets: 0, [1, 2), [2, 4), ... [2^(N-2), inf); 2^23 characters is far beyond any record.
HIST_BUCKETS = 25
# Exact value counts of turns / answers per record: 0 .. ITEM_MAX - 1, then "ITEM_MAX or more".
ITEM_MAX = 12
LANGUAGES = ("zh", "en", "other")
BLANK_RE = r"^[\s\p{Z}]*$"
# The normalisation of exact_dedupe's default: lower-cased, whitespace runs collapsed.
DUPLICATE_KEY = "text columns joined, lower-cased, whitespace runs collapsed (as exact_dedupe)"

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0003134f"
APPROX_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
APPROXIMATION = "approximate: one token per CJK character and per run of other letters or digits"


class QualityError(ValueError):
    """Bad input to the quality report: a missing version, a tokenizer that does not load."""


def approx_tokens(text: str) -> int:
    """The tokenizer-free estimate: CJK characters + words of other scripts (see the module docstring)."""
    return sum(1 for _ in APPROX_TOKEN_RE.finditer(text))


# --------------------------------------------------------------------------------------- tokenizer


def load_tokenizer_json(path: str | Path) -> str:
    """The JSON of a Hugging Face tokenizer (a directory holding ``tokenizer.json``, or that file itself)."""
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise QualityError(
            f"tokenizer {path}: no tokenizer.json there; give a Hugging Face tokenizer directory or its "
            "tokenizer.json (only fast tokenizers have one)"
        )
    text = file.read_text(encoding="utf-8")
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a plain Exception on a bad file
        raise QualityError(f"tokenizer {file}: not a tokenizers JSON ({e})") from e
    return text


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(bc: Broadcast[str]) -> Any:
    key = bc.value  # a str caches its hash: the lookup costs nothing after the first batch
    tok = _TOKENIZERS.get(key)  # one parse per Python worker, not per batch
    if tok is None:
        from tokenizers import Tokenizer

        tok = _TOKENIZERS[key] = Tokenizer.from_str(key)
    return tok


# ------------------------------------------------------------------------------------- per record


def _scan_udf(tokens: bool, tokenizer: Broadcast[str] | None) -> Any:
    """A pandas UDF over a text column as ``array<string>``: ``struct<tokens: long, pii: array<long>>``.

    ``pii`` counts the desensitize detectors' validated matches per type of ``ALL_TYPES``, found exactly as
    the desensitize operator finds them (same order, checksums, look-arounds); nothing is rewritten.
    """
    import pandas as pd

    cfg = ScanConfig(ALL_TYPES, tuple((t, "placeholder") for t in ALL_TYPES), "")

    def quality_scan(batch: pd.Series) -> pd.DataFrame:
        out_tokens: list[int | None] = []
        out_pii: list[list[int]] = []
        strings: list[str] = []
        owners: list[int] = []
        for row, values in enumerate(batch):
            counts: dict[PiiType, int] = {}
            n = 0
            for v in values if values is not None else ():
                if v is None:
                    continue
                desensitize_text(v, cfg, counts)
                if tokens and tokenizer is None:
                    n += approx_tokens(v)
                elif tokens:
                    strings.append(v)
                    owners.append(row)
            out_tokens.append(n if tokens else None)
            out_pii.append([counts.get(t, 0) for t in ALL_TYPES])
        if strings:
            assert tokenizer is not None
            encoded = _tokenizer(tokenizer).encode_batch(strings, add_special_tokens=False)
            for row, enc in zip(owners, encoded, strict=True):
                out_tokens[row] = (out_tokens[row] or 0) + len(enc.ids)
        return pd.DataFrame({"tokens": pd.array(out_tokens, dtype="Int64"), "pii": out_pii})

    out_type = T.StructType(
        [T.StructField("tokens", T.LongType()), T.StructField("pii", T.ArrayType(T.LongType()))]
    )
    quality_scan.__annotations__ = {"batch": pd.Series, "return": pd.DataFrame}
    return F.pandas_udf(out_type)(quality_scan)  # type: ignore[call-overload]


def _is_blank(s: Column) -> Column:
    return s.rlike(BLANK_RE)


def record_features(df: DataFrame, usage: Usage, tokenizer: Broadcast[str] | None = None) -> DataFrame:
    """One narrow row per record: ``id``, per content column ``<c>__chars``, ``__tokens`` (text columns),
    ``__pii`` (counts per type of ALL_TYPES), ``__missing``, ``__empty``, ``__blank`` and, for lists,
    ``__items`` and ``__blank_items``; ``record__chars``/``__tokens`` when there are several text columns;
    ``lang`` (tag_language's rule) and ``dup_hash`` (exact_dedupe's normalised key, hashed)."""
    types = {f.name: f.dataType for f in df.schema.fields}
    text_cols = TEXT_COLUMNS[usage]
    lang = LanguageTagger().tags(df, OperatorContext(usage=usage))[0]
    out: list[Column] = [
        F.col("id"),
        F.regexp_replace(lang, "^lang:", "").alias("lang"),
        F.unhex(F.sha2(content_key(df, text_cols), 256)).alias("dup_hash"),
    ]
    for c in content_columns(usage):
        dtype = types[c]
        counted = c in text_cols
        scan = _scan_udf(counted, tokenizer)(text_values(c, dtype))
        out += [scan["pii"].alias(f"{c}__pii"), F.col(c).isNull().alias(f"{c}__missing")]
        if counted:
            out += [text_length(c, dtype).alias(f"{c}__chars"), scan["tokens"].alias(f"{c}__tokens")]
        if isinstance(dtype, T.StringType):
            out += [
                (F.col(c) == "").alias(f"{c}__empty"),
                ((F.col(c) != "") & _is_blank(F.col(c))).alias(f"{c}__blank"),
            ]
        else:
            values = text_values(c, dtype)
            items = F.coalesce(F.size(F.col(c)), F.lit(0))
            blank_items = F.size(F.filter(values, lambda s: s.isNull() | _is_blank(s)))
            out += [
                (F.size(F.col(c)) == 0).alias(f"{c}__empty"),
                ((F.size(F.col(c)) > 0) & (blank_items == F.size(F.col(c)))).alias(f"{c}__blank"),
                items.alias(f"{c}__items"),
                F.coalesce(blank_items, F.lit(0)).alias(f"{c}__blank_items"),
            ]
    feats = df.select(*out)
    if len(text_cols) > 1:
        chars = sum((F.col(f"{c}__chars") for c in text_cols[1:]), F.col(f"{text_cols[0]}__chars"))
        tokens = sum((F.col(f"{c}__tokens") for c in text_cols[1:]), F.col(f"{text_cols[0]}__tokens"))
        feats = feats.withColumns({"record__chars": chars, "record__tokens": tokens})
    return feats


# ------------------------------------------------------------------------------------- aggregation


def _bucket(v: Column) -> Column:
    """Power-of-two bucket of a non-negative length: 0 -> 0, [2^(k-1), 2^k) -> k, capped."""
    k = F.when(v <= 0, F.lit(0)).otherwise(F.floor(F.log2(v)).cast("int") + 1)
    return F.least(k, F.lit(HIST_BUCKETS - 1))


def _bucket_range(k: int) -> tuple[int, int | None]:
    """[lo, hi) of bucket ``k``; hi None for the open last bucket."""
    if k == 0:
        return 0, 1
    return 2 ** (k - 1), (2**k if k < HIST_BUCKETS - 1 else None)


def _distribution_aggs(name: str) -> list[Column]:
    v = F.col(name)
    b = _bucket(v)
    return [
        F.sum(v).alias(f"{name}:sum"),
        F.min(v).alias(f"{name}:min"),
        F.max(v).alias(f"{name}:max"),
        F.percentile_approx(v, list(PERCENTILES), 10_000).alias(f"{name}:pct"),
        F.array(*[F.count_if(b == k) for k in range(HIST_BUCKETS)]).alias(f"{name}:hist"),
    ]


def _distribution(row: Any, name: str, n: int) -> dict[str, Any]:
    total = int(row[f"{name}:sum"] or 0)
    pct = row[f"{name}:pct"] or [0] * len(PERCENTILES)
    hist = list(row[f"{name}:hist"])
    used = [k for k, c in enumerate(hist) if c]
    buckets = []
    for k in range(used[0], used[-1] + 1) if used else ():
        lo, hi = _bucket_range(k)
        buckets.append({"lo": lo, "hi": hi, "count": int(hist[k])})
    return {
        "sum": total,
        "mean": round(total / n, 2) if n else 0.0,
        "min": int(row[f"{name}:min"] or 0),
        **{f"p{round(q * 100)}": int(v) for q, v in zip(PERCENTILES, pct, strict=True)},
        "max": int(row[f"{name}:max"] or 0),
        "histogram": buckets,
    }


def _share(count: int, n: int) -> float:
    return round(count / n, 6) if n else 0.0


def _main_aggregates(feats: DataFrame, usage: Usage) -> tuple[list[Column], list[str], list[str]]:
    text_cols = TEXT_COLUMNS[usage]
    metrics = [f"{c}__{kind}" for c in text_cols for kind in ("chars", "tokens")]
    if "record__chars" in feats.columns:
        metrics += ["record__chars", "record__tokens"]
    list_cols = [c[: -len("__items")] for c in feats.columns if c.endswith("__items")]
    aggs = [F.count(F.lit(1)).alias("n")]
    for m in metrics:
        aggs += _distribution_aggs(m)
    for c in list_cols:
        items = F.col(f"{c}__items")
        aggs += [
            F.sum(items).alias(f"{c}:items_sum"),
            F.min(items).alias(f"{c}:items_min"),
            F.max(items).alias(f"{c}:items_max"),
            F.array(*[F.count_if(F.least(items, F.lit(ITEM_MAX)) == k) for k in range(ITEM_MAX + 1)]).alias(
                f"{c}:items_hist"
            ),
            F.sum(F.col(f"{c}__blank_items")).alias(f"{c}:blank_items"),
        ]
    aggs += [F.count_if(F.col("lang") == lang).alias(f"lang:{lang}") for lang in LANGUAGES]
    for c in content_columns(usage):
        pii = F.col(f"{c}__pii")
        aggs += [
            F.array(*[F.sum(pii[i]) for i in range(len(ALL_TYPES))]).alias(f"{c}:pii"),
            F.array(*[F.count_if(pii[i] > 0) for i in range(len(ALL_TYPES))]).alias(f"{c}:pii_records"),
        ]
        for flag in ("missing", "empty", "blank"):
            aggs.append(F.count_if(F.col(f"{c}__{flag}")).alias(f"{c}:{flag}"))
    for i, t in enumerate(ALL_TYPES):
        aggs.append(F.count_if(_pii_any(usage, i)).alias(f"pii_records:{t}"))
    any_pii = None
    for i in range(len(ALL_TYPES)):
        any_pii = _pii_any(usage, i) if any_pii is None else any_pii | _pii_any(usage, i)
    aggs.append(F.count_if(any_pii).alias("pii_records:any"))
    return aggs, metrics, list_cols


def _pii_any(usage: Usage, i: int) -> Column:
    hit = None
    for c in content_columns(usage):
        h = F.col(f"{c}__pii")[i] > 0
        hit = h if hit is None else hit | h
    assert hit is not None
    return hit


def _example_ids(feats: DataFrame, cond: Column, k: int) -> list[str]:
    if k <= 0:
        return []
    return [r["id"] for r in feats.filter(cond).select("id").orderBy("id").limit(k).collect()]


def compute_statistics(feats: DataFrame, usage: Usage, examples: int = 5) -> dict[str, Any]:
    """The statistics part of the report, from :func:`record_features` (persist it first: read several times)."""
    aggs, metrics, list_cols = _main_aggregates(feats, usage)
    row = feats.agg(*aggs).first()
    assert row is not None
    n = int(row["n"])

    lengths: dict[str, dict[str, Any]] = {}
    for m in metrics:
        col, kind = m.split("__")
        lengths.setdefault(col, {})[kind] = _distribution(row, m, n)

    items = {}
    for c in list_cols:
        hist = [int(v) for v in row[f"{c}:items_hist"]]
        last = max((k for k, v in enumerate(hist) if v), default=0)
        items[c] = {
            "what": "answers per record" if c == "answers" else "turns per record",
            "min": int(row[f"{c}:items_min"] or 0),
            "max": int(row[f"{c}:items_max"] or 0),
            "mean": round(int(row[f"{c}:items_sum"] or 0) / n, 3) if n else 0.0,
            "histogram": [
                {"value": k, "label": f"{k}+" if k == ITEM_MAX else str(k), "count": hist[k]}
                for k in range(last + 1)
            ],
            "blank_items": int(row[f"{c}:blank_items"] or 0),
        }

    languages = {
        lang: {"count": int(row[f"lang:{lang}"]), "share": _share(int(row[f"lang:{lang}"]), n)}
        for lang in LANGUAGES
    }

    by_type: dict[str, dict[str, Any]] = {}
    by_column: dict[str, dict[str, int]] = {}
    for c in content_columns(usage):
        counts = [int(v or 0) for v in row[f"{c}:pii"]]
        by_column[c] = {t: v for t, v in zip(ALL_TYPES, counts, strict=True) if v}
    for i, t in enumerate(ALL_TYPES):
        total = sum(int(row[f"{c}:pii"][i] or 0) for c in content_columns(usage))
        if total:
            by_type[t] = {
                "count": total,
                "records": int(row[f"pii_records:{t}"]),
                "examples": _example_ids(feats, _pii_any(usage, i), examples),
            }
    pii_left = {
        "types_checked": list(ALL_TYPES),
        "total": sum(v["count"] for v in by_type.values()),
        "records": int(row["pii_records:any"]),
        "share": _share(int(row["pii_records:any"]), n),
        "by_type": by_type,
        "by_column": by_column,
    }

    empty = {}
    for c in content_columns(usage):
        missing, empt, blank = (int(row[f"{c}:{f}"]) for f in ("missing", "empty", "blank"))
        empty[c] = {
            "missing": missing,
            "empty": empt,
            "blank": blank,
            "total": missing + empt + blank,
            "share": _share(missing + empt + blank, n),
        }

    duplicates = _duplicates(feats, n, examples)
    token_total = lengths.get("record", lengths[TEXT_COLUMNS[usage][0]])["tokens"]["sum"]
    char_total = lengths.get("record", lengths[TEXT_COLUMNS[usage][0]])["chars"]["sum"]
    return {
        "records": n,
        "chars": char_total,
        "tokens": token_total,
        "lengths": lengths,
        "items": items,
        "languages": languages,
        "duplicates": duplicates,
        "pii_left": pii_left,
        "empty": empty,
    }


def _duplicates(feats: DataFrame, n: int, examples: int) -> dict[str, Any]:
    groups = (
        feats.groupBy("dup_hash")
        .agg(F.count(F.lit(1)).alias("copies"), F.min("id").alias("first"), F.max("id").alias("last"))
        .filter(F.col("copies") > 1)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        row = groups.agg(F.count(F.lit(1)).alias("groups"), F.sum(F.col("copies") - 1).alias("extra")).first()
        top = groups.orderBy(F.desc("copies"), "first").limit(examples).collect() if examples else []
    finally:
        groups.unpersist()
    assert row is not None
    extra = int(row["extra"] or 0)
    return {
        "key": DUPLICATE_KEY,
        "count": extra,
        "share": _share(extra, n),
        "groups": int(row["groups"]),
        "examples": [
            {"copies": int(r["copies"]), "ids": list(dict.fromkeys([r["first"], r["last"]]))} for r in top
        ],
    }


# ------------------------------------------------------------------------------------------ report


def read_version(spark: SparkSession, version_dir: str) -> DataFrame:
    """The records of a version directory (``data/*.parquet``); a clear error when there are none."""
    data = Path(version_dir) / "data"
    if "://" not in version_dir and not any(data.glob("*.parquet")):
        raise QualityError(f"{version_dir}: no data/*.parquet -- not a dataset version directory")
    return spark.read.parquet(str(data) if "://" not in version_dir else f"{version_dir}/data")


def quality_report(
    spark: SparkSession,
    version_dir: str,
    usage: str,
    out_dir: str,
    *,
    tokenizer: str | None = None,
    examples: int = 5,
    validation: dict[str, Any] | None = None,
    out_uri: str | None = None,
    version_uri: str | None = None,
) -> dict[str, Any]:
    """Compute the statistics of the version in ``version_dir`` and write ``report.json`` + ``report.html``.

    ``tokenizer``: a local tokenizer directory or tokenizer.json (None: the approximation). ``validation``:
    a suite result (:func:`spark_ops.expectations.validate_version`) to show in the report. ``out_uri`` and
    ``version_uri``: the lake URIs of ``out_dir`` and ``version_dir`` when those are local copies (the
    engine stages and fetches for S3); the report records the URIs.
    Returns the report (what report.json holds).
    """
    from spark_ops.quality_html import render_report
    from tasks.storage import to_uri

    if usage not in TEXT_COLUMNS:
        raise QualityError(f"usage {usage!r} is not one of {', '.join(TEXT_COLUMNS)}")
    started = time.monotonic()
    tok_json = load_tokenizer_json(tokenizer) if tokenizer else None
    df = read_version(spark, version_dir)
    bc = spark.sparkContext.broadcast(tok_json) if tok_json is not None else None
    feats = record_features(df, usage, bc).persist(StorageLevel.MEMORY_AND_DISK)  # type: ignore[arg-type]
    try:
        stats = compute_statistics(feats, usage, examples)  # type: ignore[arg-type]
    finally:
        feats.unpersist()
        if bc is not None:
            bc.destroy()
    base = (out_uri or to_uri(out_dir)).rstrip("/")
    report = {
        "report_version": REPORT_VERSION,
        "version_dir": version_uri or version_dir,
        "usage": usage,
        "tokenizer": {"kind": "tokenizers", "path": str(tokenizer)}
        if tokenizer
        else {"kind": "approximate", "description": APPROXIMATION},
        **stats,
        "validation": validation,
        "files": {"json": f"{base}/{REPORT_JSON}", "html": f"{base}/{REPORT_HTML}"},
        "seconds": round(time.monotonic() - started, 3),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / REPORT_HTML).write_text(render_report(report), encoding="utf-8")
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth keeping in the catalogue next to the suite result."""
    return {
        "records": report["records"],
        "chars": report["chars"],
        "tokens": report["tokens"],
        "tokenizer": report["tokenizer"]["kind"],
        "languages": {k: v["share"] for k, v in report["languages"].items()},
        "duplicates": report["duplicates"]["count"],
        "pii_left": report["pii_left"]["total"],
        "pii_records": report["pii_left"]["records"],
        "empty": {c: v["total"] for c, v in report["empty"].items()},
    }


# ------------------------------------------------------------------------------------------ engine


def run(spec: QualitySpec) -> dict[str, Any]:
    """Validate the version with its suite, write the report; returns what result.json records."""
    from spark_ops import expectations as gxs
    from spark_ops.session import build_session
    from tasks.records import MANIFEST
    from tasks.settings import get_settings
    from tasks.specs import slug
    from tasks.storage import Lake, to_uri

    started = time.monotonic()
    lake = Lake.from_settings()
    version_uri = to_uri(spec.version_uri).rstrip("/")
    out_uri = to_uri(spec.out_uri).rstrip("/")
    # Everything that can be wrong with the request fails before the JVM starts.
    suite_uri = to_uri(spec.suite_uri) if spec.suite_uri else None
    with ExitStack() as stack:
        suite_path = stack.enter_context(lake.fetch(suite_uri)) if suite_uri else None
        suite = gxs.load_suite(spec.usage, suite_path)
        parameters = gxs.suite_parameters(suite, spec.suite_parameters)
        if not lake.exists(f"{version_uri}/{MANIFEST}"):
            raise QualityError(f"{version_uri} has no {MANIFEST}: not a finished dataset version")
        declared = lake.read_json(f"{version_uri}/{MANIFEST}").get("usage")
        if declared is not None and declared != spec.usage:
            raise QualityError(
                f"{version_uri} is a {declared} version, not {spec.usage}: set usage to {declared}"
            )
        version_dir = stack.enter_context(lake.fetch(version_uri))
        tokenizer = str(stack.enter_context(lake.fetch(to_uri(spec.tokenizer)))) if spec.tokenizer else None

        from pyspark import SparkContext

        owned = SparkContext._active_spark_context is None
        spark = build_session(
            spec.spark, f"forgeflow-quality-{slug(spec.run_key)}", get_settings().spark_master
        )
        if owned:
            stack.callback(spark.stop)
        out_dir = stack.enter_context(lake.stage(out_uri))
        timings = {"setup": round(time.monotonic() - started, 3)}
        t = time.monotonic()
        validation = gxs.validate_version(
            spark, str(version_dir), spec.usage, suite, parameters, examples=spec.examples
        )
        timings["validation"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        report = quality_report(
            spark,
            str(version_dir),
            spec.usage,
            str(out_dir),
            tokenizer=tokenizer,
            examples=spec.examples,
            validation=validation,
            out_uri=out_uri,
            version_uri=version_uri,
        )
        timings["report"] = round(time.monotonic() - t, 3)
    log.info(
        "quality of %s: %d records, suite %s (%d of %d expectations failed)",
        version_uri,
        report["records"],
        "passed" if validation["success"] else "FAILED",
        validation["failed"],
        validation["evaluated"],
    )
    return {
        "version_uri": version_uri,
        "usage": spec.usage,
        "report_uri": report["files"]["json"],
        "html_uri": report["files"]["html"],
        "summary": summary(report),
        "validation": validation,
        "timings": {**timings, "total": round(time.monotonic() - started, 3)},
    }


def main(argv: list[str] | None = None) -> int:
    from tasks.engine import engine_main

    return engine_main(QualitySpec, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
