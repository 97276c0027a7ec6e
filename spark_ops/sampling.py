"""Seeded, partition-independent sampling: a hash key per record and its exact rank, computed in Spark.

``F.rand(seed)`` depends on how rows fall into partitions, so the same spec could take other records on
another cluster. Here a record's key is ``xxhash64(seed, salt..., id, copy)``: a pure function of the
record. Taking "the n records with the smallest keys" then needs each record's rank, which must not be
found by sorting everything in one task or collecting on the driver. :func:`cumulative_rank` splits the
key space into 2**BITS buckets by the top bits of the key, sums the weight of every bucket (a small
aggregate), turns that into per-bucket offsets, and ranks rows within each bucket only -- so the ranking is
spread over the buckets and is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

BITS = 10
KEY = "_sample_key"
BUCKET = "_sample_bucket"
OFFSET = "_sample_offset"
WEIGHT = "_sample_weight"
CUM = "_sample_cum"


def seeded_key(seed: int, *parts: Column | str) -> Column:
    """A 64-bit hash of the seed and ``parts``; identical on any partitioning, executor or run."""
    return F.xxhash64(F.lit(seed), *[F.col(p) if isinstance(p, str) else p for p in parts])


def cumulative_rank(
    df: DataFrame,
    groups: Sequence[str],
    key: Column,
    tiebreak: Sequence[Column] = (),
    weight: Column | None = None,
    limit: Column | None = None,
) -> DataFrame:
    """``df`` with ``CUM``: the summed ``weight`` (default 1, i.e. the rank) of the rows of the same
    ``groups`` whose key is smaller, plus the row's own.

    Rows are ordered by (top bits of the key, key, ``tiebreak``): within one bucket the keys share their
    sign bit, so this is a total order that agrees across buckets. ``limit`` (a column, e.g. each group's
    target) drops whole buckets that start at or beyond it before ranking, so only the buckets that can
    hold a selected row are ranked. The helper columns KEY, BUCKET, OFFSET, WEIGHT stay on the result.
    """
    groups = list(groups)
    keyed = (
        df.withColumn(KEY, key)
        .withColumn(BUCKET, F.shiftrightunsigned(F.col(KEY), 64 - BITS))
        .withColumn(WEIGHT, (weight if weight is not None else F.lit(1)).cast("long"))
    )
    sizes = keyed.groupBy(*groups, BUCKET).agg(F.sum(WEIGHT).alias("_bucket_sum"))
    before = Window.partitionBy(*groups).orderBy(BUCKET).rowsBetween(Window.unboundedPreceding, -1)
    offsets = sizes.select(
        *groups, BUCKET, F.coalesce(F.sum("_bucket_sum").over(before), F.lit(0)).cast("long").alias(OFFSET)
    )
    ranked = keyed.join(F.broadcast(offsets), [*groups, BUCKET])
    if limit is not None:
        ranked = ranked.where(F.col(OFFSET) < limit)
    within = (
        Window.partitionBy(*groups, BUCKET)
        .orderBy(F.col(KEY), *tiebreak)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    return ranked.withColumn(CUM, F.col(OFFSET) + F.sum(WEIGHT).over(within))
