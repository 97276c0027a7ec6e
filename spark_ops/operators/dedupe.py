"""Deduplication. Exact: one record per content hash; near-duplicate (MinHash) joins later."""

from __future__ import annotations

from pydantic import Field
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from spark_ops.canonical import POSITION, joined_text
from spark_ops.operators.base import KEEP, NOTE, Operator, OperatorContext, OperatorParams, register

HASH = "_dedupe_hash"


@register
class ExactDeduplicator(Operator):
    """Keep the first record (in input order) of every group with the same text; for SFT, context + target."""

    name = "exact_dedupe"

    class Params(OperatorParams):
        normalize: bool = Field(
            default=True,
            description="Compare lower-cased text with whitespace runs collapsed, so 'A  b' equals 'a b'.",
        )

    params: Params

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        types = {f.name: f.dataType for f in df.schema.fields}
        # \u0002 between columns: ("ab", "c") and ("a", "bc") must not collide.
        key = F.concat_ws("\u0002", *[joined_text(c, types[c]) for c in self.columns(ctx)])
        if self.params.normalize:
            key = F.trim(F.regexp_replace(F.lower(key), r"[\s\p{Z}]+", " "))
        first = Window.partitionBy(HASH).orderBy(*ctx.order_by)
        out = df.withColumn(HASH, F.sha2(key, 256))
        # Exact duplicates share their id (a content hash), so point at where the kept copy came from.
        if POSITION in df.columns:
            pos = F.col(POSITION)
            line = F.coalesce(F.concat(F.lit(":"), pos["line"].cast("string")), F.lit(""))
            where = F.concat(pos["file"], line)
        else:
            where = F.concat(F.lit("id "), F.col("id"))
        out = out.withColumn("_rank", F.row_number().over(first)).withColumn(
            "_first", F.first(where).over(first)
        )
        return (
            out.withColumn(KEEP, F.col("_rank") == 1)
            .withColumn(NOTE, F.when(F.col("_rank") > 1, F.concat(F.lit("duplicate of "), F.col("_first"))))
            .drop(HASH, "_rank", "_first")
        )
