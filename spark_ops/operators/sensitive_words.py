"""Sensitive-word filter: user word lists in three categories, matched with one Aho-Corasick automaton.

The lists are read on the driver and shipped with the UDF; each Python worker builds the automaton once (a
module-level cache keyed by the lists' fingerprint) and scans every text of an Arrow batch in one pass, so the
cost is linear in the text whatever the number of words. Matching is case-insensitive; a word that starts
or ends with a Latin letter or digit only matches at ASCII word boundaries ("ass" is not in "class"), while
CJK words match anywhere, since Chinese has no spaces between words.
"""

from __future__ import annotations

import hashlib
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import text_values
from spark_ops.operators.base import KEEP, NOTE, STAT, Operator, OperatorContext, OperatorParams, register
from tasks.settings import PROJECT_ROOT

if TYPE_CHECKING:
    import pandas as pd

Category = Literal["pornography", "violence", "politics"]
CATEGORIES: tuple[Category, ...] = ("pornography", "violence", "politics")
LISTS_DIR = PROJECT_ROOT / "include" / "sensitive_words"

# Automata built in this Python worker, by word-list fingerprint (workers are reused across tasks).
_AUTOMATA: dict[str, Any] = {}


def read_word_list(path: Path) -> list[str]:
    """Words of one list file: one per line, UTF-8, blank lines and ``#`` comments ignored."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        w = line.strip()
        if w and not w.startswith("#"):
            words.append(w)
    return words


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _automaton(words: list[tuple[str, int]], key: str) -> Any:
    """The worker's automaton for ``words`` ((lower-cased word, category index)), built on first use."""
    cached = _AUTOMATA.get(key)
    if cached is not None:
        return cached
    import ahocorasick  # late: only Python workers need it

    auto = ahocorasick.Automaton()
    for word, cat in words:
        # value: (category, length, needs a word boundary on the left, on the right)
        auto.add_word(word, (cat, len(word), _is_word_char(word[0]), _is_word_char(word[-1])))
    auto.make_automaton()
    _AUTOMATA[key] = auto
    return auto


def scan(text: str, auto: Any, n_categories: int, mask_char: str | None) -> tuple[str, list[int]]:
    """Hits per category in ``text`` and, with ``mask_char``, the text with every hit masked."""
    hits = [0] * n_categories
    if not text:
        return text, hits
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower-case to two; offsets must stay aligned
        lowered = text
    spans: list[tuple[int, int]] = []
    for end, (cat, length, left, right) in auto.iter(lowered):
        start = end - length + 1
        if left and start > 0 and _is_word_char(lowered[start - 1]):
            continue
        if right and end + 1 < len(lowered) and _is_word_char(lowered[end + 1]):
            continue
        hits[cat] += 1
        if mask_char is not None:
            spans.append((start, end + 1))
    if not spans:
        return text, hits
    chars = list(text)
    for start, stop in spans:
        chars[start:stop] = mask_char * (stop - start)
    return "".join(chars), hits


