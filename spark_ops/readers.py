"""Import raw files onto the canonical record schema of a usage, with a quarantine for bad records.

Every input goes through the same steps, all in Spark but the first:

0. *Files* (plain Python, before the JVM starts): each file's container is decided from the format and
   suffix; its first bytes are sniffed, so an empty file (0 bytes or only whitespace) or a ``.parquet`` that
   is not Parquet becomes one quarantined entry (line 0) while the other files are read, and a file whose
   content does not match what was declared (a ``.jsonl`` holding CSV) gets a hint that is added to the
   reasons of its rejected records ("not valid JSON; the file looks like CSV — declare format csv?").
1. *Container*: JSON Lines / text lines, JSON arrays, CSV or Parquet become rows of (file, 1-based line or
   record number, parsed JSON as a VARIANT, parse error). Bytes that are not valid UTF-8 (GBK/GB18030
   files) reject their line; they are never replaced silently.
2. *Shape*: canonical records, Alpaca, ShareGPT, OpenAI chat, CSV question/answer or preference pairs are
   mapped onto the usage's columns, with a type check per field, so a bad record gets a reason that names
   the field ("wrong type of field target: expected a string, got number"). Vision records (modality
   ``image``) also have their image checked: it must exist and be a PNG, JPEG, WebP or GIF file.
3. *Split*: records with a reason go to the quarantine, the others get an ``id`` (content hash) and
   ``meta`` (source label, tags).

Counts reconcile by construction: every non-blank line or array element, and every unreadable or empty
file, is exactly one accepted or one quarantined record. Blank lines are not records.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_ops.canonical import POSITION, content_columns, record_id
from tasks.records import IMAGE_COLUMN, MANIFEST, MAX_ANSWERS, columns
from tasks.specs import InputSource, Modality, Usage

if TYPE_CHECKING:
    import pandas as pd

Container = Literal["lines", "array", "csv", "parquet", "text"]
Shape = Literal["canonical", "alpaca", "sharegpt", "openai", "csv_qa", "preference"]

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
    "csv_qa": ("question", "answer", "system"),
    "preference": ("prompt", "conversations", "messages", "chosen", "rejected", "system"),
}
SHAPE_USAGES: dict[Shape, tuple[str, ...]] = {
    "alpaca": CHAT_USAGES,
    "sharegpt": CHAT_USAGES,
    "openai": CHAT_USAGES,
    "csv_qa": CHAT_USAGES,
    "preference": ("reward_model",),
}
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
# CSV question/answer (seed 004): headers are matched case-insensitively, the first one present wins.
QA_COLUMNS: dict[str, tuple[str, ...]] = {
    "question": ("question", "问题", "问", "query", "prompt", "q"),
    "answer": ("answer", "答案", "答", "response", "a"),
    "system": ("system",),
}
CSV_QA_MAX_BYTES = 50 * 1024 * 1024  # seed 004: "only CSV, at most 50 MB a file"
NOT_UTF8 = "not valid UTF-8 (looks like GBK/GB18030?)"
EMPTY_FILE = "empty file"
HEAD_BYTES = 65536
URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
URI_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://"
IMAGE_KINDS = "a PNG, JPEG, WebP or GIF file"


class ReaderError(ValueError):
    """An input that cannot be read at all (missing path, unknown format, bad field_map)."""


@dataclass(frozen=True)
class InputFile:
    path: Path
    display: str
    container: Container
    # Why the whole file is one quarantined entry (empty, not Parquet); None when it is read.
    problem: str | None = None
    # Appended to the reasons of the file's rejected records when its content does not match its container.
    hint: str = ""


@dataclass(frozen=True)
class ResolvedInput:
    """One InputSource with its files listed and their containers decided (no Spark yet)."""

    index: int
    source: InputSource
    shape: Shape
    files: tuple[InputFile, ...]
    modality: Modality = "text"
    labelled: bool = True

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


def _open(path: Path):  # noqa: ANN202 - a binary file object
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _head(path: Path, n: int = HEAD_BYTES) -> bytes:
    with _open(path) as f:
        return f.read(n)


def _is_empty(path: Path) -> bool:
    """0 bytes, or only whitespace (and a byte order mark): no record at all."""
    if path.stat().st_size == 0:
        return True
    with _open(path) as f:
        first = True
        while chunk := f.read(1 << 20):
            if first and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            first = False
            if chunk.strip():
                return False
    return True


def _first_char(path: Path) -> str:
    """The first non-blank character of a file (BOM skipped): '[' means a JSON array."""
    text = _head(path).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return text[:1]


def _looks_like(head: bytes) -> str | None:
    """What the first bytes of a file look like: parquet, gzip, json-array, jsonl, json-object, csv, text."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        return None
    if "\x00" in text:
        return "binary"
    if text[0] == "[":
        return "json-array"
    first, newline, _ = text.partition("\n")
    if text[0] == "{":
        if not newline:
            return None  # one long line: cannot tell from the head
        try:
            json.loads(first)
        except ValueError:
            return "json-object"
        return "jsonl"
    if "," in first or "\t" in first or ";" in first:
        return "csv"
    return "text"


