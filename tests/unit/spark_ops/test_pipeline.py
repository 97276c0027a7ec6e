"""The pipeline's fused segments report exactly what one step per pass reports: counts, counters, samples."""

from __future__ import annotations

from pyspark.sql import SparkSession

from spark_ops.canonical import schema
from spark_ops.operators import OperatorContext, build_operators
from spark_ops.pipeline import run_operators
from tasks.specs import OperatorStep

PRETRAIN = OperatorContext(usage="pretrain")

STEPS = [
    {"name": "normalize", "params": {"keep_cjk_punctuation": True}},
    {"name": "remove_invisible"},
    {"name": "clean_html", "params": {"entities": "common"}},
    {"name": "length_filter", "params": {"min_chars": 8}},
    {"name": "remove_symbols"},
    {"name": "empty_filter"},
    {"name": "desensitize", "params": {"default_action": "placeholder"}},
    {"name": "tag_length"},
    {"name": "exact_dedupe"},
]

TEXTS = [
    "Ｈｅｌｌｏ　ｗｏｒｌｄ，①第一条",  # full-width, ideographic space, enumerator
    "short",  # dropped by length_filter
    "<p>Some &amp; HTML</p> with a zero\u200bwidth space",
    "电话 13812345678 ■ 联系我",  # PII + symbol
    "<b></b>",  # emptied by clean_html, then too short
    "电话 13812345678 ■ 联系我",  # exact duplicate after the rewrites
    "plain text that nothing touches at all",
    "   ",
    "邮箱 zhang.san@example.com ◆◆",
]


def test_fused_segments_match_one_step_per_pass(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [(f"id{i:02d}", t, ("src", [])) for i, t in enumerate(TEXTS)], schema("pretrain")
    ).persist()
    ops = build_operators([OperatorStep(**s) for s in STEPS], "pretrain")
    fused = run_operators(df, ops, PRETRAIN, max_fused=8)
    alone = run_operators(df, ops, PRETRAIN, max_fused=1)
    # the fused run really fused: the first six pure-SQL steps shared one pass
    assert len({s.segment for s in fused.steps[:6]}) == 1
    assert len({s.segment for s in alone.steps}) == len(STEPS)

    def report(res):  # everything but timing and segment numbering
        return [
            (s.name, s.records_in, s.kept, s.dropped, s.modified, s.counters, s.samples) for s in res.steps
        ]

    assert report(fused) == report(alone)
    assert sorted(map(tuple, fused.df.collect())) == sorted(map(tuple, alone.df.collect()))
    by_name = {s.name: s for s in fused.steps}
    assert by_name["length_filter"].dropped >= 2  # "short" and the emptied tag
    assert by_name["exact_dedupe"].dropped == 1
    assert by_name["desensitize"].counters.get("phone") == 2
    assert by_name["normalize"].samples["modified"][0]["changes"]["text"]["after"].startswith("Hello")
    fused.release()
    alone.release()
