"""Text operators on tiny frames: Chinese and English cases, tricky inputs and decoys that must stay unchanged."""

from __future__ import annotations

import pytest
from pyspark.sql import DataFrame, SparkSession

from spark_ops.canonical import schema
from spark_ops.operators import OperatorContext, OperatorError, build_operators
from spark_ops.operators.abnormal import (
    BoilerplateLineRemover,
    EmojiRemover,
    GarbledTextRemover,
    HtmlCleaner,
    InvisibleCharRemover,
    SpecialSymbolRemover,
)
from spark_ops.operators.chinese import ChineseConverter
from spark_ops.operators.filters import (
    ChineseRatioFilter,
    GarbledRatioFilter,
    RegexFilter,
    RepetitionFilter,
    SymbolRatioFilter,
    TokenLengthFilter,
    TruncationFilter,
)
from spark_ops.operators.normalize import Normalizer
from spark_ops.operators.replace import DateNormalizer, RegexReplacer
from spark_ops.operators.tagging import LanguageTagger, LengthBucketTagger, SourceTagger, UserTagger
from spark_ops.pipeline import run_operators
from tasks.specs import OperatorStep

PRETRAIN = OperatorContext(usage="pretrain")
SFT = OperatorContext(usage="sft")
RM = OperatorContext(usage="reward_model")


def pretrain(spark: SparkSession, *texts: str | None, tags: list[str] | None = None) -> DataFrame:
    rows = [(f"id{i:02d}", t, ("src", tags or [])) for i, t in enumerate(texts)]
    return spark.createDataFrame(rows, schema("pretrain"))


def texts(df: DataFrame) -> list[str]:
    return [r["text"] for r in df.orderBy("id").collect()]


def kept_ids(df: DataFrame) -> list[str]:
    return [r["id"] for r in df.orderBy("id").collect()]


# ------------------------------------------------------------------------------------------- normalise


def test_normalize_defaults_unchanged_for_typographic_punctuation(spark: SparkSession) -> None:
    s = "他说：“你好……”——然后走了。 “Quote” – dash…"
    assert texts(
        Normalizer(Normalizer.Params(keep_cjk_punctuation=True)).apply(pretrain(spark, s), PRETRAIN)
    ) == [s]


def test_normalize_punctuation_map(spark: SparkSession) -> None:
    op = Normalizer(Normalizer.Params(punctuation=True))
    out = texts(op.apply(pretrain(spark, "“Smart” ‘quotes’ – and — dash… ok", "2−3"), PRETRAIN))
    assert out == ["\"Smart\" 'quotes' - and - dash... ok", "2-3"]
    custom = Normalizer(Normalizer.Params(punctuation=True, punctuation_map={"…": "……"}))
    assert texts(custom.apply(pretrain(spark, "等等…“好”"), PRETRAIN)) == ["等等……“好”"]
    with pytest.raises(OperatorError, match="single characters"):
        build_operators([OperatorStep(name="normalize", params={"punctuation_map": {"ab": "c"}})], "pretrain")


def test_normalize_enumerator_coverage(spark: SparkSession) -> None:
    s = "①a⑴b㊀c⒈d⓵e➊f❶g➀h⑩i⑽j⓾k❿l➉m➓n⑪o⓫p㉑q㊿r㈠s"
    out = texts(Normalizer().apply(pretrain(spark, s), PRETRAIN))
    assert out == ["1.a1.b1.c1.d1.e1.f1.g1.h10.i10.j10.k10.l10.m10.n11.o11.p21.q50.r1.s"]


def test_normalize_unicode_forms(spark: SparkSession) -> None:
    # NFC composes e + combining acute and maps the CJK compatibility ideograph U+F900 to U+8C48 (a canonical
    # singleton); NFKC also folds ﬁ, ², the Kangxi radical ⼀ (U+2F00) and full-width CJK punctuation.
    s = "cafe\u0301 ﬁ x² \u2f00 \uf900，"
    nfc = Normalizer(Normalizer.Params(unicode_form="NFC", fullwidth=False, enumerators=False))
    assert texts(nfc.apply(pretrain(spark, s), PRETRAIN)) == ["café ﬁ x² \u2f00 \u8c48，"]
    nfkc = Normalizer(Normalizer.Params(unicode_form="NFKC", keep_cjk_punctuation=True))
    assert texts(nfkc.apply(pretrain(spark, s, None), PRETRAIN)) == ["café fi x2 一 \u8c48,", None]


