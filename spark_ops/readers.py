"""Import raw files onto the canonical record schema of a usage, with a quarantine for bad records.

Every input goes through the same three steps, all in Spark:

1. *Container*: JSON Lines / text lines, JSON arrays, CSV or Parquet become rows of (file, 1-based line or
   record number, parsed JSON as a VARIANT, parse error).
2. *Shape*: canonical records, Alpaca, ShareGPT or OpenAI chat are mapped onto the usage's columns, with a
   type check per field, so a bad record gets a reason that names the field ("wrong type of field target:
   expected a string, got number").
3. *Split*: records with a reason go to the quarantine, the others get an ``id`` (content hash) and
   ``meta`` (source label, tags).

Counts reconcile by construction: every non-blank line or array element is exactly one accepted or one
quarantined record. Blank lines are not records.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_ops.canonical import POSITION, content_columns, record_id
from tasks.records import COLUMNS, MANIFEST
from tasks.specs import InputSource, Usage

Container = Literal["lines", "array", "csv", "parquet", "text"]
Shape = Literal["canonical", "alpaca", "sharegpt", "openai"]

RAW_CHARS = 1000
# The input record's own id (when asked for): exports keep it, the canonical id stays the content hash.
SOURCE_ID = "_source_id"
SUFFIX_CONTAINERS: dict[str, Container | None] = {
    ".jsonl": "lines",
    ".ndjson": "lines",
    ".json": None,  # a JSON array or JSON Lines: decided by the first character
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
}
COMPRESSED = (".gz", ".bz2")
CHAT_USAGES = ("sft", "model_test", "rl")
SHAPE_FIELDS: dict[Shape, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": ("conversations", "system"),
    "openai": ("messages",),
}
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


class ReaderError(ValueError):
    """An input that cannot be read at all (missing path, unknown format, bad field_map)."""


@dataclass(frozen=True)
class InputFile:
    path: Path
    display: str
    container: Container


@dataclass(frozen=True)
class ResolvedInput:
    """One InputSource with its files listed and their containers decided (no Spark yet)."""

    index: int
    source: InputSource
    shape: Shape
    files: tuple[InputFile, ...]

    @property
    def formats(self) -> list[str]:
        return sorted({f.container for f in self.files})


@dataclass(frozen=True)
class InputStats:
    uri: str
    format: str
    files: int
    records_in: int
    accepted: int
    quarantined: int


@dataclass
class Import:
    """The result of reading all inputs: accepted records, quarantined records, per-input counts."""

    accepted: DataFrame
    quarantine: DataFrame
    inputs: list[InputStats]
    cached: DataFrame

    def release(self) -> None:
        """Free the cached parsed records once accepted and quarantined records have been consumed."""
        self.cached.unpersist()

    @property
    def records_in(self) -> int:
        return sum(i.records_in for i in self.inputs)

    @property
    def quarantined(self) -> int:
        return sum(i.quarantined for i in self.inputs)

    @property
    def accepted_count(self) -> int:
        return sum(i.accepted for i in self.inputs)


# ---------------------------------------------------------------- resolving inputs (plain Python)


def _strip_compression(name: str) -> str:
    for ext in COMPRESSED:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _first_char(path: Path) -> str:
    """The first non-blank character of a file (BOM skipped): '[' means a JSON array."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(65536)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return text[:1]


def _container_of(path: Path, fmt: str, shape: Shape, label: str) -> Container:
    suffix = Path(_strip_compression(path.name)).suffix.lower()
    if fmt in ("csv", "parquet"):
        return fmt  # type: ignore[return-value]
    if fmt == "txt":
        return "text"
    if fmt == "jsonl":
        return "lines"
    if fmt == "json" or shape != "canonical":
        if suffix in (".jsonl", ".ndjson"):
            return "lines"
        return "array" if _first_char(path) == "[" else "lines"
    if suffix not in SUFFIX_CONTAINERS:
        raise ReaderError(
            f"{label}: cannot tell the format of {path.name} from its suffix {suffix or '(none)'!r}; "
            "set format to one of jsonl, json, csv, parquet, txt, alpaca, sharegpt, openai"
        )
    container = SUFFIX_CONTAINERS[suffix]
    if container is None:
        return "array" if _first_char(path) == "[" else "lines"
    return container