LOOKS: dict[str, str] = {
    "parquet": "Parquet",
    "gzip": "gzip-compressed (name it .gz)",
    "binary": "binary, not text",
    "json-array": "a JSON array",
    "jsonl": "JSON Lines",
    "json-object": "one JSON object spread over several lines",
    "csv": "CSV",
    "text": "plain text",
}
DECLARE: dict[str, str] = {
    "parquet": "declare format parquet?",
    "json-array": "declare format json?",
    "jsonl": "declare format jsonl?",
    "csv": "declare format csv (or csv_qa)?",
    "text": "declare format txt (usage pretrain)?",
    "json-object": "a JSON file must hold an array of records or one record per line",
}
# Which sniffed contents fit which container (anything else earns the file a hint).
FITS: dict[Container, tuple[str | None, ...]] = {
    "lines": ("jsonl", None),
    "array": ("json-array", None),
    "csv": ("csv", "text", None),
    "text": ("text", "csv", "jsonl", "json-array", "json-object", None),
    "parquet": ("parquet",),
}


def _content_hint(looks: str | None, container: Container) -> str:
    if looks in FITS[container]:
        return ""
    what = f"; the file looks like {LOOKS[looks]}" if looks else ""
    todo = DECLARE.get(looks or "")
    return f"{what} — {todo}" if todo else what


def _check_file(path: Path, container: Container, compressed: bool) -> tuple[str | None, str]:
    """(problem that makes the whole file one quarantined entry, hint for its rejected records)."""
    if _is_empty(path):
        return EMPTY_FILE, ""
    if container == "parquet":
        if compressed:
            return None, ""
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(0, path.stat().st_size - 4))
            tail = f.read(4)
        if head != b"PAR1" or tail != b"PAR1":
            looks = _looks_like(_head(path))
            return "not a Parquet file (it does not start and end with PAR1)" + _content_hint(
                looks, "parquet"
            ), ""
        return None, ""
    return None, _content_hint(_looks_like(_head(path)), container)


