"""Deduplication. Exact: one record per content hash; near-duplicate (MinHash) joins later."""

from __future__ import annotations

from pydantic import Field
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_ops.canonical import POSITION, joined_text
from spark_ops.operators.base import KEEP, NOTE, Operator, OperatorContext, OperatorParams, register

HASH = "_dedupe_hash"
# Duplicated hashes joined back by broadcast up to this many (~100 bytes each); above, a shuffle join.
BROADCAST_GROUPS = 2_000_000


def content_key(df: DataFrame, columns: tuple[str, ...], normalize: bool = True) -> Column:
    """The text exact duplicates share: ``columns`` joined, lower-cased and whitespace-collapsed if ``normalize``.

    The quality report counts duplicates with the same key, so its count is what exact_dedupe would drop.
    """
    types = {f.name: f.dataType for f in df.schema.fields}
    # \u0002 between columns: ("ab", "c") and ("a", "bc") must not collide.
    key = F.concat_ws("\u0002", *[joined_text(c, types[c]) for c in columns])
    if normalize:
        key = F.trim(F.regexp_replace(F.lower(key), r"[\s\p{Z}]+", " "))
    return key


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
        key = content_key(df, self.columns(ctx), self.params.normalize)
        # Exact duplicates share their id (a content hash), so point at where the kept copy came from.
        if POSITION in df.columns:
            pos = F.col(POSITION)
            line = F.coalesce(F.concat(F.lit(":"), pos["line"].cast("string")), F.lit(""))
            where = F.concat(pos["file"], line)
        else:
            where = F.concat(F.lit("id "), F.col("id"))
        order = F.struct(*[F.col(c) for c in ctx.order_by])
        hashed = df.withColumn(HASH, F.unhex(F.sha2(key, 256)))
        # Only the 32-byte hashes and order keys are shuffled, never the text; groups of one -- almost all --
        # are dropped by the aggregation, so what joins back is the duplicated hashes alone.
        groups = (
            hashed.groupBy(HASH)
            .agg(
                F.count(F.lit(1)).alias("_n"),
                F.min(order).alias("_first_key"),
                F.min_by(where, order).alias("_first"),
            )
            .filter(F.col("_n") > 1)
            .drop("_n")
            .localCheckpoint()
        )
        if groups.count() <= BROADCAST_GROUPS:
            groups = F.broadcast(groups)  # the big frame keeps its partitioning (and so its order)
        out = hashed.join(groups, HASH, "left")
        dup = F.col("_first_key").isNotNull() & (order != F.col("_first_key"))
        return (
            out.withColumn(KEEP, ~dup)
            .withColumn(NOTE, F.when(dup, F.concat(F.lit("duplicate of "), F.col("_first"))))
            .drop(HASH, "_first_key", "_first")
        )