def test_normalize_nfkc_on_lists_and_answers(spark: SparkSession) -> None:
    rows = [("id0", None, ["ｑ\u0301", None], [("ﬁ", 1.0, 1), (None, 0.5, 2)], ("s", []))]
    df = spark.createDataFrame(rows, schema("reward_model"))
    out = Normalizer(Normalizer.Params(unicode_form="NFKC")).apply(df, RM).first()
    assert out["context"] == ["q\u0301", None]
    assert [(a["text"], a["score"], a["rank"]) for a in out["answers"]] == [("fi", 1.0, 1), (None, 0.5, 2)]


# ------------------------------------------------------------------------------------- abnormal content


def test_remove_invisible(spark: SparkSession) -> None:
    df = pretrain(spark, "a\x00b\r\nc\rd\te\u200bf\ufeffg\u202eh\x85i", "中\u200c文\n\t缩进", "plain")
    assert texts(InvisibleCharRemover().apply(df, PRETRAIN)) == ["ab\nc\nd\tefghi", "中文\n\t缩进", "plain"]


def test_remove_garbled_keeps_real_accents_and_symbols(spark: SparkSession) -> None:
    utf8_as_latin1 = "你好".encode().decode("latin-1")  # 'ä½\xa0å¥½'
    gbk_as_latin1 = "你好".encode("gbk").decode("latin-1")  # 'ÄãºÃ'
    df = pretrain(
        spark,
        "cafÃ© is â€œgoodâ€\x9d, Ð¿Ñ€Ð¸Ð²ÐµÑ‚ (привет)",
        f"说{utf8_as_latin1}了 {gbk_as_latin1} world",
        "好\ufffd\ufffd 锟斤拷锟斤拷 烫烫烫烫 end ï¿½",
        "café naïve Straße £5 © 2024 ½ cup «¿Qué?» Ærø Ça, il a dit «café…» — Ñandú×2",  # decoys
        "烫手的山芋，烫烫的",  # decoy: only two 烫 in a row
    )
    out = texts(GarbledTextRemover().apply(df, PRETRAIN))
    assert out == [
        "caf is good,  (привет)",
        "说了  world",
        "好   end ",
        "café naïve Straße £5 © 2024 ½ cup «¿Qué?» Ærø Ça, il a dit «café…» — Ñandú×2",
        "烫手的山芋，烫烫的",
    ]


def test_remove_emoji_keeps_enumerators_digits_and_cjk(spark: SparkSession) -> None:
    df = pretrain(spark, "hi 😀👍🏽 ok 👨\u200d👩\u200d👧 fam 🇨🇳 1️⃣ x", "中文😂。❶➀ #1 2*3 ©")
    assert texts(EmojiRemover().apply(df, PRETRAIN)) == ["hi  ok  fam   x", "中文。❶➀ #1 2*3 ©"]


def test_clean_html(spark: SparkSession) -> None:
    html = (
        '<div class="a"><p>Hello &amp; <b>world</b></p><br/>你&#22909;&eacute;'
        "<script>var x = '<p>';</script><!-- c --><style>p{}</style></div>"
    )
    decoys = "if a<b&&c>d then x < y > z; 1 &lt 2; AT&T"
    out = texts(HtmlCleaner().apply(pretrain(spark, html, decoys), PRETRAIN))
    assert out == ["Hello & world\n\n你好é", decoys]
    common = HtmlCleaner(HtmlCleaner.Params(entities="common"))
    out = texts(common.apply(pretrain(spark, "&lt;b&gt; &amp;lt; &ldquo;q&rdquo; &#22909;"), PRETRAIN))
    assert out == ["<b> &lt; “q” &#22909;"]


def test_remove_symbols(spark: SparkSession) -> None:
    df = pretrain(spark, "• 第一项\n  ■ 第二项\n版权©2024 ®A™", "二○二四年 → 下一步 ★", "a • b")
    assert texts(SpecialSymbolRemover().apply(df, PRETRAIN)) == [
        "第一项\n  第二项\n版权2024 A",
        "二○二四年 → 下一步 ",
        "a  b",
    ]
    extra = SpecialSymbolRemover(SpecialSymbolRemover.Params(symbols="", extra_symbols="→"))
    assert texts(extra.apply(pretrain(spark, "a→b • c"), PRETRAIN)) == ["ab • c"]