def _container_of(path: Path, fmt: str, shape: Shape, label: str) -> Container:
    suffix = Path(_strip_compression(path.name)).suffix.lower()
    if fmt in ("csv", "parquet"):
        return fmt  # type: ignore[return-value]
    if fmt == "csv_qa":
        return "csv"
    if fmt == "txt":
        return "text"
    if fmt == "jsonl":
        return "lines"
    if fmt == "json" or shape != "canonical":
        if suffix in (".jsonl", ".ndjson"):
            return "lines"
        if suffix == ".csv":
            return "csv"
        if suffix == ".parquet":
            return "parquet"
        return "array" if _first_char(path) == "[" else "lines"
    if suffix not in SUFFIX_CONTAINERS:
        raise ReaderError(
            f"{label}: cannot tell the format of {path.name} from its suffix {suffix or '(none)'!r}; "
            "set format to one of jsonl, json, csv, parquet, txt, alpaca, sharegpt, openai, csv_qa, preference"
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


def _check_field_map(source: InputSource, usage: Usage, shape: Shape, modality: Modality, label: str) -> None:
    allowed = SHAPE_FIELDS[shape] if shape != "canonical" else content_columns(usage, modality)
    if modality == "image" and shape != "canonical":
        allowed = (*allowed, IMAGE_COLUMN)
    for key, value in source.field_map.items():
        if key not in allowed:
            raise ReaderError(
                f"{label}: field_map key {key!r} is not a field of {shape} records for usage {usage}; "
                f"use one of {', '.join(allowed)}"
            )
        if not value or '"' in value or "\\" in value:
            raise ReaderError(f"{label}: field_map[{key!r}] = {value!r} is not a usable field name")


def resolve_input(
    source: InputSource,
    usage: Usage,
    index: int,
    local: Path | None = None,
    *,
    modality: Modality = "text",
    labelled: bool = True,
) -> ResolvedInput:
    """List the files of ``source`` and decide how to read each; raises ReaderError on unusable input.

    ``local`` is a local view of ``source.uri`` (the engine fetches lake URIs); by default the URI is read
    as a local path. ``modality`` "image" reads vision records (an ``image`` per record); ``labelled``
    False lets the answer (target, or answers for reward_model) be missing.
    """
    label = f"inputs[{index}] ({source.uri})"
    root = (
        local if local is not None else Path(urlparse(source.uri).path if "://" in source.uri else source.uri)
    )
    if not root.exists():
        raise ReaderError(f"{label}: does not exist")
    shape: Shape = source.format if source.format in SHAPE_FIELDS else "canonical"  # type: ignore[assignment]
    if shape != "canonical" and usage not in SHAPE_USAGES[shape]:
        holds = (
            "ranked answers (context, answers)"
            if shape == "preference"
            else "conversation records (system, context, target)"
        )
        raise ReaderError(
            f"{label}: format {source.format} makes {holds}, which usage {usage} cannot hold; "
            f"use usage {' / '.join(SHAPE_USAGES[shape])}, or format jsonl/json with a field_map"
        )
    if source.format == "txt" and usage != "pretrain":
        raise ReaderError(
            f"{label}: format txt holds one document per line, which only makes pretrain records"
        )
    if not labelled and shape not in ("canonical", "csv_qa"):
        raise ReaderError(
            f"{label}: unlabelled data (the question only) is read from canonical records or csv_qa; "
            f"format {source.format} always holds answers"
        )
    if modality == "image" and usage not in CHAT_USAGES:
        raise ReaderError(
            f"{label}: modality image (question + image -> answer) needs usage sft, rl or model_test"
        )
    _check_field_map(source, usage, shape, modality, label)
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
        if container in ("csv", "parquet") and source.encoding != "utf-8":
            raise ReaderError(
                f"{label}: encoding {source.encoding} is read for JSON Lines, JSON and TXT files; "
                f"{p.name} is {container}: convert it to UTF-8 (iconv -f {source.encoding} -t utf-8)"
            )
        if shape == "csv_qa" and p.stat().st_size > CSV_QA_MAX_BYTES:
            raise ReaderError(
                f"{label}: {p.name} is {p.stat().st_size / 2**20:.1f} MB; a CSV question/answer file may be at "
                f"most {CSV_QA_MAX_BYTES // 2**20} MB. Split it into several files in one directory and "
                "import the directory"
            )
        compressed = p.name.endswith(COMPRESSED)
        problem, hint = _check_file(p, container, compressed)
        files.append(InputFile(p, display, container, problem, hint))
    if all(f.problem == EMPTY_FILE for f in files):
        names = ", ".join(f.path.name for f in files[:5]) + (", ..." if len(files) > 5 else "")
        raise ReaderError(f"{label}: holds only empty files (0 bytes or only whitespace): {names}")
    return ResolvedInput(index, source, shape, tuple(files), modality, labelled)


# ---------------------------------------------------------------- containers (Spark)

ROW_SCHEMA = "_display string, _name string, _line long, _raw string, v variant, _err string, _hint string, _dir string"
ROW_COLUMNS = ("_display", "_name", "_line", "_raw", "v", "_err", "_hint", "_dir")


def _file_key(file_path: Column) -> Column:
    """Spark's file URI (``file:/a/b%20c.json``) as the absolute local path Python listed."""
    path = F.regexp_replace(file_path, r"^file:(//)?", "")
    return F.url_decode(F.regexp_replace(path, r"\+", "%2B"))  # url_decode reads '+' as a space


def _attach_files(df: DataFrame, files: tuple[InputFile, ...], numbered: bool) -> DataFrame:
    """Replace ``_file`` with the display name, file name, content hint and directory of each file; for
    line-oriented rows add the 1-based ``_line``.

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
        [
            (
                os.path.abspath(f.path),
                f.display,
                f.path.name,
                f.hint,
                os.path.dirname(os.path.abspath(f.path)),
            )
            for f in files
        ],
        "_key string, _display string, _name string, _hint string, _dir string",
    )
    # Left join: a path Spark spells differently keeps its URI as display name rather than losing rows.
    df = df.join(F.broadcast(names), ["_key"], "left")
    return df.withColumns(
        {
            "_display": F.coalesce("_display", "_file"),
            "_name": F.coalesce("_name", F.regexp_extract("_file", r"[^/]*$", 0)),
            "_hint": F.coalesce("_hint", F.lit("")),
            "_dir": F.coalesce("_dir", F.lit("")),
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


def _decoded(value: Column, encoding: str) -> Column:
    """The text reader hands over a file's bytes unchanged; a declared legacy encoding is decoded here."""
    if encoding == "utf-8":
        return value
    return F.decode(value.cast("binary"), encoding.upper())


def _use_encoding(spark: SparkSession, encoding: str) -> None:
    if encoding != "utf-8":  # decode() takes only the Unicode charsets unless Java's are allowed
        spark.conf.set("spark.sql.legacy.javaCharsets", "true")


def _read_lines(
    spark: SparkSession, files: tuple[InputFile, ...], as_json: bool, encoding: str = "utf-8"
) -> DataFrame:
    _use_encoding(spark, encoding)
    paths = [str(f.path) for f in files]
    df = spark.read.text(paths).select(*_scan_columns(), _decoded(F.col("value"), encoding).alias("value"))
    df = _attach_files(df, files, numbered=True)
    # The text reader does not decode: GBK bytes reach us as they are (and would pass as JSON), so validity
    # is taken before any string function, which would replace them.
    df = df.withColumn("_valid", F.is_valid_utf8("value"))
    # A UTF-8 byte order mark survives the text reader at the start of a file's first line.
    df = df.withColumn("value", F.regexp_replace("value", "^\ufeff", "")).filter(
        ~F.col("value").rlike(r"^\s*$")
    )
    valid = F.col("_valid")
    if as_json:
        v = F.try_parse_json("value")
        err = (
            F.when(~valid, F.lit(NOT_UTF8))
            # Spark's parser stops after the first value: '{"a": 1}]' parses, so the end is checked too.
            .when(
                v.isNull()
                | (F.ltrim("value").startswith("{") & ~F.rtrim("value", F.lit(" \t\r")).endswith("}")),
                F.lit("not valid JSON"),
            )
            .when(
                ~F.ltrim("value").startswith("{"),
                F.concat(F.lit("record is a JSON "), _json_kind(v), F.lit(", expected an object")),
            )
        )
    else:
        v = F.to_variant_object(F.struct(F.col("value").alias("text")))
        err = F.when(~valid, F.lit(NOT_UTF8))
    return df.select(
        "_display",
        "_name",
        "_line",
        F.col("value").alias("_raw"),
        F.when(valid, v).alias("v"),
        err.alias("_err"),
        "_hint",
        "_dir",
    )


def _read_arrays(spark: SparkSession, files: tuple[InputFile, ...], encoding: str = "utf-8") -> DataFrame:
    """JSON arrays: each file is one string (wholetext), checked for UTF-8 and parsed whole.

    A file with bytes that are not UTF-8 is parsed with those bytes replaced, and each record holding a
    replacement character is quarantined, so the records around a bad one are kept.
    """
    _use_encoding(spark, encoding)
    paths = [str(f.path) for f in files]
    df = spark.read.text(paths, wholetext=True)
    df = df.select(
        F.col("_metadata.file_path").alias("_file"), _decoded(F.col("value"), encoding).alias("value")
    )
    df = df.withColumn("_valid", F.is_valid_utf8("value"))
    text = F.when(F.col("_valid"), F.col("value")).otherwise(F.make_valid_utf8("value"))
    text = F.when(text.startswith("\ufeff"), F.substr(text, F.lit(2))).otherwise(text)
    df = df.select(
        "_file", "_valid", F.try_variant_get(F.try_parse_json(text), "$", "array<variant>").alias("a")
    )
    df = _attach_files(df, files, numbered=False)
    bad = df.filter(F.col("a").isNull()).select(
        "_display",
        "_name",
        F.lit(0).cast("long").alias("_line"),
        F.lit(None).cast("string").alias("_raw"),
        F.lit(None).cast("variant").alias("v"),
        F.lit(
            "the file is not a valid JSON array (check brackets and commas; JSON Lines need format jsonl)"
        ).alias("_err"),
        "_hint",
        "_dir",
    )
    good = df.filter(F.col("a").isNotNull()).select(
        "_display", "_name", "_valid", "_hint", "_dir", F.posexplode("a").alias("pos", "v")
    )
    good = good.select(
        "_display",
        "_name",
        (F.col("pos") + 1).cast("long").alias("_line"),
        F.lit(None).cast("string").alias("_raw"),
        "v",
        F.when(~F.col("_valid") & F.to_json("v").contains("\ufffd"), F.lit(NOT_UTF8))
        .when(
            ~F.schema_of_variant("v").startswith("OBJECT"),
            F.concat(F.lit("record is a JSON "), _json_kind(F.col("v")), F.lit(", expected an object")),
        )
        .alias("_err"),
        "_hint",
        "_dir",
    )
    return good.unionByName(bad)


def _read_tables(
    spark: SparkSession, files: tuple[InputFile, ...], container: Container, lower_headers: bool = False
) -> DataFrame:
    frames = []
    for f in files:  # one read per file: CSV headers (and Parquet schemas) may differ between files
        err = F.lit(None).cast("string")
        if container == "csv":
            df = (
                spark.read.option("header", True)
                .option("multiLine", True)
                .option("mode", "PERMISSIVE")
                .option("encoding", "UTF-8")
                .csv(str(f.path))
            )
            names = [c.lstrip("\ufeff").strip() for c in df.columns]
            df = df.toDF(*[n.lower() for n in names] if lower_headers else names)
            if df.columns:
                # The CSV reader decodes with replacement: a U+FFFD in a row is where bytes were not UTF-8.
                err = F.when(
                    F.concat_ws("\u0001", *[F.col(f"`{c}`") for c in df.columns]).contains("\ufffd"),
                    F.lit(NOT_UTF8),
                )
        else:
            df = spark.read.parquet(str(f.path))
        if not df.columns:  # a CSV file without a header row has no columns and no rows
            continue
        frames.append(
            df.select(
                *_scan_columns(),
                F.to_variant_object(F.struct(*[F.col(f"`{c}`") for c in df.columns])).alias("v"),
                err.alias("_err"),
            )
        )
    if not frames:
        return spark.createDataFrame([], ROW_SCHEMA)
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
        "_err",
        "_hint",
        "_dir",
    )