def _list_files(root: Path) -> list[Path]:
    """Files of an input directory: a dataset version's data/*.parquet, else every visible file."""
    if (root / MANIFEST).is_file() and (root / "data").is_dir():
        return sorted((root / "data").glob("*.parquet"))
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
    )


def _check_field_map(source: InputSource, usage: Usage, shape: Shape, label: str) -> None:
    allowed = SHAPE_FIELDS[shape] if shape != "canonical" else content_columns(usage)
    for key, value in source.field_map.items():
        if key not in allowed:
            raise ReaderError(
                f"{label}: field_map key {key!r} is not a field of {shape} records for usage {usage}; "
                f"use one of {', '.join(allowed)}"
            )
        if not value or '"' in value or "\\" in value:
            raise ReaderError(f"{label}: field_map[{key!r}] = {value!r} is not a usable field name")


def resolve_input(source: InputSource, usage: Usage, index: int, local: Path | None = None) -> ResolvedInput:
    """List the files of ``source`` and decide how to read each; raises ReaderError on unusable input.

    ``local`` is a local view of ``source.uri`` (the engine fetches lake URIs); by default the URI is read
    as a local path.
    """
    label = f"inputs[{index}] ({source.uri})"
    root = (
        local if local is not None else Path(urlparse(source.uri).path if "://" in source.uri else source.uri)
    )
    if not root.exists():
        raise ReaderError(f"{label}: does not exist")
    shape: Shape = source.format if source.format in SHAPE_FIELDS else "canonical"  # type: ignore[assignment]
    if shape != "canonical" and usage not in CHAT_USAGES:
        raise ReaderError(
            f"{label}: format {source.format} makes conversation records (system, context, target), "
            f"which usage {usage} cannot hold; use format jsonl/json with a field_map instead"
        )
    if source.format == "txt" and usage != "pretrain":
        raise ReaderError(
            f"{label}: format txt holds one document per line, which only makes pretrain records"
        )
    _check_field_map(source, usage, shape, label)
    paths = [root] if root.is_file() else _list_files(root)
    if not paths:
        raise ReaderError(f"{label}: the directory holds no data files")
    base = source.uri.rstrip("/")
    files = []
    for p in paths:
        display = base if root.is_file() else f"{base}/{p.relative_to(root).as_posix()}"
        container = _container_of(p, source.format, shape, label)
        if container == "text" and usage != "pretrain":
            raise ReaderError(f"{label}: {p.name} is plain text (one document per line): only usage pretrain")
        files.append(InputFile(p, display, container))
    return ResolvedInput(index, source, shape, tuple(files))


# ---------------------------------------------------------------- containers (Spark)


def _file_key(file_path: Column) -> Column:
    """Spark's file URI (``file:/a/b%20c.json``) as the absolute local path Python listed."""
    path = F.regexp_replace(file_path, r"^file:(//)?", "")
    return F.url_decode(F.regexp_replace(path, r"\+", "%2B"))  # url_decode reads '+' as a space


