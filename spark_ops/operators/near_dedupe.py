"""Near-duplicate dedupe (MinHash-LSH + connected components), QA-pair dedupe and decontamination.

near_dedupe: shingles and MinHash band keys come from one vectorised Arrow function (``mapInArrow`` over
:mod:`spark_ops.operators.minhash`: character n-grams of CJK text, word n-grams of the rest, all hashed by
numpy passes over a batch's code points -- no Python per shingle). Band keys are grouped by a hash
aggregation; each bucket with several members links them to its smallest member; candidate links are
verified by exact Jaccard of the two texts' shingle sets (again in ``mapInArrow``, on the candidates only);
clusters are the connected components of the verified links -- in one process with scipy while the links
fit (``max_local_edges``; they number about the duplicates, never the records), else distributed by
min-label propagation with pointer jumping in Spark. Nothing holds all signatures at once: each batch's
signatures live in its Arrow function, and only the band keys (one row per record and band) are shuffled.
The drop decisions join back through a broadcast, so the data keeps its partitioning and order.

Decontamination still shingles in the JVM (``shingle_hashes``: the same definition in Spark SQL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import POSITION, content_columns, joined_text
from spark_ops.operators.base import (
    KEEP,
    NOTE,
    Operator,
    OperatorContext,
    OperatorError,
    OperatorParams,
    register,
)
from tasks.specs import OperatorStep, Usage

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("forgeflow.spark_ops")
NODE = "_nd_node"
CJK = r"\p{IsHan}\p{IsHiragana}\p{IsKatakana}\p{IsHangul}"
MAX_CC_ITERATIONS = 60


def shingle_hashes(text: Column, cjk_ngram: int, word_ngram: int) -> Column:
    """Distinct ``xxhash64`` of the character n-grams of the CJK characters and the word n-grams of the rest.

    Each n-gram list is one ``regexp_extract_all`` with a capturing look-ahead (every start position in one
    JVM pass); a lambda indexing into the text would re-evaluate the text expression per n-gram. A text
    shorter than n yields itself as one shingle, so short records still compare.
    """
    low = F.lower(F.coalesce(text, F.lit("")))
    cjk = F.regexp_replace(low, f"[^{CJK}]", "")
    chars = F.regexp_extract_all(cjk, F.lit(f"(?=([\\s\\S]{{{cjk_ngram}}}))"), F.lit(1))
    chars = (
        F.when(F.size(chars) > 0, chars)
        .when(F.length(cjk) > 0, F.array(cjk))
        .otherwise(F.array().cast("array<string>"))
    )
    word = f"[\\p{{L}}\\p{{N}}&&[^{CJK}]]"
    spaced = F.trim(F.regexp_replace(low, f"(?:[^\\p{{L}}\\p{{N}}]|[{CJK}])+", " "))
    grams = F.regexp_extract_all(
        spaced, F.lit(f"(?<!{word})(?=({word}+(?: {word}+){{{word_ngram - 1}}}))"), F.lit(1)
    )
    grams = (
        F.when(F.size(grams) > 0, grams)
        .when(F.length(spaced) > 0, F.array(spaced))
        .otherwise(F.array().cast("array<string>"))
    )
    # "\u0001" marks word shingles so a word n-gram never collides with a CJK one of the same characters
    return F.array_distinct(
        F.concat(
            F.transform(chars, lambda s: F.xxhash64(s)),
            F.transform(grams, lambda s: F.xxhash64(F.lit("\u0001"), s)),
        )
    )


def _minhash_keys(text_col: int, cjk_ngram: int, word_ngram: int, bands: int, rows: int, seed: int) -> Any:
    """The ``mapInArrow`` function: (node, ..., text) batches -> (node, band key) rows, one per band."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import numpy as np
        import pyarrow as pa

        from spark_ops.operators.minhash import MinHasher, shingle

        hasher = MinHasher(bands, rows, seed)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            sh = shingle(batch.column(text_col).to_pylist(), cjk_ngram, word_ngram)
            present, sig = hasher.signatures(sh)
            keys = hasher.band_keys(sig)
            nodes = batch.column(0).to_numpy(zero_copy_only=False)[present]
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.repeat(nodes, bands)), pa.array(keys.reshape(-1))], names=[NODE, "key"]
            )

    return fn