def _file_problems(spark: SparkSession, files: list[InputFile]) -> DataFrame:
    """One quarantined entry (line 0: the file as a whole) per empty or unreadable file."""
    rows = [(f.display, f.path.name, f.problem, os.path.dirname(os.path.abspath(f.path))) for f in files]
    df = spark.createDataFrame(rows, "_display string, _name string, _err string, _dir string")
    return df.select(
        "_display",
        "_name",
        F.lit(0).cast("long").alias("_line"),
        F.lit(None).cast("string").alias("_raw"),
        F.lit(None).cast("variant").alias("v"),
        "_err",
        F.lit("").alias("_hint"),
        "_dir",
    )


def read_container(
    spark: SparkSession,
    files: tuple[InputFile, ...],
    container: Container,
    *,
    encoding: str = "utf-8",
    lower_headers: bool = False,
) -> DataFrame:
    """Rows of (``_display``, ``_name``, ``_line``, ``_raw``, ``v`` variant, ``_err``, ``_hint``, ``_dir``)
    from files of one container."""
    if container == "lines":
        return _read_lines(spark, files, as_json=True, encoding=encoding)
    if container == "text":
        return _read_lines(spark, files, as_json=False, encoding=encoding)
    if container == "array":
        return _read_arrays(spark, files, encoding)
    return _read_tables(spark, files, container, lower_headers)


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


