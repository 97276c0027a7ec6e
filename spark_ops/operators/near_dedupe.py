"""Near-duplicate dedupe (MinHash-LSH + connected components), QA-pair dedupe and decontamination.

Shingles are built in the JVM: character n-grams over the CJK characters of a text (Chinese has no spaces,
and a character edit breaks only n shingles) united with word n-grams over its other words, each hashed with
``xxhash64``. MinHash signatures are computed by a vectorised Arrow function (``mapInArrow``): one batch's
shingle hashes are one flat numpy array, so every permutation is a multiply-add-shift over that array and a
``minimum.reduceat`` by record -- no Python per shingle or per record. Bands of the signature become LSH
bucket keys; each bucket links its members to its smallest member (a star: as connecting as all pairs, with
n - 1 edges instead of n^2 / 2), candidate links are optionally verified by exact Jaccard similarity, and
clusters are connected components found by min-label propagation with pointer jumping, as Spark joins. Nothing
is collected on the driver but the per-iteration count of changed labels.
"""

from __future__ import annotations

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


def jaccard(a: Column, b: Column) -> Column:
    """Exact Jaccard similarity of two arrays of distinct values."""
    inter = F.size(F.array_intersect(a, b))
    return inter / (F.size(a) + F.size(b) - inter)


def _minhash_bands(bands: int, rows: int, seed: int) -> Any:
    """The ``mapInArrow`` function: (node, shingles) batches -> (node, band keys) batches."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import numpy as np
        import pyarrow as pa

        rng = np.random.default_rng(seed)
        perms = bands * rows
        # multiply-add-shift hashing: h(x) = (a x + b) >> 32 over 64-bit words, a odd -> a universal family
        a = rng.integers(1, 2**63, size=perms, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        b = rng.integers(0, 2**63, size=perms, dtype=np.uint64)
        mix = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        shift = np.uint64(32)
        for batch in batches:
            n = batch.num_rows
            if n == 0:
                continue
            shingles = batch.column(1)
            offsets = shingles.offsets.to_numpy()
            flat = shingles.flatten().to_numpy(zero_copy_only=False).view(np.uint64)
            starts = (offsets[:-1] - offsets[0]).astype(np.int64)
            sig = np.empty((n, perms), dtype=np.uint64)
            with np.errstate(over="ignore"):  # wrap-around is the hash
                for k in range(perms):
                    sig[:, k] = np.minimum.reduceat((flat * a[k] + b[k]) >> shift, starts)
                sig = sig.reshape(n, bands, rows)
                keys = np.zeros((n, bands), dtype=np.uint64)
                for r in range(rows):
                    keys = keys * np.uint64(0x9E3779B97F4A7C15) + sig[:, :, r] * mix[r]
            values = pa.array(keys.reshape(-1).view(np.int64))
            lists = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * bands + 1, bands, dtype=np.int32)), values
            )
            yield pa.RecordBatch.from_arrays([batch.column(0), lists], names=[NODE, "bands"])

    return fn


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

    params: Params

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        p = self.params
        types = {f.name: f.dataType for f in df.schema.fields}
        text = F.concat_ws("\n", *[joined_text(c, types[c], "\n") for c in self.columns(ctx)])
        order = [F.col(c) for c in ctx.order_by]
        # A 64-bit hash of the order key names a record in joins (unique per record: the key is).
        keyed = df.withColumn(NODE, F.xxhash64(F.struct(*order)))
        shingles = keyed.select(NODE, shingle_hashes(text, p.cjk_ngram, p.word_ngram).alias("sh")).filter(
            F.size("sh") > 0
        )
        schema = T.StructType(
            [T.StructField(NODE, T.LongType()), T.StructField("bands", T.ArrayType(T.LongType()))]
        )
        sigs = shingles.mapInArrow(_minhash_bands(p.bands, p.rows, p.seed), schema)
        buckets = sigs.select(NODE, F.posexplode("bands").alias("band", "key"))
        root = F.min(NODE).over(Window.partitionBy("band", "key"))
        edges = (
            buckets.withColumn("root", root)
            .filter(F.col(NODE) != F.col("root"))
            .select(F.col("root").alias("src"), F.col(NODE).alias("dst"))
            .distinct()
        ).localCheckpoint()
        if p.verify:
            ends = (
                edges.select(F.col("src").alias(NODE))
                .union(edges.select(F.col("dst").alias(NODE)))
                .distinct()
            )
            cand = shingles.join(ends, NODE, "left_semi")
            a, b = cand.alias("a"), cand.alias("b")
            edges = (
                edges.join(a, F.col("src") == F.col(f"a.{NODE}"))
                .join(b, F.col("dst") == F.col(f"b.{NODE}"))
                .filter(jaccard(F.col("a.sh"), F.col("b.sh")) >= p.threshold)
                .select("src", "dst")
            )
        labels = connected_components(edges)
        members = keyed.join(labels, keyed[NODE] == labels["node"]).select(
            NODE, "label", *ctx.order_by, _where(keyed).alias("_where")
        )
        first = Window.partitionBy("label").orderBy(*ctx.order_by)
        dropped = (
            members.withColumn("_rank", F.row_number().over(first))
            .withColumn("_first", F.first("_where").over(first))
            .filter(F.col("_rank") > 1)
            .select(NODE, F.concat(F.lit("near-duplicate of "), F.col("_first")).alias("_nd_note"))
        )
        out = keyed.join(dropped, NODE, "left")
        return (
            out.withColumn(KEEP, F.col("_nd_note").isNull())
            .withColumn(NOTE, F.col("_nd_note"))
            .drop(NODE, "_nd_note")
        )


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