def _scan_udf(words: list[tuple[str, int]], mask_char: str | None) -> Any:
    """A pandas UDF: array<string> -> struct<values: array<string>, hits: array<int>> (hits per category)."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    key = hashlib.sha256(repr((words, mask_char)).encode()).hexdigest()
    n = len(CATEGORIES)
    out_type = T.StructType(
        [
            T.StructField("values", T.ArrayType(T.StringType())),
            T.StructField("hits", T.ArrayType(T.IntegerType())),
        ]
    )

    def sensitive_scan(batch: pd.Series) -> pd.DataFrame:
        auto = _automaton(words, key)
        out_values, out_hits = [], []
        for values in batch:
            if values is None:
                out_values.append(None)
                out_hits.append([0] * n)
                continue
            total = [0] * n
            new = []
            for v in values:
                if v is None:
                    new.append(None)
                    continue
                t, h = scan(v, auto, n, mask_char)
                new.append(t)
                total = [a + b for a, b in zip(total, h, strict=True)]
            out_values.append(new)
            out_hits.append(total)
        return pd.DataFrame({"values": out_values, "hits": out_hits})

    # The module postpones annotations (strings); pandas_udf reads them to pick the UDF kind.
    sensitive_scan.__annotations__ = {"batch": pd.Series, "return": pd.DataFrame}
    return pandas_udf(out_type)(sensitive_scan)  # type: ignore[call-overload]


@register
class SensitiveWordFilter(Operator):
    """Find words from the pornography / violence / politics lists; drop the record or mask the words."""

    row_local = True

    @property
    def fusable(self) -> bool:
        return False  # a pandas UDF: runs as a step of its own (see Operator.fusable)

    name = "sensitive_words"

    class Params(OperatorParams):
        lists: dict[Category, str] = Field(
            default_factory=lambda: {c: str(LISTS_DIR / f"{c}.txt") for c in CATEGORIES},
            description="Word-list file per category (one word per line, '#' comments); relative paths are "
            "taken from the project root. The shipped lists under include/sensitive_words/ are demo "
            "placeholders: supply your own.",
        )
        words: dict[Category, list[str]] = Field(
            default_factory=dict, description="Extra words per category, in addition to the list files."
        )
        action: Literal["filter", "mask"] = Field(
            default="filter",
            description="filter: drop records with any hit; mask: replace each hit with mask_char.",
        )
        mask_char: str = Field(default="*", min_length=1, max_length=1, description="Masking character.")

        @model_validator(mode="after")
        def _lists_exist(self) -> SensitiveWordFilter.Params:
            for cat, p in self.lists.items():
                if not _resolve(p).is_file():
                    raise ValueError(f"lists.{cat}: word list {p!r} not found (looked at {_resolve(p)})")
            return self

    params: Params

    def words(self) -> list[tuple[str, int]]:
        """All (lower-cased word, category index) pairs, de-duplicated."""
        seen: dict[str, int] = {}
        for i, cat in enumerate(CATEGORIES):
            listed = read_word_list(_resolve(self.params.lists[cat])) if cat in self.params.lists else []
            for w in [*listed, *self.params.words.get(cat, [])]:
                seen.setdefault(w.strip().lower(), i)
        return [(w, c) for w, c in seen.items() if w]

    def writes(self, ctx: OperatorContext) -> tuple[str, ...]:
        return self.columns(ctx) if self.params.action == "mask" else ()

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        words = self.words()
        types = {f.name: f.dataType for f in df.schema.fields}
        cols = self.columns(ctx)
        if not words:
            return df.withColumns({STAT + c: F.lit(0) for c in CATEGORIES})
        mask = self.params.mask_char if self.params.action == "mask" else None
        udf = _scan_udf(words, mask)
        out = df
        scanned = []
        for c in cols:
            name = f"_sw_{c}"
            out = out.withColumn(name, udf(text_values(c, types[c])))
            scanned.append(name)
            if mask is not None:
                out = out.withColumn(c, _put_back(F.col(c), types[c], F.col(name)["values"]))
        hits = {
            cat: reduce(lambda a, b: a + b, [F.col(s)["hits"][i] for s in scanned])
            for i, cat in enumerate(CATEGORIES)
        }
        out = out.withColumns({STAT + cat: h for cat, h in hits.items()}).withColumns(
            {f"{STAT}records_{cat}": (F.col(STAT + cat) > 0).cast("int") for cat in CATEGORIES}
        )
        if self.params.action == "filter":
            reasons = F.concat_ws(", ", *[F.when(F.col(STAT + c) > 0, F.lit(c)) for c in CATEGORIES])
            out = out.withColumn(KEEP, reasons == "").withColumn(
                NOTE, F.when(reasons != "", F.concat(F.lit("sensitive words: "), reasons))
            )
        return out.drop(*scanned)


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


def _put_back(col: Column, dtype: T.DataType, values: Column) -> Column:
    """Write masked ``values`` (array<string>) back into a text column of any canonical shape."""
    if isinstance(dtype, T.StringType):
        return values[0]
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StringType):
        return values
    return F.transform(col, lambda a, i: a.withField("text", values[i]))