def test_remove_boilerplate_lines(spark: SparkSession) -> None:
    long_line = "本书作者声明：版权所有者保留权利。" + "这是一段讨论著作权与合理使用边界的长正文。" * 6
    doc = "正文第一段。\n本文来源：新华社\n关注公众号获取更多\n正文第二段。\nCopyright © 2024 Foo Inc.\n"
    df = pretrain(spark, doc, long_line, "ALL RIGHTS RESERVED.\nbody", "The copyright law says...")
    assert texts(BoilerplateLineRemover().apply(df, PRETRAIN)) == [
        "正文第一段。\n正文第二段。\n",
        long_line,
        "body",
        "The copyright law says...",
    ]
    custom = BoilerplateLineRemover(BoilerplateLineRemover.Params(patterns=[], extra_patterns=["^-- ?$"]))
    assert texts(custom.apply(pretrain(spark, "mail\n-- \nsig"), PRETRAIN)) == ["mail\nsig"]
    with pytest.raises(OperatorError, match=r"params.extra_patterns.*extra_patterns\[1\]: invalid regular"):
        build_operators(
            [OperatorStep(name="remove_boilerplate_lines", params={"extra_patterns": ["ok", "(bad"]})],
            "pretrain",
        )


# ------------------------------------------------------------------------------ Chinese, regex, dates


def test_convert_chinese_phrase_aware(spark: SparkSession) -> None:
    df = pretrain(spark, "头发和发展，后来的皇后。English stays.", None)
    s2t = ChineseConverter(ChineseConverter.Params(config="s2t"))
    assert texts(s2t.apply(df, PRETRAIN)) == ["頭髮和發展，後來的皇后。English stays.", None]
    t2s = ChineseConverter()
    assert texts(t2s.apply(pretrain(spark, "漢字與頭髮"), PRETRAIN)) == ["汉字与头发"]
    tw = ChineseConverter(ChineseConverter.Params(config="s2twp"))
    assert texts(tw.apply(pretrain(spark, "软件和鼠标"), PRETRAIN)) == ["軟體和滑鼠"]


def test_convert_chinese_on_sft_turns(spark: SparkSession) -> None:
    df = spark.createDataFrame([("id0", None, ["簡體", "問題"], "答案", ("s", []))], schema("sft"))
    out = ChineseConverter().apply(df, SFT).first()
    assert (out["context"], out["target"]) == (["简体", "问题"], "答案")


def test_regex_replace(spark: SparkSession) -> None:
    rules = [{"pattern": r"(\d{3})\d{4}(\d{4})", "replacement": "$1****$2"}, {"pattern": r"\s*[（(]完[）)]$"}]
    op = build_operators([OperatorStep(name="regex_replace", params={"rules": rules})], "pretrain")[0]
    assert texts(op.apply(pretrain(spark, "电话13812345678（完）", "no match"), PRETRAIN)) == [
        "电话138****5678",
        "no match",
    ]


def test_regex_replace_errors_name_the_rule() -> None:
    with pytest.raises(
        OperatorError, match=r"(?s)operators\[0\] \(regex_replace\).*params.rules.1.pattern.*'\[a-'"
    ):
        RegexReplacer.from_step(
            OperatorStep(name="regex_replace", params={"rules": [{"pattern": "a"}, {"pattern": "[a-"}]}),
            0,
            "pretrain",
        )
    with pytest.raises(OperatorError, match=r"rules\[0\]: replacement '\$2' refers to group \$2"):
        build_operators(
            [OperatorStep(name="regex_replace", params={"rules": [{"pattern": "(a)", "replacement": "$2"}]})],
            "pretrain",
        )


def test_normalize_dates(spark: SparkSession) -> None:
    df = pretrain(
        spark,
        "会议于2024年3月5日召开，2024 年 12 月 31 号结束。",
        "2024/3/5 14:30, 2024.03.05 and 2024-3-5",
        "March 5, 2024; 5th March 2024; Sept. 1 2023",
        # decoys: versions, impossible dates, fractions, order numbers, prices, a month without a day
        "v1.2024.3.5 2024/13/45 2023年2月29日 3/4 cup 订单号20240305 12345/3/5 ¥2024.35 May 2024 1.5.2024",
        "03/05/2024",
    )
    out = texts(DateNormalizer().apply(df, PRETRAIN))
    assert out == [
        "会议于2024-03-05召开，2024-12-31结束。",
        "2024-03-05 14:30, 2024-03-05 and 2024-03-05",
        "2024-03-05; 2024-03-05; 2023-09-01",
        "v1.2024.3.5 2024/13/45 2023年2月29日 3/4 cup 订单号20240305 12345/3/5 ¥2024.35 May 2024 1.5.2024",
        "03/05/2024",
    ]
    mdy = DateNormalizer(DateNormalizer.Params(numeric_order="mdy", target_format="%Y年%m月%d日"))
    assert texts(mdy.apply(pretrain(spark, "03/05/2024", "13/05/2024"), PRETRAIN)) == [
        "2024年03月05日",
        "13/05/2024",
    ]
    dmy = DateNormalizer(DateNormalizer.Params(numeric_order="dmy"))
    assert texts(dmy.apply(pretrain(spark, "13/05/2024"), PRETRAIN)) == ["2024-05-13"]
    with pytest.raises(OperatorError, match="target_format"):
        build_operators([OperatorStep(name="normalize_dates", params={"target_format": "%Y"})], "pretrain")


