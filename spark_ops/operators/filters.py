"""Record filters: blank records, length (characters, tokens), symbol / Chinese / garbled ratios, repetition
(Gopher-style), regular expressions and truncated samples. Every measure is a Spark SQL expression, except the
repetition fractions, which one Arrow UDF computes per batch with numpy (``repetition.py``)."""

from __future__ import annotations

import re
from abc import abstractmethod
from functools import reduce
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import joined_text, text_length, text_values
from spark_ops.operators.abnormal import GARBLED
from spark_ops.operators.base import Filter, OperatorContext, OperatorParams, register
from spark_ops.operators.regex import check_java_regex
from spark_ops.operators.repetition import repetition_udf

# Whitespace, Unicode separators and invisible format characters (zero-width space, BOM, ...).
BLANK = r"^[\s\p{Z}\p{Cf}]*$"


def is_blank(text: Column) -> Column:
    """True for null, empty or invisible-only text."""
    return text.isNull() | text.rlike(BLANK)


def _types(df: DataFrame) -> dict[str, T.DataType]:
    return {f.name: f.dataType for f in df.schema.fields}


@register
class EmptyFilter(Filter):
    """Drop records where a checked column is blank: an empty string, or a list with no or a blank element."""

    name = "empty_filter"

    def _blank(self, df: DataFrame, ctx: OperatorContext) -> list[tuple[str, Column]]:
        types = _types(df)
        out = []
        for c in self.columns(ctx):
            values = text_values(c, types[c])
            out.append((c, values.isNull() | (F.size(values) == 0) | F.exists(values, is_blank)))
        return out

    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        return ~reduce(lambda a, b: a | b, (blank for _, blank in self._blank(df, ctx)))

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column:
        return F.coalesce(*[F.when(blank, F.lit(f"blank {c}")) for c, blank in self._blank(df, ctx)])


@register
class LengthFilter(Filter):
    """Keep records whose total characters over the checked columns lie in [min_chars, max_chars]."""

    name = "length_filter"

    class Params(OperatorParams):
        min_chars: int = Field(default=1, ge=0, description="Fewest characters a record may have.")
        max_chars: int | None = Field(
            default=None, ge=1, description="Most characters (None: no upper bound)."
        )

        @model_validator(mode="after")
        def _ordered(self) -> LengthFilter.Params:
            if self.max_chars is not None and self.max_chars < self.min_chars:
                raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
            return self

    params: Params

    def _length(self, df: DataFrame, ctx: OperatorContext) -> Column:
        types = _types(df)
        return reduce(lambda a, b: a + b, (text_length(c, types[c]) for c in self.columns(ctx)))

    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        n = self._length(df, ctx)
        ok = n >= self.params.min_chars
        return ok if self.params.max_chars is None else ok & (n <= self.params.max_chars)

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column:
        n = self._length(df, ctx)
        low = F.concat(F.lit("length "), n.cast("string"), F.lit(f" < min_chars {self.params.min_chars}"))
        if self.params.max_chars is None:
            return low
        high = F.concat(F.lit("length "), n.cast("string"), F.lit(f" > max_chars {self.params.max_chars}"))
        return F.when(n < self.params.min_chars, low).otherwise(high)


def _joined(df: DataFrame, columns: tuple[str, ...]) -> Column:
    """The checked columns as one string, turns and columns separated by newlines."""
    types = _types(df)
    return F.concat_ws("\n", *[joined_text(c, types[c], "\n") for c in columns])


def _nonspace(text: Column) -> Column:
    return F.length(F.regexp_replace(text, r"[\s\p{Z}]", ""))


def _ratio(count: Column, total: Column) -> Column:
    """count / total, 0 for an empty text (the empty filter is the one that judges those)."""
    return F.when(total > 0, count / total).otherwise(F.lit(0.0))


def _fmt(x: Column) -> Column:
    return F.format_number(x, 3)


class _RangeParams(OperatorParams):
    @model_validator(mode="after")
    def _ordered(self) -> _RangeParams:
        lo, hi = getattr(self, "min_ratio", None), getattr(self, "max_ratio", None)
        if lo is not None and hi is not None and hi < lo:
            raise ValueError(f"max_ratio ({hi}) is below min_ratio ({lo})")
        return self


