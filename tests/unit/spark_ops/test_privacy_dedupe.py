"""desensitize, sensitive_words, near_dedupe, qa_dedupe, decontaminate: behaviour on tiny frames, and the
labelled quality sets (tests/fixtures/spark_ops/quality_sets.py) as pass/fail thresholds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

from spark_ops.canonical import schema
from spark_ops.operators import OperatorContext, OperatorError, build_operators
from spark_ops.operators.desensitize import Desensitizer
from spark_ops.operators.near_dedupe import (
    Decontaminator,
    NearDeduplicator,
    QADeduplicator,
    connected_components,
)
from spark_ops.operators.sensitive_words import SensitiveWordFilter, scan
from spark_ops.pipeline import run_operators
from tasks.specs import OperatorStep

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "spark_ops"
PRETRAIN = OperatorContext(usage="pretrain")
SFT = OperatorContext(usage="sft")

_spec = importlib.util.spec_from_file_location("quality_sets", FIXTURES / "quality_sets.py")
assert _spec and _spec.loader
qs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qs)


def pretrain(spark: SparkSession, *texts: str | None) -> DataFrame:
    return spark.createDataFrame(
        [(f"id{i}", t, ("src", [])) for i, t in enumerate(texts)], schema("pretrain")
    )


def texts(df: DataFrame) -> list[str]:
    return [r["text"] for r in df.orderBy("id").collect()]


# ------------------------------------------------------------------------------------------ desensitize


def test_desensitize_placeholders_every_type(spark: SparkSession) -> None:
    df = pretrain(
        spark,
        "电话13812345678，或 +86 139-1234-5678",
        "身份证 11010519491231002X 邮箱 zhang.san@example.com 网址 https://example.com/u/123?a=1.",
        "卡号 6222 0212 3456 7890 128 IMEI 490154203237518 MAC 00:1A:2B:3C:4D:5E",
        "IP 192.168.1.10 fe80::1ff:fe23:4567:890a 护照 E12345678",
        "车牌 粤B12345 新能源 粤BD12345 VIN 1M8GDM9AXKP042788 旧身份证 110105491231002",
    )
    op = Desensitizer(Desensitizer.Params(default_action="placeholder"))
    res = run_operators(df, [op], PRETRAIN)
    assert texts(res.df) == [
        "电话[PHONE]，或 [PHONE]",
        "身份证 [ID_CARD] 邮箱 [EMAIL] 网址 [URL].",
        "卡号 [BANK_CARD] IMEI [IMEI] MAC [MAC]",
        "IP [IP] [IP] 护照 [PASSPORT]",
        "车牌 [PLATE] 新能源 [PLATE] VIN [VIN] 旧身份证 [ID_CARD]",
    ]
    assert res.steps[0].counters["phone"] == 2 and res.steps[0].counters["id_card"] == 2
    assert res.steps[0].modified == 5


def test_desensitize_leaves_lookalikes(spark: SparkSession) -> None:
    lookalikes = [
        "订单号 2023112512345678901，价格 ¥13,800.00，日期 2023-11-25 13:45:00",
        "身份证 110105194912310021 校验失败；卡号 6222021234567890123 校验失败",
        "IMEI 490154203237519 校验失败；VIN 1M8GDM9AXKP042789",
        "版本 v2.3.1，时间 12:30:45，序列号 SN2023123456，号码 12345678901，时间戳 1700000000",
    ]
    out = texts(
        Desensitizer(Desensitizer.Params(default_action="placeholder")).apply(
            pretrain(spark, *lookalikes), PRETRAIN
        )
    )
    assert out == lookalikes


def test_desensitize_mask_hash_and_drop(spark: SparkSession) -> None:
    df = pretrain(spark, "call 138-1234-5678 now", "mail a.b@example.com", "no pii here")
    masked = texts(Desensitizer().apply(df, PRETRAIN))
    assert masked == ["call 138-****-5678 now", "mail a***@example.com", "no pii here"]
    salted = Desensitizer(Desensitizer.Params(default_action="hash", salt="s1"))
    h1 = texts(salted.apply(df, PRETRAIN))
    h2 = texts(Desensitizer(Desensitizer.Params(default_action="hash", salt="s2")).apply(df, PRETRAIN))
    assert h1[0].startswith("call [PHONE:") and h1[0] != h2[0]
    dropper = Desensitizer(Desensitizer.Params(actions={"email": "drop"}))
    res = run_operators(df, [dropper], PRETRAIN)
    assert texts(res.df) == ["call 138-****-5678 now", "no pii here"]
    assert res.steps[0].samples["dropped"][0]["reason"] == "contains email"


def test_desensitize_sft_turns(spark: SparkSession) -> None:
    rows = [("a", None, ["my phone is 13812345678", "ok"], "mail me: x@example.com", ("s", []))]
    out = (
        Desensitizer(Desensitizer.Params(default_action="placeholder"))
        .apply(spark.createDataFrame(rows, schema("sft")), SFT)
        .first()
    )
    assert (out["context"], out["target"]) == (["my phone is [PHONE]", "ok"], "mail me: [EMAIL]")


def test_desensitize_labelled_set(spark: SparkSession) -> None:
    records = qs.read_jsonl(FIXTURES / "pii.jsonl")
    df = spark.createDataFrame([(r["id"], r["text"], ("q", [])) for r in records], schema("pretrain"))
    out = Desensitizer(Desensitizer.Params(default_action="placeholder")).apply(df, PRETRAIN)
    scores = qs.pii_scores(records, {r["id"]: r["text"] for r in out.collect()})
    low = {t: s for t, s in scores.items() if t != "decoys" and s["recall"] < 0.99}
    assert not low, f"recall below 0.99: {low}"
    assert scores["decoys"]["kept"] >= 0.99, scores["decoys"]
    assert len(scores) == 12  # 11 PII types + decoys


def test_desensitize_rejects_unknown_type() -> None:
    with pytest.raises(OperatorError, match="types"):
        build_operators([OperatorStep(name="desensitize", params={"types": ["ssn"]})], "pretrain")


# ------------------------------------------------------------------------------------- sensitive words


def test_sensitive_words_filter_counts_per_category(spark: SparkSession) -> None:
    df = pretrain(
        spark,
        "这里有示例暴力词1和示例涉政词2。",
        "A DEMO-violence-word-1 here",
        "xdemo-violence-word-1",
        "clean",
        None,
    )
    res = run_operators(df, [SensitiveWordFilter()], PRETRAIN)
    assert texts(res.df) == ["xdemo-violence-word-1", "clean", None]
    assert res.steps[0].counters["violence"] == 2 and res.steps[0].counters["politics"] == 1
    assert res.steps[0].samples["dropped"][0]["reason"] == "sensitive words: violence, politics"


def test_sensitive_words_mask_and_inline_words(spark: SparkSession) -> None:
    op = SensitiveWordFilter(SensitiveWordFilter.Params(action="mask", words={"violence": ["Zap", "敏感"]}))
    df = pretrain(spark, "zap it, not zapper; 很敏感", "示例涉黄词3!")
    assert texts(op.apply(df, PRETRAIN)) == ["*** it, not zapper; 很**", "******!"]


def test_sensitive_words_thousands_of_words() -> None:
    import ahocorasick

    auto = ahocorasick.Automaton()
    for i in range(5000):
        w = f"词{i:05d}"
        auto.add_word(w, (i % 3, len(w), False, False))
    auto.make_automaton()
    text = "正文" * 5000 + "词04999" + "结尾"
    assert scan(text, auto, 3, "*")[1] == [0, 1, 0]  # 4999 % 3 == 1


def test_sensitive_words_missing_list_is_a_clear_error() -> None:
    with pytest.raises(OperatorError, match="not found"):
        build_operators(
            [OperatorStep(name="sensitive_words", params={"lists": {"politics": "nope.txt"}})], "pretrain"
        )


# ------------------------------------------------------------------------------------------- dedupe


def test_near_dedupe_keeps_first_of_each_cluster(spark: SparkSession) -> None:
    base = "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch"
    zh = "床前明月光疑是地上霜举头望明月低头思故乡白日依山尽黄河入海流欲穷千里目更上一层楼"
    df = pretrain(
        spark,
        base,
        base.replace("quick", "quack"),
        "Completely different text about databases",
        zh,
        zh.replace("霜", "雪"),
        base,
    )
    res = run_operators(df, [NearDeduplicator()], PRETRAIN)
    assert [r["id"] for r in res.df.orderBy("id").collect()] == ["id0", "id2", "id3"]
    reasons = {s["id"]: s["reason"] for s in res.steps[0].samples["dropped"]}
    assert reasons == {
        "id1": "near-duplicate of id id0",
        "id4": "near-duplicate of id id3",
        "id5": "near-duplicate of id id0",
    }


def test_connected_components_chain(spark: SparkSession) -> None:
    edges = spark.createDataFrame([(1, 2), (2, 3), (3, 4), (10, 11), (4, 5)], "src long, dst long")
    labels = {r["node"]: r["label"] for r in connected_components(edges).collect()}
    assert labels == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 10: 10, 11: 10}


def test_near_dedupe_labelled_set(spark: SparkSession) -> None:
    records = qs.read_jsonl(FIXTURES / "near_dupes.jsonl")
    df = spark.createDataFrame([(r["id"], r["text"], ("q", [])) for r in records], schema("pretrain"))
    kept = {r["id"] for r in NearDeduplicator().apply(df, PRETRAIN).select("id").collect()}
    scores = qs.near_dupe_scores(records, {r["id"] for r in records} - kept)
    assert scores["precision"] >= 0.95 and scores["recall"] >= 0.95, scores


def test_qa_dedupe(spark: SparkSession) -> None:
    rows = [
        (f"s{i}", None, [q], t, ("s", []))
        for i, (q, t) in enumerate([("a", "Answer one!"), ("b", "answer  one"), ("c", "two")])
    ]
    res = run_operators(spark.createDataFrame(rows, schema("sft")), [QADeduplicator()], SFT)
    assert [r["id"] for r in res.df.orderBy("id").collect()] == ["s0", "s2"]
    assert res.steps[0].samples["dropped"][0]["reason"] == "same answer as id s0"
    with pytest.raises(OperatorError, match="no answer"):
        build_operators([OperatorStep(name="qa_dedupe")], "pretrain")


def test_decontaminate(spark: SparkSession, tmp_path: Path) -> None:
    question = "Which river flows through the old town and feeds the great northern lake every spring"
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": question, "answer": "the Elbe"}) + "\n")
    df = pretrain(
        spark,
        "Intro. " + question + "? It is the Elbe.",
        "Unrelated text about cooking pasta at home",
        "床前明月光",
    )
    op = Decontaminator(Decontaminator.Params(eval_sets=[str(tmp_path / "eval.jsonl")]))
    res = run_operators(df, [op], PRETRAIN)
    assert [r["id"] for r in res.df.orderBy("id").collect()] == ["id1", "id2"]
    assert "n-grams with the evaluation sets" in res.steps[0].samples["dropped"][0]["reason"]


def test_near_dedupe_distributed_components_agree_with_local(spark: SparkSession) -> None:
    """max_local_edges 0 forces the Spark connected components; both paths drop the same records."""
    base = "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch"
    zh = "床前明月光疑是地上霜举头望明月低头思故乡白日依山尽黄河入海流欲穷千里目更上一层楼"
    docs = [
        base,
        base.replace("quick", "quack"),
        base.replace("lazy", "hazy"),
        zh,
        zh.replace("霜", "雪"),
        "other",
    ]
    df = pretrain(spark, *docs)
    local = run_operators(df, [NearDeduplicator()], PRETRAIN)
    spread = run_operators(df, [NearDeduplicator(NearDeduplicator.Params(max_local_edges=0))], PRETRAIN)
    assert texts(local.df) == texts(spread.df) == [base, zh, "other"]
    assert local.steps[0].samples == spread.steps[0].samples
