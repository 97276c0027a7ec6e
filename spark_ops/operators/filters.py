"""Record filters: blank records and character-length bounds."""

from __future__ import annotations

from functools import reduce

from pydantic import Field, model_validator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import text_length, text_values
from spark_ops.operators.base import Filter, OperatorContext, OperatorParams, register

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