class _RatioFilter(Filter):
    """A filter on one ratio in [0, 1] with optional bounds; subclasses define ``ratio``."""

    label: str

    @abstractmethod
    def ratio(self, text: Column) -> Column:
        """The ratio in [0, 1] this filter bounds."""

    def _r(self, df: DataFrame, ctx: OperatorContext) -> Column:
        return self.ratio(_joined(df, self.columns(ctx)))

    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        r, p = self._r(df, ctx), self.params
        ok = F.lit(True)
        if getattr(p, "min_ratio", None) is not None:
            ok = ok & (r >= p.min_ratio)
        if getattr(p, "max_ratio", None) is not None:
            ok = ok & (r <= p.max_ratio)
        return ok

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column:
        p = self.params
        bounds = f"[{getattr(p, 'min_ratio', None) or 0}, {getattr(p, 'max_ratio', None) or 1}]"
        return F.concat(F.lit(f"{self.label} "), _fmt(self._r(df, ctx)), F.lit(f" outside {bounds}"))


# A token, approximately: one CJK character (Han, kana, Hangul), or a run of other non-space characters.
CJK_CHAR = r"[\p{IsHan}\p{IsHiragana}\p{IsKatakana}\p{IsHangul}]"
TOKEN = rf"{CJK_CHAR}|[^\s\p{{Z}}\p{{IsHan}}\p{{IsHiragana}}\p{{IsKatakana}}\p{{IsHangul}}]+"


def approx_tokens(text: Column) -> Column:
    """Approximate token count: each CJK character counts one, each whitespace-separated run of other text one.

    Not a model tokenizer: BPE vocabularies give ~0.6-1.5 tokens per Chinese character and ~1.3 per English
    word, so treat the bounds as rough.
    """
    return F.regexp_count(text, F.lit(TOKEN))


@register
class TokenLengthFilter(Filter):
    """Keep records whose approximate token count (CJK characters + other words) lies in [min_tokens, max_tokens]."""

    name = "token_length_filter"

    class Params(OperatorParams):
        min_tokens: int = Field(default=1, ge=0, description="Fewest approximate tokens a record may have.")
        max_tokens: int | None = Field(
            default=None, ge=1, description="Most approximate tokens (None: no bound)."
        )

        @model_validator(mode="after")
        def _ordered(self) -> TokenLengthFilter.Params:
            if self.max_tokens is not None and self.max_tokens < self.min_tokens:
                raise ValueError(f"max_tokens ({self.max_tokens}) is below min_tokens ({self.min_tokens})")
            return self

    params: Params

    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        n = approx_tokens(_joined(df, self.columns(ctx)))
        ok = n >= self.params.min_tokens
        return ok if self.params.max_tokens is None else ok & (n <= self.params.max_tokens)

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column:
        n = approx_tokens(_joined(df, self.columns(ctx)))
        return F.concat(
            F.lit("~"),
            n.cast("string"),
            F.lit(f" tokens outside [{self.params.min_tokens}, {self.params.max_tokens or 'no limit'}]"),
        )


@register
class SymbolRatioFilter(_RatioFilter):
    """Drop records where punctuation and symbols (Unicode P and S) make up too much of the non-space text."""

    name = "symbol_ratio_filter"
    label = "symbol ratio"

    class Params(_RangeParams):
        max_ratio: float = Field(
            default=0.25,
            ge=0,
            le=1,
            description="Largest share of punctuation/symbol characters among non-space characters. Prose "
            "(Chinese or English) sits near 0.05-0.15; tables of symbols, ASCII art, link lists go above 0.3.",
        )

    params: Params

    def ratio(self, text: Column) -> Column:
        return _ratio(F.regexp_count(text, F.lit(r"[\p{P}\p{S}]")), _nonspace(text))


@register
class ChineseRatioFilter(_RatioFilter):
    """Keep records whose share of Chinese (Han) characters among non-space characters lies in the bounds."""

    name = "chinese_ratio_filter"
    label = "Chinese ratio"

    class Params(_RangeParams):
        min_ratio: float = Field(
            default=0.3,
            ge=0,
            le=1,
            description="Smallest share of Han characters among non-space characters (Chinese prose: ~0.7-0.9; "
            "Chinese with code or English terms: 0.3-0.6).",
        )
        max_ratio: float = Field(
            default=1.0, ge=0, le=1, description="Largest share (e.g. 0.1 keeps non-Chinese)."
        )

    params: Params

    def ratio(self, text: Column) -> Column:
        return _ratio(F.regexp_count(text, F.lit(r"\p{IsHan}")), _nonspace(text))


