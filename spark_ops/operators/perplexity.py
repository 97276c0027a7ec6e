"""Perplexity filter: drop text that a character n-gram model the platform trained (``spark_ops/lm.py``,
``forgeflow lm train``) finds improbable -- garbled, shuffled, machine-spun or foreign-alphabet noise.

The model file travels to the executors with ``SparkContext.addFile`` (a lake ``s3://`` model is fetched
to the state directory once), and each Python worker loads it once; scoring is one Arrow UDF call per
batch (numpy, no Python per character).

Limits are per language, because character perplexities of Chinese and English are not comparable: by
default ``reference_factor`` x the model's held-out reference quantile (``reference_quantile``) for the
record's language; ``max_perplexity`` sets absolute limits instead (one number, or per language). Records
in a language with no limit, or shorter than ``min_chars`` normalised characters, are kept unscored and
counted in the step's ``unscored`` counter. With ``action: tag`` nothing is dropped: records get CCNet-style
quality buckets in ``meta.tags`` instead (``ppl:head`` / ``ppl:middle`` / ``ppl:tail``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import arrow_udf

from spark_ops import lm
from spark_ops.operators.base import KEEP, NOTE, STAT, Operator, OperatorContext, OperatorParams, register
from spark_ops.operators.filters import _joined
from spark_ops.operators.tagging import META, _tagged
from tasks.settings import PROJECT_ROOT, get_settings
from tasks.storage import Lake, local_path, to_uri

log = logging.getLogger("forgeflow.spark_ops.perplexity")
Language = Literal["zh", "en", "other"]
_PPL = "_perplexity"
_OUT = T.StructType(
    [
        T.StructField("perplexity", T.DoubleType()),
        T.StructField("language", T.StringType()),
        T.StructField("limit", T.DoubleType()),
    ]
)


def _resolve(model: str) -> str:
    """A lake URI for ``model``: s3:// and file:// as given, other paths from the project root."""
    if "://" in model:
        return model
    p = Path(model)
    return to_uri(p if p.is_absolute() else PROJECT_ROOT / p)


