"""Operators as pure transforms on tiny frames, their param validation, and the per-step statistics."""

from __future__ import annotations

import pytest
from pyspark.sql import DataFrame, SparkSession

from spark_ops.canonical import schema
from spark_ops.operators import OPERATORS, OperatorContext, OperatorError, build_operators
from spark_ops.operators.dedupe import ExactDeduplicator
from spark_ops.operators.filters import EmptyFilter, LengthFilter
from spark_ops.operators.normalize import Normalizer
from spark_ops.pipeline import run_operators
from tasks.specs import OperatorStep

PRETRAIN = OperatorContext(usage="pretrain")
SFT = OperatorContext(usage="sft")


def pretrain(spark: SparkSession, *texts: str | None) -> DataFrame:
    rows = [(f"id{i}", t, ("src", [])) for i, t in enumerate(texts)]
    return spark.createDataFrame(rows, schema("pretrain"))


def sft(spark: SparkSession, *pairs: tuple[list[str], str]) -> DataFrame:
    rows = [(f"id{i}", None, c, t, ("src", [])) for i, (c, t) in enumerate(pairs)]
    return spark.createDataFrame(rows, schema("sft"))


def texts(df: DataFrame) -> list[str]:
    return [r["text"] for r in df.orderBy("id").collect()]


def test_normalize_spaces_fullwidth_enumerators(spark: SparkSession) -> None:
    df = pretrain(spark, "Ａ１！\u3000b\u00a0c", "①苹果⑵梨⒊桃❹杏➄李⓺枣㊀瓜⑳", "a    b", "x，y！")
    out = Normalizer().apply(df, PRETRAIN)
    assert texts(out) == ["A1! b c", "1.苹果2.梨3.桃4.杏5.李6.枣1.瓜20.", "a b", "x,y!"]


def test_normalize_keeps_indentation_code_blocks_and_cjk_punctuation(spark: SparkSession) -> None:
    code = "def f():\n    return  1  # two\n```\n*    *\n```\nafter   end"
    op = Normalizer(Normalizer.Params(keep_cjk_punctuation=True))
    out = op.apply(pretrain(spark, code, "你好，世界！ＡＢ"), PRETRAIN)
    assert texts(out) == ["def f():\n    return 1 # two\n```\n*    *\n```\nafter end", "你好，世界！AB"]


def test_normalize_applies_to_every_turn_and_target(spark: SparkSession) -> None:
    out = Normalizer().apply(sft(spark, (["ｑ１", "ａ", "ｑ２"], "①ok")), SFT).first()
    assert (out["context"], out["target"]) == (["q1", "a", "q2"], "1.ok")


def test_empty_filter(spark: SparkSession) -> None:
    df = sft(spark, (["q"], "a"), (["q"], " \u200b\u3000"), ([" "], "a"), (["q", "", "q"], "a"))
    assert [r["id"] for r in EmptyFilter().apply(df, SFT).collect()] == ["id0"]
    only_target = EmptyFilter(EmptyFilter.Params(columns=["target"]))
    assert sorted(r["id"] for r in only_target.apply(df, SFT).collect()) == ["id0", "id2", "id3"]


def test_length_filter_counts_characters(spark: SparkSession) -> None:
    df = pretrain(spark, "一二三", "一二三四五", "一二三四五六七")
    op = LengthFilter(LengthFilter.Params(min_chars=4, max_chars=6))
    assert texts(op.apply(df, PRETRAIN)) == ["一二三四五"]


def test_length_filter_sums_context_and_target(spark: SparkSession) -> None:
    df = sft(spark, (["ab", "c", "d"], "ef"), (["a"], "b"))
    assert [r["id"] for r in LengthFilter(LengthFilter.Params(min_chars=5)).apply(df, SFT).collect()] == [
        "id0"
    ]


def test_exact_dedupe_keeps_first_in_order(spark: SparkSession) -> None:
    df = pretrain(spark, "Hello  World", "hello world", "other", "Hello  World")
    assert texts(ExactDeduplicator().apply(df, PRETRAIN)) == ["Hello  World", "other"]
    strict = ExactDeduplicator(ExactDeduplicator.Params(normalize=False))
    assert texts(strict.apply(df, PRETRAIN)) == ["Hello  World", "hello world", "other"]


def test_exact_dedupe_on_sft_uses_context_and_target(spark: SparkSession) -> None:
    df = sft(spark, (["q"], "a"), (["q"], "b"), (["q"], "a"), (["qa"], ""))
    assert [r["id"] for r in ExactDeduplicator().apply(df, SFT).orderBy("id").collect()] == [
        "id0",
        "id1",
        "id3",
    ]


def test_pipeline_counts_and_samples(spark: SparkSession) -> None:
    df = pretrain(spark, "Ａ", "keep", "keep", "", "x")
    ops = build_operators(
        [
            OperatorStep(name="normalize"),
            OperatorStep(name="empty_filter"),
            OperatorStep(name="exact_dedupe"),
        ],
        "pretrain",
    )
    result = run_operators(df, ops, PRETRAIN)
    try:
        assert [s.summary() for s in result.steps] == [
            {"name": "normalize", "kept": 5, "dropped": 0, "modified": 1},
            {"name": "empty_filter", "kept": 4, "dropped": 1, "modified": 0},
            {"name": "exact_dedupe", "kept": 3, "dropped": 1, "modified": 0},
        ]
        assert result.steps[0].samples["modified"] == [
            {"id": "id0", "changes": {"text": {"before": "Ａ", "after": "A"}}}
        ]
        assert result.steps[1].samples["dropped"][0]["reason"] == "blank text"
        assert result.steps[2].samples["dropped"][0]["reason"] == "duplicate of id id1"
        assert texts(result.df) == ["A", "keep", "x"]
    finally:
        result.release()


def test_registry_and_recipe_errors() -> None:
    assert {"normalize", "empty_filter", "length_filter", "exact_dedupe"} <= set(OPERATORS)
    with pytest.raises(
        OperatorError, match=r"operators\[1\]: unknown operator 'normalise' \(did you mean 'normalize'\?\)"
    ):
        build_operators([OperatorStep(name="empty_filter"), OperatorStep(name="normalise")], "sft")
    with pytest.raises(
        OperatorError, match=r"operators\[0\] \(length_filter\): invalid params\n  - params.min_chars"
    ):
        build_operators([OperatorStep(name="length_filter", params={"min_chars": -1})], "sft")
    with pytest.raises(OperatorError, match="max_chars .* is below min_chars"):
        build_operators([OperatorStep(name="length_filter", params={"min_chars": 9, "max_chars": 3})], "sft")
    with pytest.raises(OperatorError, match="params.unknown"):
        build_operators([OperatorStep(name="normalize", params={"unknown": 1})], "sft")
    with pytest.raises(OperatorError, match="'text' is not a text column of usage sft"):
        build_operators([OperatorStep(name="empty_filter", params={"columns": ["text"]})], "sft")