def _verified(threshold: float, cjk_ngram: int, word_ngram: int) -> Any:
    """The ``mapInArrow`` function: (src, dst, text_a, text_b) -> the (src, dst) pairs at or above threshold."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import numpy as np
        import pyarrow as pa

        from spark_ops.operators.minhash import jaccard, shingle

        for batch in batches:
            if batch.num_rows == 0:
                continue
            a = shingle(batch.column(2).to_pylist(), cjk_ngram, word_ngram)
            b = shingle(batch.column(3).to_pylist(), cjk_ngram, word_ngram)
            keep = np.fromiter(
                (jaccard(a.of(i), b.of(i)) >= threshold for i in range(batch.num_rows)),
                dtype=bool,
                count=batch.num_rows,
            )
            mask = pa.array(keep)
            yield pa.RecordBatch.from_arrays(
                [batch.column(0).filter(mask), batch.column(1).filter(mask)], names=["src", "dst"]
            )

    return fn


def local_components(src: Any, dst: Any) -> tuple[Any, Any]:
    """(node, label) arrays for an undirected edge list held in numpy: label = smallest node of its component
    (scipy's connected components over the sparse adjacency matrix)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    nodes = np.unique(np.concatenate([src, dst]))
    i, j = np.searchsorted(nodes, src), np.searchsorted(nodes, dst)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(len(nodes), len(nodes)))
    _, comp = scipy_components(graph, directed=False)
    smallest = np.full(comp.max() + 1 if len(comp) else 0, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, comp, nodes)
    return nodes, smallest[comp]


def connected_components(edges: DataFrame) -> DataFrame:
    """``(node, label)`` for every node of an undirected edge list ``(src, dst)``: label = smallest node id
    of its component. Min-label propagation plus pointer jumping; each round is a few joins on the edges,
    and the lineage is cut every round so the plan does not grow."""
    both = edges.select("src", "dst").union(
        edges.select(F.col("dst").alias("src"), F.col("src").alias("dst"))
    )
    both = both.localCheckpoint()
    labels = both.groupBy(F.col("src").alias("node")).agg(F.least(F.col("src"), F.min("dst")).alias("label"))
    labels = labels.localCheckpoint()
    for _ in range(MAX_CC_ITERATIONS):
        pulled = both.join(labels, both["src"] == labels["node"]).select(
            F.col("dst").alias("node"), F.col("label")
        )
        merged = labels.union(pulled).groupBy("node").agg(F.min("label").alias("label")).localCheckpoint()
        # pointer jumping: a node takes its label's label; the renamed copy keeps the self-join unambiguous
        parent = merged.select(F.col("node").alias("p_node"), F.col("label").alias("p_label"))
        jumped = (
            merged.join(parent, merged["label"] == parent["p_node"], "left")
            .select("node", F.least("label", F.coalesce("p_label", "label")).alias("label"))
            .localCheckpoint()
        )
        changed = (
            jumped.alias("n")
            .join(labels.alias("o"), "node")
            .filter(F.col("n.label") != F.col("o.label"))
            .count()
        )
        labels = jumped
        if changed == 0:
            return labels
    raise RuntimeError(f"connected components did not converge in {MAX_CC_ITERATIONS} rounds -- a bug")


def _where(df: DataFrame) -> Column:
    """Where a record came from, for the 'duplicate of ...' note."""
    if POSITION in df.columns:
        pos = F.col(POSITION)
        line = F.coalesce(F.concat(F.lit(":"), pos["line"].cast("string")), F.lit(""))
        return F.concat(pos["file"], line)
    return F.concat(F.lit("id "), F.col("id"))


