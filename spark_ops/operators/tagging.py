"""Tagging: add labels to ``meta.tags`` (language, length bucket, source, user tags); mixing by label reads them.

Tags are ``key:value`` strings. A tagger first removes its own earlier tags (same key), so running a recipe
twice, or re-tagging with other bounds, leaves one tag per key. Records are never dropped.
"""

from __future__ import annotations

from abc import abstractmethod

from pydantic import Field, field_validator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_ops.operators.base import Operator, OperatorContext, OperatorParams, register
from spark_ops.operators.filters import _joined, _ratio
from spark_ops.operators.regex import check_java_regex

META = "meta"


def _tagged(df: DataFrame, new: Column, replace_prefix: str | None) -> DataFrame:
    """``df`` with ``new`` (array<string>; null or empty: nothing) merged into meta.tags, keeping its order."""
    tags = F.coalesce(F.col(META)["tags"], F.array().cast("array<string>"))
    if replace_prefix is not None:
        tags = F.filter(tags, lambda t: ~t.startswith(replace_prefix))
    merged = F.array_distinct(F.concat(tags, F.coalesce(new, F.array().cast("array<string>"))))
    source = F.col(META)["source"]
    return df.withColumn(META, F.struct(source.alias("source"), merged.alias("tags")))


class Tagger(Operator):
    """An operator that only writes ``meta``; subclasses compute the tags to add."""

    row_local = True

    prefix: str | None = None

    def writes(self, ctx: OperatorContext) -> tuple[str, ...]:
        return (META,)

    @abstractmethod
    def tags(self, df: DataFrame, ctx: OperatorContext) -> Column:
        """The tags (array<string>) to add to each record."""

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        return _tagged(df, self.tags(df, ctx), self.prefix)


@register
class LanguageTagger(Tagger):
    """Tag ``lang:zh``, ``lang:en`` or ``lang:other`` from character classes (cheap, in Spark SQL; not a model).

    zh: Han characters are at least ``zh_min_ratio`` of the letters (Han + all other letters; a Chinese text
    full of English terms still counts as zh, since one English word is ~5 letters). en: otherwise, when
    Latin letters are at least ``en_min_ratio`` of the letters. Japanese kana or Korean Hangul, Cyrillic,
    Arabic ... and texts without letters: other.
    """

    name = "tag_language"
    prefix = "lang:"

    class Params(OperatorParams):
        zh_min_ratio: float = Field(default=0.3, ge=0, le=1, description="Share of Han among letters for zh.")
        en_min_ratio: float = Field(
            default=0.8, ge=0, le=1, description="Share of Latin among letters for en."
        )
        kana_max_ratio: float = Field(
            default=0.05,
            ge=0,
            le=1,
            description="Above this share of kana among letters a Han-rich text is Japanese, hence other.",
        )

    params: Params

    def tags(self, df: DataFrame, ctx: OperatorContext) -> Column:
        p = self.params
        text = _joined(df, self.columns(ctx))
        letters = F.regexp_count(text, F.lit(r"\p{L}"))
        han = _ratio(F.regexp_count(text, F.lit(r"\p{IsHan}")), letters)
        kana = _ratio(F.regexp_count(text, F.lit(r"[\p{IsHiragana}\p{IsKatakana}]")), letters)
        latin = _ratio(F.regexp_count(text, F.lit(r"\p{IsLatin}")), letters)
        lang = (
            F.when((han >= p.zh_min_ratio) & (kana <= p.kana_max_ratio) & (han > 0), F.lit("zh"))
            .when((latin >= p.en_min_ratio) & (latin > 0), F.lit("en"))
            .otherwise(F.lit("other"))
        )
        return F.array(F.concat(F.lit(self.prefix), lang))


@register
class LengthBucketTagger(Tagger):
    """Tag ``length:<bucket>`` by characters over the text columns, e.g. with bounds [256, 1024, 4096]:
    length:0-255, length:256-1023, length:1024-4095, length:4096+."""

    name = "tag_length"
    prefix = "length:"

    class Params(OperatorParams):
        bounds: list[int] = Field(
            default_factory=lambda: [256, 1024, 4096],
            min_length=1,
            description="Increasing bucket boundaries in characters (each starts a new bucket).",
        )

        @field_validator("bounds")
        @classmethod
        def _increasing(cls, v: list[int]) -> list[int]:
            if any(b <= 0 for b in v) or any(b >= c for b, c in zip(v, v[1:], strict=False)):
                raise ValueError(f"bounds must be positive and strictly increasing; got {v}")
            return v

    params: Params

    def tags(self, df: DataFrame, ctx: OperatorContext) -> Column:
        n = F.length(_joined(df, self.columns(ctx)))
        edges = [0, *self.params.bounds]
        expr = F.lit(f"{self.prefix}{edges[-1]}+")
        for lo, hi in reversed(list(zip(edges, edges[1:], strict=False))):
            expr = F.when(n < hi, F.lit(f"{self.prefix}{lo}-{hi - 1}")).otherwise(expr)
        return F.array(expr)


@register
class SourceTagger(Tagger):
    """Tag ``source:<meta.source>`` (the input's source label, or its file name); optionally set the source first."""

    name = "tag_source"
    prefix = "source:"

    class Params(OperatorParams):
        source: str | None = Field(
            default=None, description="Set meta.source to this before tagging (None: keep each record's own)."
        )

    params: Params

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        if self.params.source is not None:
            source = F.lit(self.params.source).alias("source")
            df = df.withColumn(META, F.struct(source, F.col(META)["tags"].alias("tags")))
        return super().annotate(df, ctx)

    def tags(self, df: DataFrame, ctx: OperatorContext) -> Column:
        source = F.col(META)["source"]
        return F.when(source.isNotNull() & (source != ""), F.array(F.concat(F.lit(self.prefix), source)))


@register
class UserTagger(Tagger):
    """Add the user's tags to every record, or only to records whose text matches ``if_matches``."""

    name = "add_tags"

    class Params(OperatorParams):
        tags: list[str] = Field(
            min_length=1, description="Tags to add, e.g. ['domain:finance', 'quality:high']."
        )
        if_matches: str | None = Field(
            default=None,
            description="A Java regular expression; only records whose text matches get the tags.",
        )

        @field_validator("tags")
        @classmethod
        def _non_blank(cls, v: list[str]) -> list[str]:
            if any(not t.strip() for t in v):
                raise ValueError("tags must not be blank")
            return v

        @field_validator("if_matches")
        @classmethod
        def _compiles(cls, v: str | None) -> str | None:
            return None if v is None else check_java_regex(v, "if_matches")

    params: Params

    def tags(self, df: DataFrame, ctx: OperatorContext) -> Column:
        new = F.array(*[F.lit(t) for t in self.params.tags])
        if self.params.if_matches is None:
            return new
        return F.when(_joined(df, self.columns(ctx)).rlike(self.params.if_matches), new)