# ------------------------------------------------------------------------------------------- filters


def test_token_length_filter(spark: SparkSession) -> None:
    # 你好世界 = 4 tokens; "hello world !" = 3; "你好 world" = 3; "" = 0
    df = pretrain(spark, "你好世界", "hello world !", "你好 world", "")
    op = TokenLengthFilter(TokenLengthFilter.Params(min_tokens=3, max_tokens=3))
    assert kept_ids(op.apply(df, PRETRAIN)) == ["id01", "id02"]


def test_symbol_ratio_filter(spark: SparkSession) -> None:
    df = pretrain(spark, "这是正常的一句话，没有问题。", "Normal English, fine.", "★☆★ ### --- !!! ???", "")
    assert kept_ids(SymbolRatioFilter().apply(df, PRETRAIN)) == ["id00", "id01", "id03"]


def test_chinese_ratio_filter(spark: SparkSession) -> None:
    df = pretrain(spark, "中文为主的文本，里面夹杂了 a few English words", "Mostly English 中", "纯中文")
    assert kept_ids(ChineseRatioFilter().apply(df, PRETRAIN)) == ["id00", "id02"]
    non_zh = ChineseRatioFilter(ChineseRatioFilter.Params(min_ratio=0, max_ratio=0.1))
    assert kept_ids(non_zh.apply(df, PRETRAIN)) == ["id01"]
    with pytest.raises(OperatorError, match="below min_ratio"):
        build_operators(
            [OperatorStep(name="chinese_ratio_filter", params={"min_ratio": 0.5, "max_ratio": 0.2})], "sft"
        )


def test_garbled_ratio_filter(spark: SparkSession) -> None:
    garbled = "æ\u0088\u0091ä»¬ç\u009a\u0084" * 3 + " ok"
    df = pretrain(spark, "正常文本 café naïve", garbled, "好\ufffd" + "正常" * 30)
    assert kept_ids(GarbledRatioFilter().apply(df, PRETRAIN)) == ["id00", "id02"]


def test_repetition_filter(spark: SparkSession) -> None:
    normal_zh = (
        "今天天气很好，我们去公园散步。公园里有很多人在锻炼身体，孩子们在草地上玩耍。\n傍晚我们回家吃饭。"
    )
    normal_en = (
        "The committee met on Tuesday to discuss the budget. Several members raised concerns about "
        "the cost of the new library, while others argued it would pay for itself within a decade."
    )
    dup_lines = "点击购买\n点击购买\n点击购买\n点击购买\n正文"
    spam = "buy now " * 30
    zh_spam = "哈哈哈哈" * 20
    df = pretrain(spark, normal_zh, normal_en, dup_lines, spam, zh_spam)
    result = run_operators(df, [RepetitionFilter()], PRETRAIN)
    try:
        assert kept_ids(result.df) == ["id00", "id01"]
        reasons = {s["id"]: s["reason"] for s in result.steps[0].samples["dropped"]}
        assert reasons["id02"].startswith("duplicate lines 0.600 > 0.3")
        assert "top 2-gram characters" in reasons["id03"]
    finally:
        result.release()
    every_text = RepetitionFilter(RepetitionFilter.Params(min_tokens=0))
    assert kept_ids(every_text.apply(pretrain(spark, "短", "", None, "a b"), PRETRAIN)) == [
        "id00",
        "id01",
        "id02",
        "id03",
    ]