def _string_value(fv: Column, key: str, *, required: bool, join_lists: bool) -> _Field:
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


def _string_field(get: _Keys, key: str, *, required: bool, join_lists: bool) -> _Field:
    return _string_value(get(key), key, required=required, join_lists=join_lists)


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


INTEGER_TYPES = r"^(TINYINT|SMALLINT|INT|BIGINT|DECIMAL\(\d+,0\))$"
NUMBER_TYPES = r"^(TINYINT|SMALLINT|INT|BIGINT|FLOAT|DOUBLE|DECIMAL)"


def _ranking(answers: Column, key: str) -> Column:
    """Problems of a list of parsed answers: 2 to 5 of them, distinct ranks, ranks that follow the scores."""
    n = F.size(answers)
    ranks = F.transform(answers, lambda a: a["rank"])
    dup = F.try_element_at(F.filter(ranks, lambda r: F.size(F.filter(ranks, lambda q: q == r)) > 1), F.lit(1))
    pairs = F.flatten(
        F.transform(
            answers,
            lambda a, i: F.transform(
                answers,
                lambda b, j: F.struct(
                    (i + 1).alias("i"),
                    (j + 1).alias("j"),
                    a["score"].alias("si"),
                    b["score"].alias("sj"),
                    a["rank"].alias("ri"),
                    b["rank"].alias("rj"),
                ),
            ),
        )
    )
    wrong = F.try_element_at(F.filter(pairs, lambda p: (p["si"] > p["sj"]) & (p["ri"] > p["rj"])), F.lit(1))
    return (
        F.when(
            n > MAX_ANSWERS,
            F.concat(
                F.lit(f"field {key} holds "),
                n.cast("string"),
                F.lit(f" answers; a ranking holds at most {MAX_ANSWERS}"),
            ),
        )
        .when(n < 2, F.lit(f"field {key} holds 1 answer; a ranking needs at least 2"))
        .when(
            dup.isNotNull(),
            F.concat(
                F.lit("duplicate rank "),
                dup.cast("string"),
                F.lit(f" in field {key}"),
            ),
        )
        .when(
            wrong.isNotNull(),
            F.concat(
                F.lit("answer "),
                wrong["i"].cast("string"),
                F.lit(" has a higher score than answer "),
                wrong["j"].cast("string"),
                F.lit(" ("),
                wrong["si"].cast("string"),
                F.lit(" > "),
                wrong["sj"].cast("string"),
                F.lit(") but a worse rank ("),
                wrong["ri"].cast("string"),
                F.lit(" > "),
                wrong["rj"].cast("string"),
                F.lit("); rank 1 is the best"),
            ),
        )
    )


def _answers_field(get: _Keys, key: str, *, required: bool = True) -> _Field:
    """Ranked answers: a list of {text, score, rank} objects, each field checked, then the ranking itself."""
    fv = get(key)
    items = F.when(F.schema_of_variant(fv).startswith("ARRAY"), F.try_variant_get(fv, "$", "array<variant>"))

    def parse(x: Column) -> Column:
        text = F.try_variant_get(x, "$.text", "variant")
        score = F.try_variant_get(x, "$.score", "variant")
        rank = F.try_variant_get(x, "$.rank", "variant")
        text_value = F.when(F.schema_of_variant(text) == "STRING", F.variant_get(text, "$", "string"))
        score_value = F.when(
            F.schema_of_variant(score).rlike(NUMBER_TYPES), F.try_variant_get(score, "$", "double")
        )
        rank_value = F.when(
            F.schema_of_variant(rank).rlike(INTEGER_TYPES), F.try_variant_get(rank, "$", "int")
        )
        problem = (
            F.when(
                ~F.schema_of_variant(x).startswith("OBJECT"),
                F.concat(F.lit("is a JSON "), _json_kind(x), F.lit(", expected {text, score, rank}")),
            )
            .when(_missing(text), F.lit("missing text"))
            .when(text_value.isNull(), F.concat(F.lit("text must be a string, got "), _json_kind(text)))
            .when(_blank(text_value), F.lit("empty text"))
            .when(_missing(score), F.lit("missing score"))
            .when(score_value.isNull(), F.concat(F.lit("score must be a number, got "), _json_kind(score)))
            .when(_missing(rank), F.lit("missing rank"))
            .when(rank_value.isNull(), F.concat(F.lit("rank must be a whole number, got "), _json_kind(rank)))
            .when(rank_value < 1, F.lit("rank must be 1 or more (1 is the best)"))
        )
        return F.struct(
            text_value.alias("text"), score_value.alias("score"), rank_value.alias("rank"), problem.alias("p")
        )

    parsed = F.transform(items, parse)
    first_bad = F.array_position(F.transform(parsed, lambda a: a["p"].isNull()), False).cast("int")
    value = F.transform(parsed, lambda a: F.struct(a["text"], a["score"], a["rank"]))
    problem = (
        F.when(_missing(fv), F.lit(f"missing required field {key}") if required else F.lit(None))
        .when(items.isNull(), _wrong_type(key, "a list of {text, score, rank} objects", fv))
        .when(F.size(items) == 0, F.lit(f"empty {key}"))
        .when(
            first_bad > 0,
            F.concat(
                F.lit("answer "),
                first_bad.cast("string"),
                F.lit(f" of {key}: "),
                F.try_element_at(parsed, first_bad)["p"],
            ),
        )
        .otherwise(_ranking(value, key))
    )
    return _Field(F.when(problem.isNull() & ~_missing(fv), value), problem)