class _ShingleParams(OperatorParams):
    cjk_ngram: int = Field(default=5, ge=1, le=50, description="Characters per shingle over CJK text.")
    word_ngram: int = Field(default=2, ge=1, le=50, description="Words per shingle over non-CJK text.")


@register
class NearDeduplicator(Operator):
    """Drop near-duplicates: MinHash-LSH candidates, verified by Jaccard, clustered by connected components;
    each cluster keeps its first record in input order."""

    name = "near_dedupe"

    class Params(_ShingleParams):
        bands: int = Field(
            default=50, ge=1, le=512, description="LSH bands (more: higher recall, more candidates)."
        )
        rows: int = Field(
            default=3,
            ge=1,
            le=32,
            description="MinHash values per band (more: fewer false candidates); bands x rows permutations.",
        )
        threshold: float = Field(
            default=0.35,
            gt=0,
            le=1,
            description="Jaccard similarity of shingle sets at or above which two records are duplicates.",
        )
        verify: bool = Field(
            default=True,
            description="Check every LSH candidate pair's exact Jaccard against threshold (off: trust LSH).",
        )
        seed: int = Field(
            default=42, description="Seed of the MinHash permutations (results are deterministic)."
        )
        max_local_edges: int = Field(
            default=10_000_000,
            ge=0,
            description="Verified duplicate links clustered in one process (scipy, 16 bytes a link) up to this "
            "many; above it, connected components run distributed in Spark (slower, unbounded).",
        )

    params: Params

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        p = self.params
        types = {f.name: f.dataType for f in df.schema.fields}
        text = F.concat_ws("\n", *[joined_text(c, types[c], "\n") for c in self.columns(ctx)])
        order = [F.col(c) for c in ctx.order_by]
        # A 64-bit hash of the order key names a record in joins (unique per record: the key is).
        keyed = df.withColumn(NODE, F.xxhash64(F.struct(*order)))
        texts = keyed.select(NODE, text.alias("_nd_text"))
        key_schema = T.StructType([T.StructField(NODE, T.LongType()), T.StructField("key", T.LongType())])
        buckets = texts.mapInArrow(
            _minhash_keys(1, p.cjk_ngram, p.word_ngram, p.bands, p.rows, p.seed), key_schema
        ).persist()
        t0 = time.monotonic()
        try:
            edges = self._candidate_edges(buckets).localCheckpoint()
        finally:
            buckets.unpersist()
        t1 = time.monotonic()
        if p.verify:
            ends = (
                edges.select(F.col("src").alias(NODE))
                .union(edges.select(F.col("dst").alias(NODE)))
                .distinct()
            )
            cand = texts.join(ends, NODE, "left_semi")
            a = cand.select(F.col(NODE).alias("src"), F.col("_nd_text").alias("_a"))
            b = cand.select(F.col(NODE).alias("dst"), F.col("_nd_text").alias("_b"))
            pairs = edges.join(a, "src").join(b, "dst").select("src", "dst", "_a", "_b")
            edge_schema = T.StructType(
                [T.StructField("src", T.LongType()), T.StructField("dst", T.LongType())]
            )
            edges = pairs.mapInArrow(
                _verified(p.threshold, p.cjk_ngram, p.word_ngram), edge_schema
            ).localCheckpoint()
        n_edges = edges.count()
        t2 = time.monotonic()
        log.info(
            "near_dedupe: signatures + LSH candidates %.1fs, verification %.1fs, %d duplicate links",
            t1 - t0,
            t2 - t1,
            n_edges,
        )
        if n_edges == 0:
            return df.withColumn(KEEP, F.lit(True)).withColumn(NOTE, F.lit(None).cast(T.StringType()))
        if n_edges <= p.max_local_edges:
            labels = self._local_labels(edges)
            small = True
        else:
            labels = connected_components(edges)
            small = False
        node_labels = F.broadcast(labels) if small else labels
        members = keyed.join(node_labels, keyed[NODE] == labels["node"]).select(
            NODE, "label", *ctx.order_by, _where(keyed).alias("_where")
        )
        first = Window.partitionBy("label").orderBy(*ctx.order_by)
        dropped = (
            members.withColumn("_rank", F.row_number().over(first))
            .withColumn("_first", F.first("_where").over(first))
            .filter(F.col("_rank") > 1)
            .select(NODE, F.concat(F.lit("near-duplicate of "), F.col("_first")).alias("_nd_note"))
        )
        if small:  # at most one row per clustered node: the big frame keeps its partitioning and order
            dropped = F.broadcast(dropped.localCheckpoint())
        out = keyed.join(dropped, NODE, "left")
        return (
            out.withColumn(KEEP, F.col("_nd_note").isNull())
            .withColumn(NOTE, F.col("_nd_note"))
            .drop(NODE, "_nd_note")
        )

    @staticmethod
    def _candidate_edges(buckets: DataFrame) -> DataFrame:
        """Each LSH bucket with several members links them to its smallest member (a star: as connecting as
        all pairs, with n - 1 edges instead of n^2 / 2). Singletons -- almost every bucket -- are dropped by
        a hash aggregation before any member is joined."""
        roots = (
            buckets.groupBy("key")
            .agg(F.min(NODE).alias("src"), F.count(F.lit(1)).alias("_n"))
            .filter(F.col("_n") > 1)
            .select("key", "src")
        )
        return (
            buckets.join(roots, "key")
            .filter(F.col(NODE) != F.col("src"))
            .select("src", F.col(NODE).alias("dst"))
            .distinct()
        )

    @staticmethod
    def _local_labels(edges: DataFrame) -> DataFrame:
        """Connected components of a verified edge list small enough for one process (scipy)."""
        import numpy as np
        import pandas as pd

        table = edges.toArrow()
        src = table.column("src").to_numpy().astype(np.int64)
        dst = table.column("dst").to_numpy().astype(np.int64)
        nodes, labels = local_components(src, dst)
        schema = T.StructType([T.StructField("node", T.LongType()), T.StructField("label", T.LongType())])
        return edges.sparkSession.createDataFrame(pd.DataFrame({"node": nodes, "label": labels}), schema)


