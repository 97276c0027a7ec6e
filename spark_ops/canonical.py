"""Canonical record schemas (tasks.records) as Spark types, and the column helpers readers and operators share.

Text lives in three shapes: a string (``text``, ``target``, ``system``), a list of strings (``context``)
and a list of scored answers (``answers``). The helpers here apply one string function to any of them, so
an operator is written once against a single string column.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from tasks.records import columns
from tasks.specs import Usage

META_TYPE = T.StructType(
    [T.StructField("source", T.StringType()), T.StructField("tags", T.ArrayType(T.StringType()))]
)
ANSWER_TYPE = T.StructType(
    [
        T.StructField("text", T.StringType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("rank", T.IntegerType()),
    ]
)
FIELD_TYPES: dict[str, T.DataType] = {
    "id": T.StringType(),
    "text": T.StringType(),
    "system": T.StringType(),
    "context": T.ArrayType(T.StringType()),
    "target": T.StringType(),
    "answers": T.ArrayType(ANSWER_TYPE),
    "image": T.StringType(),
    "meta": META_TYPE,
}
# Columns operators clean by default: the content a model learns from (the system prompt is configuration).
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "pretrain": ("text",),
    "sft": ("context", "target"),
    "model_test": ("context", "target"),
    "rl": ("context", "target"),
    "reward_model": ("context", "answers"),
}
# Input position (input index, file, 1-based line or record number); carried through operators so that
# output order and dedupe tie-breaks follow the input, then dropped on write.
POSITION = "_pos"
ID_HEX_CHARS = 32


def content_columns(usage: Usage, modality: str = "text") -> tuple[str, ...]:
    """Every content column of ``usage`` (text, and the image of vision data), i.e. all but ``id`` and ``meta``."""
    return tuple(c for c in columns(usage, modality) if c not in ("id", "meta"))


def schema(usage: Usage, modality: str = "text") -> T.StructType:
    """The Spark schema of ``usage``'s canonical records."""
    return T.StructType(
        [T.StructField(c, FIELD_TYPES[c], nullable=c != "id") for c in columns(usage, modality)]
    )


def record_id(usage: Usage, modality: str = "text") -> Column:
    """A stable content hash: sha256 hex prefix of the canonical content as JSON (meta excluded)."""
    content = F.struct(*[F.col(c) for c in content_columns(usage, modality)])
    return F.substring(F.sha2(F.to_json(content), 256), 1, ID_HEX_CHARS)


def map_text(column: str, dtype: T.DataType, fn: Callable[[Column], Column]) -> Column:
    """Apply a string -> string expression to a text column of any canonical shape."""
    c = F.col(column)
    if isinstance(dtype, T.StringType):
        return fn(c)
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StringType):
        return F.transform(c, fn)
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StructType):
        return F.transform(c, lambda a: a.withField("text", fn(a["text"])))
    raise TypeError(f"column {column!r} of type {dtype.simpleString()} holds no text")


def map_text_vectorised(column: str, dtype: T.DataType, fn: Callable[[str], str]) -> Column:
    """Apply a Python ``str -> str`` function to a text column of any shape, in Arrow batches (pandas UDFs).

    For what Spark SQL cannot express (NFKC, OpenCC, calendar-checked dates, full HTML unescaping). A
    pandas UDF cannot run inside ``transform``, so lists are handed over whole and answers are rebuilt
    with ``zip_with``. ``fn`` must be picklable (a module-level function or a closure over plain values).
    """

    def _one(v: str | None) -> str | None:
        return None if v is None else fn(v)

    def _strings(s: pd.Series) -> pd.Series:
        return s.map(_one)

    def _lists(s: pd.Series) -> pd.Series:
        return s.map(lambda arr: None if arr is None else [_one(v) for v in arr])

    c = F.col(column)
    if isinstance(dtype, T.StringType):
        return F.pandas_udf(_strings, T.StringType())(c)  # type: ignore[call-overload]
    lists = F.pandas_udf(_lists, T.ArrayType(T.StringType()))  # type: ignore[call-overload]
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StringType):
        return lists(c)
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StructType):
        new = lists(F.transform(c, lambda a: a["text"]))
        return F.zip_with(c, new, lambda a, t: a.withField("text", t))
    raise TypeError(f"column {column!r} of type {dtype.simpleString()} holds no text")


def text_values(column: str, dtype: T.DataType) -> Column:
    """A text column as ``array<string>`` (one element for a string column)."""
    c = F.col(column)
    if isinstance(dtype, T.StringType):
        return F.array(c)
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StringType):
        return c
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StructType):
        return F.transform(c, lambda a: a["text"])
    raise TypeError(f"column {column!r} of type {dtype.simpleString()} holds no text")


def text_length(column: str, dtype: T.DataType) -> Column:
    """Characters (code points) in a text column; turns of a list are summed, null counts as 0."""
    values = text_values(column, dtype)
    return F.aggregate(
        F.coalesce(values, F.array().cast("array<string>")),
        F.lit(0).cast("long"),
        lambda acc, s: acc + F.coalesce(F.length(s), F.lit(0)),
    )


def joined_text(column: str, dtype: T.DataType, sep: str = "\u0001") -> Column:
    """A text column as one string; list elements are joined with a separator that text does not contain."""
    return F.coalesce(F.array_join(text_values(column, dtype), sep, ""), F.lit(""))