def _image_field(get: _Keys, key: str) -> _Field:
    """``image``: one path (relative to the input file, or absolute) or URI; ``images: [one]`` also works.

    The value becomes an absolute path (or the URI); whether the file exists and is an image is checked
    afterwards (:func:`_check_images`), once per distinct image.
    """
    fv = get(key)
    many = get("images")
    many_list = F.try_variant_get(many, "$", "array<string>")
    f = _string_value(fv, key, required=True, join_lists=False)
    value = F.coalesce(f.value, F.when(_missing(fv) & (F.size(many_list) == 1), many_list[0]))
    problem = (
        F.when(
            _missing(fv) & (F.size(many_list) > 1),
            F.concat(
                F.lit("field images holds "),
                F.size(many_list).cast("string"),
                F.lit(" images; one image per record is supported"),
            ),
        )
        .when(_missing(fv) & many_list.isNotNull() & ~_blank(value), F.lit(None))
        .otherwise(f.problem)
    )
    resolved = F.when(value.rlike(URI_PATTERN) | value.startswith("/"), value).otherwise(
        F.concat(F.col("_dir"), F.lit("/"), value)
    )
    return _Field(F.when(~_blank(value), resolved), problem)


def _canonical(
    get: _Keys, usage: Usage, field_map: dict[str, str], modality: Modality, labelled: bool
) -> tuple[dict[str, Column], list[Column]]:
    def key(name: str) -> str:
        return field_map.get(name, name)

    def mapped(name: str) -> bool:
        return key(name) != name

    columns_: dict[str, Column] = {}
    problems: list[Column] = []
    for name in content_columns(usage, modality):
        if name == "text":
            f = _string_field(get, key(name), required=True, join_lists=True)
        elif name == "target":
            f = _string_field(get, key(name), required=labelled, join_lists=mapped(name))
        elif name == "system":
            f = _string_field(get, key(name), required=False, join_lists=False)
        elif name == "context":
            f = _turns_field(get, key(name), join_lists=mapped(name))
        elif name == "answers":
            f = _answers_field(get, key(name), required=labelled)
        elif name == IMAGE_COLUMN:
            f = _image_field(get, key(name))
        else:  # pragma: no cover - records.COLUMNS and this mapping change together
            raise AssertionError(f"no reader for canonical field {name}")
        columns_[name] = f.value
        problems.append(f.problem)
    return columns_, problems


def _csv_qa(get: _Keys, field_map: dict[str, str], labelled: bool) -> tuple[dict[str, Column], list[Column]]:
    """CSV question/answer (seed 004): the first of the known headers present, or the mapped one."""

    def pick(name: str) -> Column:
        keys = (field_map[name].lower(),) if name in field_map else QA_COLUMNS[name]
        return F.coalesce(*[get(k) for k in keys])

    question = _string_value(pick("question"), "question", required=True, join_lists=False)
    answer = _string_value(pick("answer"), "answer", required=labelled, join_lists=False)
    system = _string_value(pick("system"), "system", required=False, join_lists=False)
    return (
        {"system": system.value, "context": F.array(question.value), "target": answer.value},
        [question.problem, answer.problem, system.problem],
    )


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


def _reply(get: _Keys, key: str) -> _Field:
    """A preference answer: a string, or a ShareGPT / OpenAI turn object ({from, value} / {role, content})."""
    fv = get(key)
    t = F.schema_of_variant(fv)
    text = F.coalesce(
        F.try_variant_get(fv, "$.value", "string"), F.try_variant_get(fv, "$.content", "string")
    )
    value = F.when(t == "STRING", F.variant_get(fv, "$", "string")).when(t.startswith("OBJECT"), text)
    problem = (
        F.when(_missing(fv), F.lit(f"missing required field {key}"))
        .when(value.isNull(), _wrong_type(key, "a string or a {from, value} / {role, content} object", fv))
        .when(_blank(value), F.lit(f"empty {key}"))
    )
    return _Field(value, problem)