def _check_target(step: OperatorStep, index: int, usage: Usage) -> None:
    if "target" not in content_columns(usage):
        raise OperatorError(
            f"operators[{index}] ({step.name}): usage {usage} has no answer (target) column; "
            "qa_dedupe applies to sft, model_test and rl data"
        )


@register
class QADeduplicator(Operator):
    """Keep one record per answer: the first (in input order) of the records whose normalised target is equal."""

    name = "qa_dedupe"

    class Params(OperatorParams):
        strip_punctuation: bool = Field(
            default=True,
            description="Ignore case, whitespace and punctuation/symbols when comparing answers.",
        )

    params: Params

    @classmethod
    def from_step(cls, step: OperatorStep, index: int, usage: Usage) -> Operator:
        _check_target(step, index, usage)
        return super().from_step(step, index, usage)

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        answer = F.coalesce(F.col("target"), F.lit(""))
        if self.params.strip_punctuation:
            answer = F.regexp_replace(F.lower(answer), r"[\s\p{Z}\p{P}\p{S}]+", "")
        first = Window.partitionBy("_qa_hash").orderBy(*ctx.order_by)
        out = df.withColumn("_qa_hash", F.sha2(answer, 256))
        out = out.withColumn("_rank", F.row_number().over(first)).withColumn(
            "_first", F.first(_where(df)).over(first)
        )
        return (
            out.withColumn(KEEP, F.col("_rank") == 1)
            .withColumn(NOTE, F.when(F.col("_rank") > 1, F.concat(F.lit("same answer as "), F.col("_first"))))
            .drop("_qa_hash", "_rank", "_first")
        )