def _attach_files(df: DataFrame, files: tuple[InputFile, ...], numbered: bool) -> DataFrame:
    """Replace ``_file`` with the display name and file name; for line-oriented rows add the 1-based ``_line``.

    Rows of one file are contiguous and in file order within each Spark partition, and a file's splits
    sit in partitions in offset order, so a row's line = (rows of the file in earlier partitions) +
    (its position in this partition) + 1: zipWithIndex per file, without leaving the JVM. It costs one
    extra scan of the raw text (no parsing) to count rows per file and partition.
    """
    spark = df.sparkSession
    df = df.withColumn("_key", _file_key(F.col("_file")))
    if numbered:
        parts = (
            df.groupBy("_key", "_pid").agg(F.count(F.lit(1)).alias("n"), F.min("_mid").alias("m0")).collect()
        )
        offsets, seen = [], {}
        for r in sorted(parts, key=lambda r: (r["_key"], r["_pid"])):
            before = seen.get(r["_key"], 0)
            seen[r["_key"]] = before + r["n"]
            offsets.append((r["_key"], r["_pid"], int(r["m0"]) - before))
        table = spark.createDataFrame(offsets, "_key string, _pid int, _offset long")
        df = df.join(F.broadcast(table), ["_key", "_pid"])
        df = df.withColumn("_line", F.col("_mid") - F.col("_offset") + 1).drop("_mid", "_pid", "_offset")
    names = spark.createDataFrame(
        [(os.path.abspath(f.path), f.display, f.path.name) for f in files],
        "_key string, _display string, _name string",
    )
    # Left join: a path Spark spells differently keeps its URI as display name rather than losing rows.
    df = df.join(F.broadcast(names), ["_key"], "left")
    return df.withColumns(
        {
            "_display": F.coalesce("_display", "_file"),
            "_name": F.coalesce("_name", F.regexp_extract("_file", r"[^/]*$", 0)),
        }
    ).drop("_key", "_file")


def _scan_columns() -> list[Column]:
    return [
        F.col("_metadata.file_path").alias("_file"),
        F.spark_partition_id().alias("_pid"),
        F.monotonically_increasing_id().alias("_mid"),
    ]


def _json_kind(v: Column) -> Column:
    """A user-facing JSON type name of a variant: object, array, string, number, boolean or null."""
    t = F.schema_of_variant(v)
    return (
        F.when(t.startswith("OBJECT"), "object")
        .when(t.startswith("ARRAY"), "array")
        .when(t == "STRING", "string")
        .when(t == "VOID", "null")
        .when(t == "BOOLEAN", "boolean")
        .when(t.rlike("^(TINYINT|SMALLINT|INT|BIGINT|FLOAT|DOUBLE|DECIMAL)"), "number")
        .otherwise(F.lower(t))
    )


def _read_lines(spark: SparkSession, files: tuple[InputFile, ...], as_json: bool) -> DataFrame:
    paths = [str(f.path) for f in files]
    df = spark.read.text(paths).select(*_scan_columns(), F.col("value"))
    df = _attach_files(df, files, numbered=True)
    # A UTF-8 byte order mark survives the text reader at the start of a file's first line.
    df = df.withColumn("value", F.regexp_replace("value", "^\ufeff", "")).filter(
        ~F.col("value").rlike(r"^\s*$")
    )
    if as_json:
        v = F.try_parse_json("value")
        err = F.when(v.isNull(), F.lit("not valid JSON")).when(
            ~F.ltrim("value").startswith("{"),
            F.concat(F.lit("record is a JSON "), _json_kind(v), F.lit(", expected an object")),
        )
    else:
        v = F.to_variant_object(F.struct(F.col("value").alias("text")))
        err = F.lit(None).cast("string")
    return df.select(
        "_display", "_name", "_line", F.col("value").alias("_raw"), v.alias("v"), err.alias("_err")
    )


def _read_arrays(spark: SparkSession, files: tuple[InputFile, ...]) -> DataFrame:
    # JSON arrays cannot be split by line: each file is parsed whole (fine up to tens of MB per file).
    paths = [str(f.path) for f in files]
    df = spark.read.option("multiLine", True).option("singleVariantColumn", "v").json(paths)
    df = df.select(
        F.col("_metadata.file_path").alias("_file"), F.try_variant_get("v", "$", "array<variant>").alias("a")
    )
    df = _attach_files(df, files, numbered=False)
    bad = df.filter(F.col("a").isNull()).select(
        "_display",
        "_name",
        F.lit(None).cast("long").alias("_line"),
        F.lit(None).cast("string").alias("_raw"),
        F.lit(None).cast("variant").alias("v"),
        F.lit(
            "the file is not a valid JSON array (check brackets and commas; JSON Lines need format jsonl)"
        ).alias("_err"),
    )
    good = df.filter(F.col("a").isNotNull()).select("_display", "_name", F.posexplode("a").alias("pos", "v"))
    good = good.select(
        "_display",
        "_name",
        (F.col("pos") + 1).cast("long").alias("_line"),
        F.lit(None).cast("string").alias("_raw"),
        "v",
        F.when(
            ~F.schema_of_variant("v").startswith("OBJECT"),
            F.concat(F.lit("record is a JSON "), _json_kind(F.col("v")), F.lit(", expected an object")),
        ).alias("_err"),
    )
    return good.unionByName(bad)