def _preference(get: _Keys, field_map: dict[str, str]) -> tuple[dict[str, Column], list[Column]]:
    """Pairs ``{prompt | conversations | messages, chosen, rejected}`` as a ranking: chosen rank 1 (score 1),
    rejected rank 2 (score 0)."""

    def key(name: str) -> str:
        return field_map.get(name, name)

    prompt = get(key("prompt"))
    turns_v = F.coalesce(get(key("conversations")), get(key("messages")))
    items = F.try_variant_get(turns_v, "$", "array<variant>")
    turns = F.transform(
        items,
        lambda x: F.struct(
            F.lower(
                F.coalesce(F.try_variant_get(x, "$.from", "string"), F.try_variant_get(x, "$.role", "string"))
            ).alias("role"),
            F.coalesce(
                F.try_variant_get(x, "$.value", "string"), F.try_variant_get(x, "$.content", "string")
            ).alias("content"),
        ),
    )
    has_system = F.try_element_at(turns, F.lit(1))["role"] == "system"
    body = F.when(has_system, F.slice(turns, 2, F.greatest(F.size(turns) - 1, F.lit(0)))).otherwise(turns)
    prompt_t = F.schema_of_variant(prompt)
    prompt_value = F.when(prompt_t == "STRING", F.array(F.variant_get(prompt, "$", "string"))).when(
        prompt_t.startswith("ARRAY<STRING"), F.try_variant_get(prompt, "$", "array<string>")
    )
    context = F.coalesce(prompt_value, F.transform(body, lambda x: x["content"]))
    n = F.size(context)
    where = f"{key('prompt')} (or {key('conversations')} / {key('messages')})"
    context_problem = (
        F.when(_missing(prompt) & _missing(turns_v), F.lit(f"missing required field {where}"))
        .when(
            ~_missing(prompt) & prompt_value.isNull(),
            _wrong_type(key("prompt"), "a string or a list of strings", prompt),
        )
        .when(
            _missing(prompt) & items.isNull(),
            _wrong_type(key("conversations"), "a list of turn objects", turns_v),
        )
        .when(n == 0, F.lit(f"empty {where}"))
        .when(F.exists(context, _blank), F.lit(f"empty turn in field {where}"))
        .when(n % 2 == 0, F.lit(f"field {where} must end with a user turn (an odd number of turns)"))
    )
    chosen, rejected = _reply(get, key("chosen")), _reply(get, key("rejected"))
    same = F.when(
        chosen.value == rejected.value, F.lit(f"{key('chosen')} and {key('rejected')} are the same answer")
    )
    system = _string_field(get, key("system"), required=False, join_lists=False)
    system_value = F.coalesce(system.value, F.when(has_system, F.try_element_at(turns, F.lit(1))["content"]))
    answers = F.array(
        F.struct(chosen.value.alias("text"), F.lit(1.0).alias("score"), F.lit(1).alias("rank")),
        F.struct(rejected.value.alias("text"), F.lit(0.0).alias("score"), F.lit(2).alias("rank")),
    )
    return (
        {"system": system_value, "context": context, "answers": answers},
        [context_problem, chosen.problem, rejected.problem, same, system.problem],
    )


def _shape_columns(get: _Keys, r: ResolvedInput, usage: Usage) -> tuple[dict[str, Column], list[Column]]:
    field_map = r.source.field_map
    if r.shape == "canonical":
        return _canonical(get, usage, field_map, r.modality, r.labelled)
    if r.shape == "csv_qa":
        cols, problems = _csv_qa(get, field_map, r.labelled)
    elif r.shape == "alpaca":
        cols, problems = _alpaca(get, field_map)
    elif r.shape == "sharegpt":
        system = _string_field(get, field_map.get("system", "system"), required=False, join_lists=False)
        cols, problems = _conversation(
            get, field_map.get("conversations", "conversations"), "from", "value", system.value
        )
        problems = [system.problem, *problems]
    elif r.shape == "preference":
        return _preference(get, field_map)
    else:
        cols, problems = _conversation(get, field_map.get("messages", "messages"), "role", "content", None)
    if r.modality == "image":
        image = _image_field(get, field_map.get(IMAGE_COLUMN, IMAGE_COLUMN))
        cols = {**cols, IMAGE_COLUMN: image.value}
        problems = [*problems, image.problem]
    return cols, problems


# Record shapes a rejected record may really be in: (shape, keys it has, what to do).
LOOKS_LIKE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "preference",
        ("chosen", "rejected"),
        "preference pairs — declare format preference (usage reward_model)?",
    ),
    ("alpaca", ("instruction", "output"), "Alpaca — declare format alpaca?"),
    ("sharegpt", ("conversations",), "ShareGPT — declare format sharegpt?"),
    ("openai", ("messages",), "OpenAI chat — declare format openai?"),
    (
        "csv_qa",
        ("question", "answer"),
        "question/answer — declare format csv_qa (or map them with field_map)?",
    ),
    ("csv_qa", ("问题", "答案"), "question/answer — declare format csv_qa (or map them with field_map)?"),
    ("canonical", ("context",), "canonical {context, target} records — declare format jsonl or json?"),
)


def _record_hint(shape: Shape) -> Column:
    """For a record missing a required field: the shape its keys suggest, when that is another one.

    The keys are looked up in the record itself, not extracted with the shape's keys: this is evaluated
    only for rejected records, and costs the accepted ones nothing.
    """
    hint = F.lit("")
    for other, keys, text in reversed(LOOKS_LIKE):
        if other == shape:
            continue
        present = F.lit(True)
        for k in keys:
            present = present & _get(F.col("v"), k).isNotNull()
        hint = F.when(present, F.lit(f"; the record looks like {text}")).otherwise(hint)
    return hint


def _is_image(head: bytes) -> bool:
    return head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )


def image_check(path: str) -> tuple[str, str | None]:
    """(stored value, problem) for one image reference: local files must exist and be images.

    ``file://`` URIs and paths become normalised absolute paths; other URIs (s3://, https://) are kept as
    they are and not checked here (the engine has no credentials for them).
    """
    if URI_RE.match(path) and not path.startswith("file:"):
        return path, None
    local = os.path.normpath(unquote(urlparse(path).path) if path.startswith("file:") else path)
    try:
        with open(local, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return local, f"field image: image file not found: {local}"
    except IsADirectoryError:
        return local, f"field image: {local} is a directory, not an image file"
    except OSError as e:
        return local, f"field image: cannot read {local}: {e.strerror}"
    if not _is_image(head):
        return local, f"field image: {local} is not {IMAGE_KINDS} (by its first bytes)"
    return local, None


def _check_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    import pandas as pd

    for b in batches:
        checked = [image_check(p) for p in b["_image"]]
        yield pd.DataFrame(
            {
                "_image": b["_image"],
                "_image_path": [c[0] for c in checked],
                "_image_problem": [c[1] for c in checked],
            }
        )


def _check_images(df: DataFrame) -> DataFrame:
    """Check each distinct image of the not yet rejected records once, in Arrow batches on the executors."""
    todo = df.filter(F.col("_reason").isNull() & F.col(IMAGE_COLUMN).isNotNull())
    checks = (
        todo.select(F.col(IMAGE_COLUMN).alias("_image"))
        .distinct()
        .mapInPandas(_check_batches, "_image string, _image_path string, _image_problem string")
    )
    df = df.join(checks, df[IMAGE_COLUMN] == checks["_image"], "left")
    return df.withColumns(
        {
            "_reason": F.coalesce("_reason", "_image_problem"),
            IMAGE_COLUMN: F.coalesce("_image_path", IMAGE_COLUMN),
        }
    ).drop("_image", "_image_path", "_image_problem")


def read_input(
    spark: SparkSession, resolved: ResolvedInput, usage: Usage, source_ids: bool = False
) -> DataFrame:
    """All records of one input, mapped onto ``usage``'s columns.

    Columns: the canonical ones, ``_pos`` (input, file, line), ``_input``, ``_reason`` (null when the
    record is accepted) and ``_raw`` (the truncated source text of a rejected record). With ``source_ids``
    also ``_source_id``: the record's own top-level ``id`` field as a string, null when absent.
    """
    groups: dict[Container, list[InputFile]] = {}
    broken = [f for f in resolved.files if f.problem is not None]
    for f in resolved.files:
        if f.problem is None:
            groups.setdefault(f.container, []).append(f)
    encoding = resolved.source.encoding
    lower = resolved.shape == "csv_qa"
    frames = [
        read_container(spark, tuple(fs), c, encoding=encoding, lower_headers=lower)
        for c, fs in sorted(groups.items())
    ]
    if broken:
        frames.append(_file_problems(spark, broken))
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other)

    get = _Keys()
    shape_columns, problems = _shape_columns(get, resolved, usage)
    # A field_map says the user knows the shape: no guessing then.
    hint = _record_hint(resolved.shape) if not resolved.source.field_map else F.lit("")
    own_id = get("id") if source_ids else None
    df = df.select("*", *get.columns(F.col("v")))
    tags = F.coalesce(F.try_variant_get("v", "$.meta.tags", "array<string>"), F.array().cast("array<string>"))
    source = F.lit(resolved.source.source) if resolved.source.source else F.col("_name")
    # _reason first, in its own projection: the raw text below is only kept where it is set.
    # The problems in their own projection, so the checks run once per record, not once per use below.
    df = df.select("*", F.coalesce(F.col("_err"), *problems).alias("_problem"))
    reason = F.col("_problem")
    reason = F.when(
        reason.isNotNull(),
        F.concat(
            reason,
            F.when(reason.startswith("missing required field"), hint).otherwise(F.lit("")),
            F.col("_hint"),
        ),
    )
    df = df.select("*", reason.alias("_reason"))
    ordered = [c for c in columns(usage, resolved.modality) if c != "id"]
    df = df.select(
        *[col.alias(name) for name, col in shape_columns.items()],
        F.struct(source.alias("source"), tags.alias("tags")).alias("meta"),
        F.struct(
            F.lit(resolved.index).alias("input"),
            F.col("_display").alias("file"),
            F.col("_line").alias("line"),
        ).alias(POSITION),
        "_reason",
        # Rejected records only: keep the source text for the quarantine, not a copy of every record.
        F.when(
            F.col("_reason").isNotNull(),
            F.substring(F.make_valid_utf8(F.coalesce(F.col("_raw"), F.to_json("v"))), 1, RAW_CHARS),
        ).alias("_raw"),
        *([] if own_id is None else [F.try_variant_get(own_id, "$", "string").alias(SOURCE_ID)]),
    )
    if resolved.modality == "image":
        df = _check_images(df)
    extra = [] if own_id is None else [SOURCE_ID]
    return df.select(
        record_id(usage, resolved.modality).alias("id"), *ordered, POSITION, "_reason", "_raw", *extra
    )


def read_inputs(
    spark: SparkSession, inputs: list[ResolvedInput], usage: Usage, source_ids: bool = False
) -> Import:
    """Read every input, cache the parsed records once, count accepted and quarantined per input.

    ``source_ids`` keeps each record's own ``id`` field in ``_source_id`` (see :func:`read_input`).
    """
    if len({r.modality for r in inputs}) > 1:
        raise ReaderError("all inputs of one import must have the same modality")
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