_SHIPPED: dict[tuple[int, str], tuple[str, dict[str, Any]]] = {}  # (SparkContext, s3 model) -> name, header


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def ship_model(spark: Any, model: str) -> tuple[str, dict[str, Any]]:
    """Make the model file available on every executor: its name for ``SparkFiles.get``, and its header.

    The name carries a digest (of the content for an s3:// model, downloaded once per Spark application; of
    path, size and mtime for a local one), so two models with one file name, or a retrained model at the
    same place, never meet under one name (SparkFiles names are per application).
    """
    uri = _resolve(model)
    key = (id(spark.sparkContext), uri)
    if key in _SHIPPED:  # only s3:// models are remembered: a local file is re-checked (stat) every time
        return _SHIPPED[key]
    cache = get_settings().path("cache", "lm")
    basename = uri.rstrip("/").rsplit("/", 1)[-1]
    if uri.startswith("s3://"):
        download = cache / f"download-{os.getpid()}-{basename}"
        with Lake.from_settings().fetch(uri) as fetched:
            shutil.copyfile(fetched, download)
        source, digest = download, _digest_file(download)
    else:
        source = local_path(uri)
        st = source.stat()
        digest = hashlib.sha256(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    name = f"{digest}-{basename}"
    shipped = cache / name
    if not shipped.exists():
        try:
            os.link(source, f"{shipped}.part")
        except OSError:
            shutil.copyfile(source, f"{shipped}.part")
        os.replace(f"{shipped}.part", shipped)
    if source.name.startswith("download-"):
        source.unlink(missing_ok=True)
    header = lm.read_header(shipped)
    spark.sparkContext.addFile(str(shipped))
    if uri.startswith("s3://"):
        _SHIPPED[key] = (name, header)
    return name, header


def limits_for(reference: dict[str, dict[str, float]], params: PerplexityFilter.Params) -> dict[str, float]:
    """The perplexity limit of every language that has one (see the module docstring)."""
    out: dict[str, float] = {}
    absolute = params.max_perplexity
    for language in lm.LANGUAGES:
        if isinstance(absolute, dict) and language in absolute:
            out[language] = float(absolute[language])
        elif absolute is not None and not isinstance(absolute, dict):
            out[language] = float(absolute)
        elif params.reference_factor is not None:
            ref = reference.get(language, {}).get(params.reference_quantile)
            if ref is not None:
                out[language] = params.reference_factor * ref
    return out


def perplexity_udf(model_name: str, limits: dict[str, float], min_chars: int) -> Any:
    """Arrow UDF ``string -> struct<perplexity, language, limit>`` (perplexity null: too short to score;
    limit null: the language has none)."""

    def perplexity(text: pa.Array) -> pa.Array:
        from pyspark import SparkFiles

        model = lm.load(SparkFiles.get(model_name))
        ppl, language = model.score(text.to_pylist(), min_chars)
        limit = np.array([limits.get(x, np.nan) for x in language], dtype=np.float64)
        return pa.StructArray.from_arrays(
            [
                pa.array(ppl, pa.float64(), mask=~np.isfinite(ppl)),
                pa.array(language.tolist(), pa.string()),
                pa.array(limit, pa.float64(), mask=np.isnan(limit)),
            ],
            fields=list(_OUT_FIELDS),
        )

    perplexity.__annotations__ = {"text": pa.Array, "return": pa.Array}
    return arrow_udf(_OUT)(perplexity)  # type: ignore[call-overload]


_OUT_FIELDS = (
    pa.field("perplexity", pa.float64()),
    pa.field("language", pa.string()),
    pa.field("limit", pa.float64()),
)


@register
class PerplexityFilter(Operator):
    """Drop records whose character n-gram perplexity is above their language's limit."""

    name = "perplexity_filter"
    row_local = True

    @property
    def fusable(self) -> bool:
        return False  # an Arrow UDF: runs as a step of its own (see Operator.fusable)

    class Params(OperatorParams):
        model: str = Field(
            description="The n-gram model file (forgeflow lm train): a path (relative: from the project "
            "root), file:// or s3:// URI."
        )
        max_perplexity: float | dict[Language, float] | None = Field(
            default=None,
            description="Absolute limit for every language, or per language (zh, en, other); languages left "
            "out of a mapping use the reference limit.",
        )
        reference_quantile: Literal["p50", "p90", "p95", "p99"] = Field(
            default="p99",
            description="Which perplexity quantile of the model's held-out reference texts the limit scales.",
        )
        reference_factor: float | None = Field(
            default=1.5,
            gt=0,
            description="Limit = this x the reference quantile of the record's language (null: no "
            "reference limits, only max_perplexity).",
        )
        action: Literal["filter", "tag"] = Field(
            default="filter",
            description="filter: drop records over the limit; tag: keep every record and add ppl:head / "
            "ppl:middle / ppl:tail to meta.tags (up to the reference p50, p90, above), for mixing by label.",
        )
        min_chars: int = Field(
            default=50,
            ge=1,
            description="Texts with fewer normalised characters are kept unscored (too short to judge).",
        )

        @field_validator("max_perplexity")
        @classmethod
        def _positive(cls, v: Any) -> Any:
            values = v.values() if isinstance(v, dict) else [] if v is None else [v]
            if any(x <= 0 for x in values):
                raise ValueError("perplexity limits must be > 0")
            return v

        @field_validator("model")
        @classmethod
        def _model_exists(cls, v: str) -> str:
            uri = _resolve(v)
            if uri.startswith("file://") and not local_path(uri).is_file():
                raise ValueError(
                    f"{v!r} not found (looked at {local_path(uri)}); train one with `forgeflow lm train`"
                )
            return v

    params: Params

    def writes(self, ctx: OperatorContext) -> tuple[str, ...]:
        return (META,) if self.params.action == "tag" else ()

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        name, header = ship_model(df.sparkSession, self.params.model)
        reference = header["reference"]
        limits = limits_for(reference, self.params) if self.params.action == "filter" else {}
        log.info("perplexity_filter: model %s, %s", self.params.model, limits or f"tags from {reference}")
        udf = perplexity_udf(name, limits, self.params.min_chars)
        out = df.withColumn(_PPL, udf(_joined(df, self.columns(ctx))))
        m = F.col(_PPL)
        if self.params.action == "tag":
            return self._tag(out, m, reference).drop(_PPL)
        unscored = m["perplexity"].isNull() | m["limit"].isNull()
        out = out.withColumns(
            {
                KEEP: unscored | (m["perplexity"] <= m["limit"]),
                NOTE: F.when(
                    ~unscored & (m["perplexity"] > m["limit"]),
                    F.concat(
                        F.lit("perplexity "),
                        F.format_number(m["perplexity"], 1),
                        F.lit(" > "),
                        F.format_number(m["limit"], 1),
                        F.lit(" ("),
                        m["language"],
                        F.lit(")"),
                    ),
                ),
                STAT + "unscored": unscored.cast("long"),
            }
        )
        return out.drop(_PPL)

    def _tag(self, df: DataFrame, m: Column, reference: dict[str, dict[str, float]]) -> DataFrame:
        """``ppl:head`` up to the language's reference median, ``ppl:middle`` up to its p90, else
        ``ppl:tail`` (CCNet's buckets, here relative to the reference texts); no tag when unscored."""

        def bound(quantile: str) -> Column:
            parts = [F.when(m["language"] == lang, F.lit(q[quantile])) for lang, q in reference.items()]
            return F.coalesce(*parts) if parts else F.lit(None).cast("double")

        head, middle = bound("p50"), bound("p90")
        ppl = m["perplexity"]
        unscored = ppl.isNull() | head.isNull()
        bucket = (
            F.when(unscored, F.lit(None).cast("string"))
            .when(ppl <= head, F.lit("ppl:head"))
            .when(ppl <= middle, F.lit("ppl:middle"))
            .otherwise(F.lit("ppl:tail"))
        )
        tagged = _tagged(df, F.when(~unscored, F.array(bucket)), "ppl:")
        return tagged.withColumn(STAT + "unscored", unscored.cast("long"))