def _read_tables(spark: SparkSession, files: tuple[InputFile, ...], container: Container) -> DataFrame:
    frames = []
    for f in files:  # one read per file: CSV headers (and Parquet schemas) may differ between files
        if container == "csv":
            df = (
                spark.read.option("header", True)
                .option("multiLine", True)
                .option("mode", "PERMISSIVE")
                .option("encoding", "UTF-8")
                .csv(str(f.path))
            )
            df = df.toDF(*[c.lstrip("\ufeff").strip() for c in df.columns])
        else:
            df = spark.read.parquet(str(f.path))
        if not df.columns:  # an empty CSV file has no header, hence no columns and no rows
            continue
        frames.append(df.select(*_scan_columns(), F.to_variant_object(F.struct(*df.columns)).alias("v")))
    if not frames:
        return spark.createDataFrame(
            [], "_display string, _name string, _line long, _raw string, v variant, _err string"
        )
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)
    df = _attach_files(df, files, numbered=True)
    # CSV: the header is line 1, so data row n is line n + 1 (unless a quoted field spans lines).
    line = F.col("_line") + 1 if container == "csv" else F.col("_line")
    return df.select(
        "_display",
        "_name",
        line.alias("_line"),
        F.lit(None).cast("string").alias("_raw"),
        "v",
        F.lit(None).cast("string").alias("_err"),
    )


def read_container(spark: SparkSession, files: tuple[InputFile, ...], container: Container) -> DataFrame:
    """Rows of (``_display``, ``_name``, ``_line``, ``_raw``, ``v`` variant, ``_err``) from files of one container."""
    if container == "lines":
        return _read_lines(spark, files, as_json=True)
    if container == "text":
        return _read_lines(spark, files, as_json=False)
    if container == "array":
        return _read_arrays(spark, files)
    return _read_tables(spark, files, container)


# ---------------------------------------------------------------- shapes (Spark expressions)


def _get(v: Column, key: str) -> Column:
    """The value of a top-level key as a variant; SQL NULL when the key is absent."""
    return F.try_variant_get(v, f'$["{key}"]', "variant")


