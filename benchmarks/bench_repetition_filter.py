"""repetition_filter: the Arrow/numpy implementation against the earlier Spark higher-order-function one.

    .venv/bin/python benchmarks/bench_repetition_filter.py                  # 2,000 docs; old on the first 30
    .venv/bin/python benchmarks/bench_repetition_filter.py --old-docs 60 --check-fractions --append

Both run in one local[2] SparkSession on the same cached input: 2,000 documents of about 1,000 characters,
half English (Wikipedia, C4 sentences), half Chinese (Alpaca-zh answers, Tang poems) from /work/shared/data,
about 15 % of them made repetitive (repeated lines, a repeated paragraph, a spam phrase). A timed pass is
``annotate`` -> collect (id, keep, reason) of every document, after an untimed warm-up pass of each
implementation (Python workers, code generation). The old implementation is measured on the first
``--old-docs`` documents only: it needs seconds per Chinese document, because its n-gram lambdas re-evaluate
the tokenizer for every n-gram. The script fails if the two differ in a keep decision or reason on those
documents (with ``--check-fractions``, also in any fraction). The new one is also timed on ``--large``
documents of the same kind (20,000), where Spark's fixed cost per job (~0.5 s) weighs less. Prints a
Markdown section; ``--append`` adds it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyspark.sql import Column, DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from spark_ops.canonical import schema  # noqa: E402
from spark_ops.operators.base import KEEP, NOTE, Filter, OperatorContext  # noqa: E402
from spark_ops.operators.filters import _REP, TOKEN, RepetitionFilter, _fmt, _joined, _ratio  # noqa: E402
from spark_ops.session import build_session  # noqa: E402
from tasks.specs import SparkResources  # noqa: E402

DATA = Path(os.environ.get("FORGEFLOW_SHARED_DATA", "/work/shared/data"))
SEED = 11
CTX = OperatorContext(usage="pretrain")

# ------------------------------------------------------------------------------------------------ corpus


def _pools() -> tuple[list[str], list[str]]:
    en_texts = (DATA / "pretrain/wiki_demo.txt").read_text(encoding="utf-8").splitlines()
    en_texts += [json.loads(x)["text"] for x in (DATA / "pretrain/c4_demo.jsonl").open(encoding="utf-8")]
    zh_texts = [
        r["output"] for r in json.loads((DATA / "sft/alpaca_zh_demo.json").read_text(encoding="utf-8"))
    ]
    for f in sorted((DATA / "corpus/tang_poems").glob("*.json"))[:2]:
        zh_texts += ["".join(p["paragraphs"]) for p in json.loads(f.read_text(encoding="utf-8"))]
    en = sorted(
        {s.strip() for t in en_texts for s in re.split(r"(?<=[.!?])\s+|\n+", t) if len(s.strip()) > 30}
    )
    zh = sorted(
        {s.strip() for t in zh_texts for s in re.split(r"(?<=[。！？])|\n+", t) if len(s.strip()) > 8}
    )
    return en, zh


def build_corpus(n_docs: int, chars: int = 1000) -> list[str]:
    """``n_docs`` documents of about ``chars`` characters, deterministic."""
    rng = random.Random(SEED)
    en, zh = _pools()
    docs = []
    for _ in range(n_docs):
        is_en = rng.random() < 0.5
        pool, sep = (en, " ") if is_en else (zh, "")
        paras, size = [], 0
        while size < chars:
            para = sep.join(rng.choice(pool) for _ in range(rng.randint(2, 5)))
            paras.append(para)
            size += len(para) + 1
        k = rng.random()
        if k < 0.05:  # a few lines repeated
            line = rng.choice(paras)[:60]
            paras = paras + [line] * rng.randint(2, 6)
        elif k < 0.10:  # one paragraph twice
            paras.insert(rng.randrange(len(paras)), rng.choice(paras))
        elif k < 0.15:  # a spam phrase
            phrase = "click here to buy now" if is_en else "点击这里立即购买"
            paras.insert(rng.randrange(len(paras)), (sep or " ").join([phrase] * rng.randint(2, 12)))
        docs.append(("\n\n" if rng.random() < 0.5 else "\n").join(paras)[: int(chars * 1.2)])
    return docs


# ------------------------------------------------------------------------- the earlier implementation


def _ngrams(toks: Column, n: int) -> Column:
    grams = F.transform(
        F.sequence(F.lit(0), F.size(toks) - n), lambda i: F.array_join(F.slice(toks, i + 1, n), " ")
    )
    return F.when(F.size(toks) >= n, grams).otherwise(F.array().cast("array<string>"))


def _top_count(values: Column) -> Column:
    init = F.struct(
        F.lit(None).cast("string").alias("prev"),
        F.lit(0).alias("run"),
        F.lit(0).alias("best"),
        F.lit(None).cast("string").alias("top"),
    )

    def step(acc: Column, x: Column) -> Column:
        run = F.when(x == acc["prev"], acc["run"] + 1).otherwise(F.lit(1))
        return F.struct(
            x.alias("prev"),
            run.alias("run"),
            F.greatest(acc["best"], run).alias("best"),
            F.when(run > acc["best"], x).otherwise(acc["top"]).alias("top"),
        )

    return F.aggregate(F.array_sort(values), init, step)


def _dup_fraction(items: Column) -> Column:
    return _ratio(F.size(items) - F.size(F.array_distinct(items)), F.size(items))


def _dup_char_fraction(items: Column) -> Column:
    def chars(a: Column) -> Column:
        return F.aggregate(a, F.lit(0).cast("long"), lambda acc, s: acc + F.length(s))

    return _ratio(chars(items) - chars(F.array_distinct(items)), chars(items))


class LegacyRepetitionFilter(RepetitionFilter):
    """The Spark-SQL implementation this branch replaced (commit 024a93e), kept here for comparison only."""

    def checks(self, df: DataFrame) -> list[tuple[str, Column, float]]:
        p = self.params
        text = _joined(df, self.columns(CTX))
        lines = F.filter(F.split(text, r"\n"), lambda s: F.trim(s) != "")
        paras = F.filter(F.split(text, r"\n\s*\n"), lambda s: F.trim(s) != "")
        checks = [
            ("dup_line", _dup_fraction(lines), p.max_dup_line_frac),
            ("dup_para", _dup_fraction(paras), p.max_dup_para_frac),
            ("dup_line_char", _dup_char_fraction(lines), p.max_dup_line_char_frac),
            ("dup_para_char", _dup_char_fraction(paras), p.max_dup_para_char_frac),
        ]
        toks = F.regexp_extract_all(text, F.lit(f"({TOKEN})"), 1)
        enough = F.size(toks) >= p.min_tokens
        total = F.aggregate(toks, F.lit(0).cast("long"), lambda acc, s: acc + F.length(s))
        for n, limit in sorted(p.top_ngram_max_char_frac.items()):
            top = _top_count(_ngrams(toks, n))
            chars = F.length(F.regexp_replace(F.coalesce(top["top"], F.lit("")), " ", "")) * top["best"]
            frac = F.when(enough & (top["best"] > 1), _ratio(chars, total)).otherwise(F.lit(0.0))
            checks.append((f"top_{n}", frac, limit))
        for n, limit in sorted(p.dup_ngram_max_frac.items()):
            checks.append((f"dup_{n}", F.when(enough, _dup_fraction(_ngrams(toks, n))).otherwise(0.0), limit))
        return checks

    # keep / note exactly as they were: each builds every check inline; annotate is Filter.annotate.
    def keep(self, df: DataFrame, ctx: OperatorContext) -> Column:
        checks = [v <= lim for _, v, lim in self.checks(df) if lim is not None]
        return reduce(lambda a, b: a & b, checks, F.lit(True))

    def note(self, df: DataFrame, ctx: OperatorContext) -> Column:
        labels = {field: label for field, label, _ in self._rules()}
        parts = [
            F.when(v > lim, F.concat(F.lit(f"{labels[name]} "), _fmt(v), F.lit(f" > {lim}")))
            for name, v, lim in self.checks(df)
            if lim is not None
        ]
        return F.concat_ws("; ", *parts) if parts else F.lit("")

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        return Filter.annotate(self, df, ctx)

    def measures(self, df: DataFrame) -> DataFrame:
        return df.select("id", F.struct(*[v.alias(name) for name, v, _ in self.checks(df)]).alias(_REP))


def new_measures(op: RepetitionFilter, df: DataFrame) -> DataFrame:
    return df.select("id", op._measure(_joined(df, op.columns(CTX))).alias(_REP))


# ------------------------------------------------------------------------------------------------ timing


def timed(op: RepetitionFilter, df: DataFrame, repeats: int) -> tuple[list[float], dict[str, dict]]:
    """Seconds of each timed pass (annotate -> collect id, keep, reason), and {id: {keep, note}} of the last."""
    secs, rows = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        rows = op.annotate(df, CTX).select("id", KEEP, NOTE).collect()
        secs.append(time.perf_counter() - t)
    return secs, {r["id"]: {"keep": r[KEEP], "note": r[NOTE]} for r in rows}


def fractions(measured: DataFrame) -> dict[str, dict[str, float]]:
    return {r["id"]: r[_REP].asDict() for r in measured.collect()}


def is_chinese(text: str) -> bool:
    return bool(re.search("[\u4e00-\u9fff]", text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--old-docs", type=int, default=30, help="documents (the first ones) the old one judges")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes of the new implementation")
    ap.add_argument(
        "--large", type=int, default=20000, help="also time the new one on this many documents (0: no)"
    )
    ap.add_argument(
        "--check-fractions",
        action="store_true",
        help="also compare every fraction on the old sample (untimed; doubles the old implementation's time)",
    )
    ap.add_argument("--append", action="store_true", help="append the section to benchmarks/RESULTS.md")
    args = ap.parse_args()

    docs = build_corpus(args.docs)
    resources = SparkResources(
        num_executors=1, executor_cores=2, executor_memory_gb=4, driver_cores=2, driver_memory_gb=4
    )
    spark = build_session(resources, "bench-repetition-filter", master="local[2]")
    rows = [(f"d{i:05d}", t, ("bench", [])) for i, t in enumerate(docs)]

    def frame(n: int) -> DataFrame:
        df = spark.createDataFrame(rows[:n], schema("pretrain")).repartition(2).cache()
        df.count()
        return df

    n_old = min(args.old_docs, args.docs)
    full, old_part = frame(args.docs), frame(n_old)
    new, old = RepetitionFilter(), LegacyRepetitionFilter()
    timed(new, frame(50), 1)  # warm-up: Python workers, code generation
    timed(old, frame(2), 1)
    new_secs, new_out = timed(new, full, args.repeats)
    old_secs, old_out = timed(old, old_part, 1)

    large_secs: list[float] = []
    if args.large:  # the same kind of documents, more of them: Spark's fixed cost per job matters less
        big = build_corpus(args.large)
        big_df = spark.createDataFrame(
            [(f"L{i:06d}", t, ("bench", [])) for i, t in enumerate(big)], schema("pretrain")
        ).repartition(2)
        big_df = big_df.cache()
        big_df.count()
        large_secs, _ = timed(new, big_df, args.repeats)
        big_df.unpersist()

    mismatches, max_diff = [], None
    if args.check_fractions:
        old_m, new_m = fractions(old.measures(old_part)), fractions(new_measures(new, old_part))
        max_diff = max(abs(old_m[i][k] - new_m[i][k]) for i in old_m for k in old_m[i])
        mismatches += [(i, old_m[i], new_m[i]) for i in old_m if old_m[i] != new_m[i]]
    mismatches += [(i, o, new_out[i]) for i, o in old_out.items() if o != new_out[i]]

    new_rate = args.docs / statistics.median(new_secs)
    old_rate = n_old / old_secs[0]
    dropped = sum(not r["keep"] for r in new_out.values())
    old_dropped = sum(not r["keep"] for r in old_out.values())
    zh = sum(map(is_chinese, docs))
    old_zh = sum(map(is_chinese, docs[:n_old]))
    chars = sum(map(len, docs)) / len(docs)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    python = os.path.relpath(sys.executable, ROOT)
    cmd = f"PYTHONPATH=$PWD {python} benchmarks/bench_repetition_filter.py " + " ".join(sys.argv[1:])
    checked = (
        f"every fraction equal (largest difference {max_diff:.1e})"
        if args.check_fractions
        else "fractions not compared (--check-fractions)"
    )
    large_line = (
        f"- New on {args.large:,} such documents: {statistics.median(large_secs):.2f} s (median of "
        f"{args.repeats}) = **{args.large / statistics.median(large_secs):,.0f} docs/s** (Spark's fixed cost "
        "per job weighs less).\n"
        if large_secs
        else ""
    )
    section = f"""