def test_regex_filter(spark: SparkSession) -> None:
    df = pretrain(spark, "正文 http://spam.example", "干净的文本", "BUY NOW")
    drop = RegexFilter(RegexFilter.Params(patterns=[r"https?://", r"(?i)buy now"]))
    assert kept_ids(drop.apply(df, PRETRAIN)) == ["id01"]
    keep = RegexFilter(RegexFilter.Params(patterns=[r"\p{IsHan}"], action="keep"))
    assert kept_ids(keep.apply(df, PRETRAIN)) == ["id00", "id01"]
    with pytest.raises(OperatorError, match=r"patterns\[0\]: invalid regular expression"):
        build_operators([OperatorStep(name="regex_filter", params={"patterns": ["(x"]})], "pretrain")


def test_truncation_filter(spark: SparkSession) -> None:
    df = pretrain(
        spark,
        "这是完整的一句话。",
        "这句话没有说完就被截",
        "He said “done.”",
        "A complete sentence!  ",
        "It was cut in the mid",
        "（完）。",
        "```python\nprint(1)\n```",
    )
    assert kept_ids(TruncationFilter().apply(df, PRETRAIN)) == ["id00", "id02", "id03", "id05", "id06"]
    sft = spark.createDataFrame(
        [("a", None, ["问题"], "回答完整。", ("s", [])), ("b", None, ["问题。"], "回答被截", ("s", []))],
        schema("sft"),
    )
    only_target = TruncationFilter(TruncationFilter.Params(columns=["target"]))
    assert kept_ids(only_target.apply(sft, SFT)) == ["a"]


# ------------------------------------------------------------------------------------------- tagging


def test_tag_language(spark: SparkSession) -> None:
    df = pretrain(
        spark,
        "今天天气很好。",
        "The weather is nice today.",
        "我们用 Python 和 Spark 处理数据，效率很高。",
        "今日はいい天気ですね。",
        "Погода хорошая.",
        "12345 !!!",
        tags=["lang:old", "keep"],
    )
    out = LanguageTagger().apply(df, PRETRAIN).orderBy("id").collect()
    assert [r["meta"]["tags"] for r in out] == [
        ["keep", "lang:zh"],
        ["keep", "lang:en"],
        ["keep", "lang:zh"],
        ["keep", "lang:other"],
        ["keep", "lang:other"],
        ["keep", "lang:other"],
    ]


def test_tag_length_source_and_user_tags(spark: SparkSession) -> None:
    df = pretrain(spark, "a" * 5, "b" * 10, "c" * 25, tags=["x"])
    ops = [
        LengthBucketTagger(LengthBucketTagger.Params(bounds=[10, 20])),
        SourceTagger(),
        SourceTagger(SourceTagger.Params(source="web")),
        UserTagger(UserTagger.Params(tags=["domain:test", "x"])),
        UserTagger(UserTagger.Params(tags=["has-c"], if_matches="c")),
    ]
    result = run_operators(df, ops, PRETRAIN)
    try:
        rows = result.df.orderBy("id").collect()
        assert [r["meta"]["tags"] for r in rows] == [
            ["x", "length:0-9", "source:web", "domain:test"],
            ["x", "length:10-19", "source:web", "domain:test"],
            ["x", "length:20+", "source:web", "domain:test", "has-c"],
        ]
        assert {r["meta"]["source"] for r in rows} == {"web"}
        assert [s.modified for s in result.steps] == [3, 3, 3, 3, 1]
        sample = result.steps[0].samples["modified"][0]["changes"]["meta"]
        assert "length:0-9" in sample["after"] and "length:0-9" not in sample["before"]
    finally:
        result.release()


def test_new_operators_count_in_the_pipeline(spark: SparkSession) -> None:
    df = pretrain(spark, "<p>你好&amp;世界😀</p>", "正常。", "\ufffd\ufffd")
    ops = build_operators(
        [
            OperatorStep(name="clean_html"),
            OperatorStep(name="remove_emoji"),
            OperatorStep(name="remove_garbled"),
            OperatorStep(name="empty_filter"),
        ],
        "pretrain",
    )
    result = run_operators(df, ops, PRETRAIN)
    try:
        assert [s.summary() for s in result.steps] == [
            {"name": "clean_html", "kept": 3, "dropped": 0, "modified": 1},
            {"name": "remove_emoji", "kept": 3, "dropped": 0, "modified": 1},
            {"name": "remove_garbled", "kept": 3, "dropped": 0, "modified": 1},
            {"name": "empty_filter", "kept": 2, "dropped": 1, "modified": 0},
        ]
        assert result.steps[0].samples["modified"][0]["changes"]["text"]["after"] == "你好&世界😀"
        assert texts(result.df) == ["你好&世界", "正常。"]
    finally:
        result.release()