@register
class GarbledRatioFilter(_RatioFilter):
    """Drop records where garbled characters (what `remove_garbled` removes, plus private-use and control
    characters) make up too much of the text."""

    name = "garbled_ratio_filter"
    label = "garbled ratio"

    class Params(_RangeParams):
        max_ratio: float = Field(
            default=0.05,
            ge=0,
            le=1,
            description="Largest share of garbled characters among non-space characters.",
        )

    params: Params

    def ratio(self, text: Column) -> Column:
        bad = rf"{GARBLED}|[\p{{Co}}\x00-\x08\x0B\x0C\x0E-\x1F]"
        garbled = F.length(text) - F.length(F.regexp_replace(text, bad, ""))
        return _ratio(garbled, _nonspace(text))


# The column RepetitionFilter.annotate adds for its own use (dropped again before it returns).
_REP = "_repetition"


@register
class RepetitionFilter(Filter):
    """Drop repetitive text with Gopher's rules (Rae et al. 2021): duplicate lines and paragraphs (by count and
    by characters), the most frequent 2-4-gram's share of characters, and the share of repeated 5-10-grams.

    Tokens are words for Latin text and single characters for CJK text (no segmenter). The repeated-n-gram
    rule counts n-gram occurrences that repeat an earlier one, a cheaper stand-in for Gopher's share of
    characters covered by repeated n-grams. Set a line/paragraph threshold to null, or leave an n out of a
    mapping, to skip that rule. The reason a record is dropped names every rule it fails, with its value.

    The checked columns are joined in the JVM; every fraction is then computed in one Arrow UDF call per
    batch (``spark_ops.operators.repetition``: Arrow compute, integer ids and numpy, no Python object per
    token): about 10,000 documents of ~1,000 characters per second per core for the measures themselves;
    end-to-end figures in benchmarks/RESULTS.md (benchmarks/bench_repetition_filter.py).
    """

    name = "repetition_filter"

    @property
    def fusable(self) -> bool:
        return False  # an Arrow UDF: runs as a step of its own (see Operator.fusable)

    class Params(OperatorParams):
        max_dup_line_frac: float | None = Field(
            default=0.30, ge=0, le=1, description="Duplicate lines / lines."
        )
        max_dup_para_frac: float | None = Field(
            default=0.30, ge=0, le=1, description="Duplicate paragraphs (blank-line separated) / paragraphs."
        )
        max_dup_line_char_frac: float | None = Field(
            default=0.20, ge=0, le=1, description="Characters in duplicate lines / characters in lines."
        )
        max_dup_para_char_frac: float | None = Field(
            default=0.20,
            ge=0,
            le=1,
            description="Characters in duplicate paragraphs / characters in paragraphs.",
        )
        top_ngram_max_char_frac: dict[int, float] = Field(
            default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
            description="n -> largest share of characters taken by the most frequent n-gram (when it occurs "
            "more than once).",
        )
        dup_ngram_max_frac: dict[int, float] = Field(
            default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
            description="n -> largest share of n-gram occurrences that repeat an earlier one.",
        )
        min_tokens: int = Field(
            default=20,
            ge=0,
            description="The n-gram rules apply only to texts with at least this many tokens.",
        )

        @field_validator("top_ngram_max_char_frac", "dup_ngram_max_frac")
        @classmethod
        def _n_range(cls, v: dict[int, float]) -> dict[int, float]:
            bad = [n for n, f in v.items() if not (1 <= n <= 20) or not (0 <= f <= 1)]
            if bad:
                raise ValueError(f"n must be 1-20 and fractions 0-1; bad entries for n = {bad}")
            return v

    params: Params

    def _rules(self) -> list[tuple[str, str, float]]:
        """(measure field, label in the drop reason, threshold) of every rule that is on."""
        p = self.params
        rules: list[tuple[str, str, float | None]] = [
            ("dup_line", "duplicate lines", p.max_dup_line_frac),
            ("dup_para", "duplicate paragraphs", p.max_dup_para_frac),
            ("dup_line_char", "duplicate line characters", p.max_dup_line_char_frac),
            ("dup_para_char", "duplicate paragraph characters", p.max_dup_para_char_frac),
        ]
        rules += [
            (f"top_{n}", f"top {n}-gram characters", f) for n, f in sorted(p.top_ngram_max_char_frac.items())
        ]
        rules += [(f"dup_{n}", f"repeated {n}-grams", f) for n, f in sorted(p.dup_ngram_max_frac.items())]
        return [(field, label, limit) for field, label, limit in rules if limit is not None]

    def _measure(self, text: Column) -> Column:
        """The struct of every fraction, for a text column (one Arrow UDF call per batch)."""
        p = self.params
        udf = repetition_udf(p.top_ngram_max_char_frac, p.dup_ngram_max_frac, p.min_tokens)
        return udf(text)

    def _measures(self, df: DataFrame, ctx: OperatorContext) -> Column:
        # annotate computes the struct once as a column; keep() / note() called on their own compute it inline.
        return F.col(_REP) if _REP in df.columns else self._measure(_joined(df, self.columns(ctx)))

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        measured = df.withColumn(_REP, self._measure(_joined(df, self.columns(ctx))))
        return super().annotate(measured, ctx).drop(_REP)

    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        m = self._measures(df, ctx)
        return reduce(lambda a, b: a & b, [m[field] <= lim for field, _, lim in self._rules()], F.lit(True))

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column:
        m = self._measures(df, ctx)
        parts = [
            F.when(m[field] > lim, F.concat(F.lit(f"{label} "), _fmt(m[field]), F.lit(f" > {lim}")))
            for field, label, lim in self._rules()
        ]
        return F.concat_ws("; ", *parts) if parts else F.lit("")