## repetition_filter: Arrow UDF + numpy vs the earlier Spark higher-order functions — {stamp}

Command: `{cmd.strip()}` (local[2] on 2 shared cores; warm JVM and Python workers; a pass is annotate ->
collect id, keep, reason; the machine was shared, so treat absolute figures as rough).

- Input: {args.docs:,} documents, {chars:,.0f} characters on average, {zh:,} Chinese and {args.docs - zh:,}
  English, ~15 % made repetitive; default params drop {dropped:,}.
- New: {args.docs:,} docs in {statistics.median(new_secs):.2f} s (median of {args.repeats} passes:
  {", ".join(f"{s:.2f}" for s in new_secs)}) = **{new_rate:,.0f} docs/s**.
{large_line}- Old: the first {n_old} of the same documents ({old_zh} Chinese) in {old_secs[0]:.1f} s =
  **{old_rate:,.2f} docs/s** (its n-gram lambdas re-run the tokenizer for every n-gram: quadratic in tokens).
- Ratio new/old: **{new_rate / old_rate:,.0f}x**. On the {n_old} documents both judged: same keep decision
  and reason for {n_old - len([m for m in mismatches if "keep" in m[1]])} of {n_old} ({old_dropped} dropped);
  {checked}.
"""
    print(section)
    if mismatches:
        for i, o, n in mismatches[:5]:
            print("MISMATCH", i, json.dumps({"old": o, "new": n}, ensure_ascii=False, default=str)[:2000])
        sys.exit(1)
    if args.append:
        with (ROOT / "benchmarks" / "RESULTS.md").open("a", encoding="utf-8") as f:
            f.write(section)
    spark.stop()


if __name__ == "__main__":
    main()