class _Keys:
    """Top-level keys a shape reads, each extracted once into its own column before the checks use it."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, key: str) -> Column:
        return F.col(self.names.setdefault(key, f"__key{len(self.names)}"))

    def columns(self, v: Column) -> list[Column]:
        return [_get(v, key).alias(name) for key, name in self.names.items()]


def _blank(s: Column) -> Column:
    return s.isNull() | s.rlike(r"^[\s\p{Z}]*$")


@dataclass
class _Field:
    value: Column
    problem: Column


def _missing(fv: Column) -> Column:
    return fv.isNull() | F.is_variant_null(fv)


def _wrong_type(key: str, expected: str, fv: Column) -> Column:
    return F.concat(F.lit(f"wrong type of field {key}: expected {expected}, got "), _json_kind(fv))


def _string_field(get: _Keys, key: str, *, required: bool, join_lists: bool) -> _Field:
    fv = get(key)
    t = F.schema_of_variant(fv)
    value = F.when(t == "STRING", F.variant_get(fv, "$", "string"))
    expected = "a string"
    if join_lists:
        expected = "a string or a list of strings"
        value = value.when(
            t.startswith("ARRAY<STRING") | (t == "ARRAY<VOID>"),
            F.array_join(F.try_variant_get(fv, "$", "array<string>"), "\n"),
        )
    value = F.when(~_missing(fv), value)
    problem = F.when(_missing(fv), F.lit(f"missing required field {key}") if required else F.lit(None))
    problem = problem.when(value.isNull(), _wrong_type(key, expected, fv))
    if required:
        problem = problem.when(_blank(value), F.lit(f"empty {key}"))
    return _Field(value, problem)


def _turns_field(get: _Keys, key: str, *, join_lists: bool) -> _Field:
    """``context``: a string is one turn; a list of strings is the turns (or one joined turn when mapped)."""
    if join_lists:
        f = _string_field(get, key, required=True, join_lists=True)
        return _Field(F.when(f.value.isNotNull(), F.array(f.value)), f.problem)
    fv = get(key)
    t = F.schema_of_variant(fv)
    value = F.when(t == "STRING", F.array(F.variant_get(fv, "$", "string"))).when(
        t.startswith("ARRAY<STRING") | (t == "ARRAY<VOID>"), F.try_variant_get(fv, "$", "array<string>")
    )
    value = F.when(~_missing(fv), value)
    n = F.size(value)
    problem = (
        F.when(_missing(fv), F.lit(f"missing required field {key}"))
        .when(value.isNull(), _wrong_type(key, "a string or a list of strings", fv))
        .when(n == 0, F.lit(f"empty {key}"))
        .when(F.exists(value, _blank), F.lit(f"empty turn in field {key}"))
        .when(
            n % 2 == 0,
            F.concat(
                F.lit(f"field {key} holds "),
                n.cast("string"),
                F.lit(
                    " turns; it must alternate user/assistant turns and end with a user turn (an odd count)"
                ),
            ),
        )
    )
    return _Field(value, problem)


def _answers_field(get: _Keys, key: str) -> _Field:
    fv = get(key)
    value = F.when(
        F.schema_of_variant(fv).startswith("ARRAY<OBJECT"),
        F.try_variant_get(fv, "$", "array<struct<text:string,score:double,rank:int>>"),
    )
    problem = (
        F.when(_missing(fv), F.lit(f"missing required field {key}"))
        .when(value.isNull(), _wrong_type(key, "a list of {text, score, rank} objects", fv))
        .when(F.size(value) == 0, F.lit(f"empty {key}"))
        .when(F.exists(value, lambda a: _blank(a["text"])), F.lit(f"empty answer text in field {key}"))
    )
    return _Field(value, problem)


def _canonical(get: _Keys, usage: Usage, field_map: dict[str, str]) -> tuple[dict[str, Column], list[Column]]:
    def key(name: str) -> str:
        return field_map.get(name, name)

    def mapped(name: str) -> bool:
        return key(name) != name

    columns: dict[str, Column] = {}
    problems: list[Column] = []
    for name in content_columns(usage):
        if name == "text":
            f = _string_field(get, key(name), required=True, join_lists=True)
        elif name == "target":
            f = _string_field(get, key(name), required=True, join_lists=mapped(name))
        elif name == "system":
            f = _string_field(get, key(name), required=False, join_lists=False)
        elif name == "context":
            f = _turns_field(get, key(name), join_lists=mapped(name))
        elif name == "answers":
            f = _answers_field(get, key(name))
        else:  # pragma: no cover - records.COLUMNS and this mapping change together
            raise AssertionError(f"no reader for canonical field {name}")
        columns[name] = f.value
        problems.append(f.problem)
    return columns, problems


def _alpaca(get: _Keys, field_map: dict[str, str]) -> tuple[dict[str, Column], list[Column]]:
    def key(name: str) -> str:
        return field_map.get(name, name)

    instruction = _string_field(get, key("instruction"), required=True, join_lists=False)
    extra = _string_field(get, key("input"), required=False, join_lists=False)
    output = _string_field(get, key("output"), required=True, join_lists=False)
    system = _string_field(get, key("system"), required=False, join_lists=False)
    hv = get(key("history"))
    history_type = F.schema_of_variant(hv)
    history = F.when(
        history_type.isin("ARRAY<ARRAY<STRING>>", "ARRAY<VOID>"),
        F.try_variant_get(hv, "$", "array<array<string>>"),
    )
    history_problem = F.when(
        ~_missing(hv) & (history.isNull() | F.exists(history, lambda pair: F.size(pair) != 2)),
        F.lit(f"wrong type of field {key('history')}: expected a list of [instruction, response] pairs"),
    )
    prompt = F.when(_blank(extra.value), instruction.value).otherwise(
        F.concat(instruction.value, F.lit("\n"), extra.value)
    )
    context = F.concat(
        F.flatten(F.coalesce(history, F.array().cast("array<array<string>>"))), F.array(prompt)
    )
    return (
        {"system": system.value, "context": context, "target": output.value},
        [instruction.problem, extra.problem, output.problem, system.problem, history_problem],
    )


def _conversation(
    get: _Keys, key: str, role_key: str, content_key: str, system: Column | None
) -> tuple[dict[str, Column], list[Column]]:
    """ShareGPT / OpenAI turns: an optional leading system turn, then user/assistant pairs."""
    fv = get(key)
    items = F.try_variant_get(fv, "$", "array<variant>")
    turns = F.transform(
        items,
        lambda x: F.struct(
            F.lower(F.try_variant_get(x, f"$.{role_key}", "string")).alias("role"),
            F.try_variant_get(x, f"$.{content_key}", "string").alias("content"),
            (F.schema_of_variant(F.try_variant_get(x, f"$.{content_key}", "variant")) == "STRING").alias(
                "typed"
            ),
        ),
    )
    first = F.try_element_at(turns, F.lit(1))
    has_system = first["role"] == "system"
    body = F.when(has_system, F.slice(turns, 2, F.greatest(F.size(turns) - 1, F.lit(0)))).otherwise(turns)
    offset = F.when(has_system, 1).otherwise(0)
    n = F.size(body)

    def turn_ok(x: Column, i: Column) -> Column:
        roles = F.when(i % 2 == 0, F.array(*map(F.lit, USER_ROLES))).otherwise(
            F.array(*map(F.lit, ASSISTANT_ROLES))
        )
        return x["typed"] & F.coalesce(F.array_contains(roles, x["role"]), F.lit(False))

    bad = F.array_position(F.transform(body, turn_ok), False).cast("int")
    bad_turn = F.try_element_at(body, bad)
    expected = F.when(bad % 2 == 1, F.lit(" or ".join(USER_ROLES))).otherwise(
        F.lit(" or ".join(ASSISTANT_ROLES))
    )
    where = F.concat(F.lit("turn "), (bad + offset).cast("string"), F.lit(f" of {key}: "))
    problem = (
        F.when(_missing(fv), F.lit(f"missing required field {key}"))
        .when(items.isNull(), _wrong_type(key, f"a list of {{{role_key}, {content_key}}} objects", fv))
        .when(n == 0, F.lit(f"field {key} holds no user/assistant turns"))
        .when(
            bad > 0,
            F.when(~bad_turn["typed"], F.concat(where, F.lit(f"{content_key} must be a string"))).otherwise(
                F.concat(
                    where,
                    F.lit(f"{role_key} '"),
                    F.coalesce(bad_turn["role"], F.lit("(missing)")),
                    F.lit("' where "),
                    expected,
                    F.lit(" was expected"),
                )
            ),
        )
        .when(n % 2 == 1, F.lit(f"field {key} must end with an assistant turn (the target)"))
        .when(
            _blank(F.try_element_at(body, F.lit(-1))["content"]),
            F.lit("empty target (the last assistant turn)"),
        )
        .when(F.exists(body, lambda x: _blank(x["content"])), F.lit(f"empty turn in field {key}"))
    )
    system_value = F.when(has_system, first["content"])
    if system is not None:
        system_value = F.coalesce(system, system_value)
    context = F.transform(F.slice(body, 1, F.greatest(n - 1, F.lit(0))), lambda x: x["content"])
    target = F.try_element_at(body, F.lit(-1))["content"]
    return {"system": system_value, "context": context, "target": target}, [problem]


def _shape_columns(
    get: _Keys, shape: Shape, usage: Usage, field_map: dict[str, str]
) -> tuple[dict[str, Column], list[Column]]:
    if shape == "canonical":
        return _canonical(get, usage, field_map)
    if shape == "alpaca":
        return _alpaca(get, field_map)
    if shape == "sharegpt":
        system = _string_field(get, field_map.get("system", "system"), required=False, join_lists=False)
        columns, problems = _conversation(
            get, field_map.get("conversations", "conversations"), "from", "value", system.value
        )
        return columns, [system.problem, *problems]
    return _conversation(get, field_map.get("messages", "messages"), "role", "content", None)


def read_input(
    spark: SparkSession, resolved: ResolvedInput, usage: Usage, source_ids: bool = False
) -> DataFrame:
    """All records of one input, mapped onto ``usage``'s columns.

    Columns: the canonical ones, ``_pos`` (input, file, line), ``_input``, ``_reason`` (null when the
    record is accepted) and ``_raw`` (the truncated source text of a rejected record). With ``source_ids``
    also ``_source_id``: the record's own top-level ``id`` field as a string, null when absent.
    """
    groups: dict[Container, list[InputFile]] = {}
    for f in resolved.files:
        groups.setdefault(f.container, []).append(f)
    frames = [read_container(spark, tuple(fs), c) for c, fs in sorted(groups.items())]
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)

    get = _Keys()
    columns, problems = _shape_columns(get, resolved.shape, usage, resolved.source.field_map)
    own_id = get("id") if source_ids else None
    df = df.select("*", *get.columns(F.col("v")))
    tags = F.coalesce(F.try_variant_get("v", "$.meta.tags", "array<string>"), F.array().cast("array<string>"))
    source = F.lit(resolved.source.source) if resolved.source.source else F.col("_name")
    # _reason first, in its own projection: the raw text below is only kept where it is set.
    df = df.select("*", F.coalesce(F.col("_err"), *problems).alias("_reason"))
    df = df.select(
        *[col.alias(name) for name, col in columns.items()],
        F.struct(source.alias("source"), tags.alias("tags")).alias("meta"),
        F.struct(
            F.lit(resolved.index).alias("input"),
            F.col("_display").alias("file"),
            F.col("_line").alias("line"),
        ).alias(POSITION),
        "_reason",
        # Rejected records only: keep the source text for the quarantine, not a copy of every record.
        F.when(
            F.col("_reason").isNotNull(), F.substring(F.coalesce(F.col("_raw"), F.to_json("v")), 1, RAW_CHARS)
        ).alias("_raw"),
        *([] if own_id is None else [F.try_variant_get(own_id, "$", "string").alias(SOURCE_ID)]),
    )
    ordered = [c for c in COLUMNS[usage] if c != "id"]
    extra = [] if own_id is None else [SOURCE_ID]
    return df.select(record_id(usage).alias("id"), *ordered, POSITION, "_reason", "_raw", *extra)


def read_inputs(
    spark: SparkSession, inputs: list[ResolvedInput], usage: Usage, source_ids: bool = False
) -> Import:
    """Read every input, cache the parsed records once, count accepted and quarantined per input.

    ``source_ids`` keeps each record's own ``id`` field in ``_source_id`` (see :func:`read_input`).
    """
    frames = [read_input(spark, r, usage, source_ids) for r in inputs]
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)
    df = df.persist()
    counts = {
        r["input"]: (r["n"], r["bad"])
        for r in df.groupBy(F.col(f"{POSITION}.input").alias("input"))
        .agg(F.count(F.lit(1)).alias("n"), F.count("_reason").alias("bad"))
        .collect()
    }
    stats = []
    for r in inputs:
        n, bad = counts.get(r.index, (0, 0))
        stats.append(
            InputStats(
                r.source.uri,
                "+".join(r.formats) if r.shape == "canonical" else r.shape,
                len(r.files),
                n,
                n - bad,
                bad,
            )
        )
    accepted = df.filter(F.col("_reason").isNull()).drop("_reason", "_raw")
    quarantine = df.filter(F.col("_reason").isNotNull()).select(
        F.col(f"{POSITION}.input").alias("input"),
        F.col(f"{POSITION}.file").alias("source_file"),
        F.col(f"{POSITION}.line").alias("line"),
        F.col("_reason").alias("reason"),
        F.col("_raw").alias("raw"),
    )
    return Import(accepted, quarantine, stats, df)