@register
class RegexFilter(Filter):
    """Drop records that match any pattern (action 'drop'), or keep only those that do (action 'keep')."""

    name = "regex_filter"

    class Params(OperatorParams):
        patterns: list[str] = Field(
            min_length=1, description="Java regular expressions (validated with Python's re)."
        )
        action: Literal["drop", "keep"] = Field(
            default="drop", description="'drop': drop matching records; 'keep': keep only matching records."
        )

        @field_validator("patterns")
        @classmethod
        def _compile(cls, v: list[str]) -> list[str]:
            return [check_java_regex(pat, f"patterns[{i}]") for i, pat in enumerate(v)]

    params: Params

    def _matches(self, df: DataFrame, ctx: OperatorContext) -> Column:
        text = _joined(df, self.columns(ctx))
        return reduce(lambda a, b: a | b, [text.rlike(p) for p in self.params.patterns])

    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        m = self._matches(df, ctx)
        return ~m if self.params.action == "drop" else m

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column:
        text = _joined(df, self.columns(ctx))
        if self.params.action == "keep":
            return F.lit("matches none of the patterns")
        return F.coalesce(*[F.when(text.rlike(p), F.lit(f"matches {p!r}")) for p in self.params.patterns])


DEFAULT_TERMINAL = "。！？!?.…;；~～"
DEFAULT_CLOSING = "\"'”’」』）)】》]>*"


@register
class TruncationFilter(Filter):
    """Drop samples that end mid-sentence: the last character (after closing quotes and brackets) is not
    terminal punctuation. Checks each column's last text (for a dialogue, the last turn)."""

    name = "truncation_filter"

    class Params(OperatorParams):
        terminal: str = Field(
            default=DEFAULT_TERMINAL, min_length=1, description="Characters that end a sentence."
        )
        closing: str = Field(
            default=DEFAULT_CLOSING,
            description="Characters that may follow the terminal one (closing quotes, brackets, Markdown).",
        )
        min_chars: int = Field(
            default=0, ge=0, description="Texts shorter than this are not judged (titles, one-word answers)."
        )
        code_fence_ends: bool = Field(
            default=True, description="A text ending with a closed ``` code block counts as complete."
        )

    params: Params

    def _truncated(self, df: DataFrame, ctx: OperatorContext) -> list[tuple[str, Column]]:
        types = _types(df)
        p = self.params
        closing = "[" + "".join(re.escape(c) for c in p.closing) + r"\s\p{Z}]*$"
        terminal = "[" + "".join(re.escape(c) for c in p.terminal) + "]$"
        out = []
        for c in self.columns(ctx):
            last = F.try_element_at(text_values(c, types[c]), F.lit(-1))
            stripped = F.regexp_replace(last, closing, "")
            judged = F.length(F.trim(last)) >= F.greatest(F.lit(p.min_chars), F.lit(1))
            complete = stripped.rlike(terminal)
            if p.code_fence_ends:
                complete = complete | last.rlike(r"```\s*$")
            out.append((c, judged & ~complete))
        return out

    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        return ~reduce(lambda a, b: a | b, [t for _, t in self._truncated(df, ctx)])

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column:
        return F.coalesce(*[F.when(t, F.lit(f"{c} ends mid-sentence")) for c, t in self._truncated(df, ctx)])