@register
class Decontaminator(Operator):
    """Drop training records that share n-grams with evaluation sets (so test scores are not inflated)."""

    name = "decontaminate"

    class Params(_ShingleParams):
        eval_sets: list[str] = Field(
            min_length=1,
            description="Evaluation sets: paths or URIs of JSONL (.jsonl/.json) or Parquet files/dirs.",
        )
        fields: list[str] | None = Field(
            default=None,
            description="Fields of the evaluation records to compare with; default: every string or "
            "list-of-strings field.",
        )
        cjk_ngram: int = Field(default=13, ge=1, le=100, description="Characters per n-gram over CJK text.")
        word_ngram: int = Field(default=8, ge=1, le=100, description="Words per n-gram over other text.")
        threshold: float = Field(
            default=0.0,
            ge=0,
            lt=1,
            description="Drop a record when more than this share of its n-grams occurs in an evaluation set "
            "(0: any shared n-gram).",
        )

        @model_validator(mode="after")
        def _formats(self) -> Decontaminator.Params:
            for uri in self.eval_sets:
                if (
                    not uri.rstrip("/").endswith((".jsonl", ".json", ".parquet"))
                    and "." in uri.rsplit("/", 1)[-1]
                ):
                    raise ValueError(
                        f"eval_sets: {uri!r} is neither JSONL (.jsonl, .json) nor Parquet (.parquet)"
                    )
            return self

    params: Params

    def _eval_shingles(self, df: DataFrame) -> DataFrame:
        spark = df.sparkSession
        p = self.params
        parts = []
        for uri in p.eval_sets:
            ev = spark.read.parquet(uri) if _is_parquet(uri) else spark.read.json(uri)
            fields = p.fields or [
                f.name
                for f in ev.schema.fields
                if isinstance(f.dataType, T.StringType)
                or (isinstance(f.dataType, T.ArrayType) and isinstance(f.dataType.elementType, T.StringType))
            ]
            missing = [f for f in fields if f not in ev.columns]
            if missing:
                raise OperatorError(
                    f"decontaminate: {uri} has no field(s) {', '.join(missing)}; it has {', '.join(ev.columns)}"
                )
            types = {f.name: f.dataType for f in ev.schema.fields}
            for f in fields:
                text = joined_text(f, types[f], "\n")
                parts.append(ev.select(F.explode(shingle_hashes(text, p.cjk_ngram, p.word_ngram)).alias("h")))
        out = parts[0]
        for part in parts[1:]:
            out = out.union(part)
        return out.distinct()

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        p = self.params
        types = {f.name: f.dataType for f in df.schema.fields}
        text = F.concat_ws("\n", *[joined_text(c, types[c], "\n") for c in self.columns(ctx)])
        keyed = df.withColumn(NODE, F.xxhash64(F.struct(*[F.col(c) for c in ctx.order_by])))
        ev = self._eval_shingles(df)
        sh = keyed.select(NODE, shingle_hashes(text, p.cjk_ngram, p.word_ngram).alias("sh"))
        totals = sh.select(NODE, F.size("sh").alias("_n"))
        hits = (
            sh.select(NODE, F.explode("sh").alias("h"))
            .join(F.broadcast(ev), "h")
            .groupBy(NODE)
            .agg(F.count(F.lit(1)).alias("_hits"))
            .join(totals, NODE)
            .filter(F.col("_hits") / F.col("_n") > p.threshold)
            .select(NODE, "_hits", "_n")
        )
        out = keyed.join(hits, NODE, "left")
        note = F.concat(
            F.lit("shares "), F.col("_hits").cast("string"), F.lit(" of "), F.col("_n").cast("string"),
            F.lit(" n-grams with the evaluation sets"),
        )  # fmt: skip
        return (
            out.withColumn(KEEP, F.col("_hits").isNull())
            .withColumn(NOTE, F.when(F.col("_hits").isNotNull(), note))
            .drop(NODE, "_hits", "_n")
        )


def _is_parquet(uri: str) -> bool:
    """A .parquet file, or a local directory of them (anything else is read as JSON lines)."""
    from pathlib import Path

    if uri.rstrip("/").endswith(".parquet"):
        return True
    path = Path(uri.removeprefix("file://"))
    return path.is_dir() and any(path.glob("*.parquet"))
