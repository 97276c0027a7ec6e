"""repetition_filter: its Arrow/numpy measures against a plain-Python statement of the rules, and decoys just
under / over every threshold in Chinese and English, plus empty, blank and very short texts."""

from __future__ import annotations

import random
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_ops.canonical import schema
from spark_ops.operators import OperatorContext, repetition
from spark_ops.operators.filters import TOKEN, RepetitionFilter
from spark_ops.operators.repetition import Tokens, _valid_utf8, measure_fields, repetition_measures
from spark_ops.pipeline import run_operators

PRETRAIN = OperatorContext(usage="pretrain")
TOP = (2, 3, 4)
DUP = (5, 6, 7, 8, 9, 10)

# Characters whose class (CJK / separator / other) is the same in every Unicode version.
CJK = "\u4e00-\u9fff\u3041-\u3096\u30a1-\u30fa\uac00-\ud7a3"
SEP = " \t\n\x0b\f\r\xa0\u3000\u2000-\u200a\u2028\u2029"
PY_TOKEN = re.compile(f"[{CJK}]|[^{SEP}{CJK}]+")


def reference(
    text: str | None, min_tokens: int, top_ns=TOP, dup_ns=DUP, toks: list[str] | None = None
) -> dict[str, float]:
    """The rules as the docstring states them, one text at a time, with strings."""
    text = text or ""
    toks = PY_TOKEN.findall(text) if toks is None else toks

    def nonblank(items: list[str]) -> list[str]:
        return [s for s in items if s.strip(" ")]

    def dup(items: list) -> float:
        return (len(items) - len(set(items))) / len(items) if items else 0.0

    def dup_chars(items: list[str]) -> float:
        total = sum(map(len, items))
        return (total - sum(map(len, set(items)))) / total if total else 0.0

    lines = nonblank(text.split("\n"))
    paras = nonblank(re.split(r"\n[ \t\n\x0b\f\r]*\n", text))
    out = {
        "dup_line": dup(lines),
        "dup_para": dup(paras),
        "dup_line_char": dup_chars(lines),
        "dup_para_char": dup_chars(paras),
    }
    enough = len(toks) >= min_tokens
    total = sum(map(len, toks))
    for n in top_ns:
        grams = Counter(" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1))
        best = max(grams.values(), default=0)
        top = min((g for g, c in grams.items() if c == best), default="")
        out[f"top_{n}"] = best * len(top.replace(" ", "")) / total if enough and best > 1 else 0.0
    for n in dup_ns:
        out[f"dup_{n}"] = dup([tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]) if enough else 0.0
    return out


PIECES = [
    *["buy", "now", "the", "a", "données", "x1", "aa", "b", "zz", "yyyyyy", "，", "。", "!", "、", "\x01q"],
    *"天气好的の카한ア",
    *[" ", " ", " ", "\n", "\n\n", "\n \n", "\n\t\n", "\t", "\u3000", "\xa0", "  ", " \n", "\x0b"],
]


def random_texts(rng: random.Random, n: int) -> list[str | None]:
    """Short texts over a tiny vocabulary: many repeats and ties, lines of spaces, words glued to CJK."""
    out: list[str | None] = [None, "", " ", "\n\n", "天", "a"]
    while len(out) < n:
        out.append("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 90))))
    return out


def measured(texts: list[str | None], min_tokens: int, top_ns=TOP, dup_ns=DUP) -> list[dict[str, float]]:
    m = repetition_measures(pa.array(texts, pa.string()), top_ns, dup_ns, min_tokens)
    assert sorted(m) == sorted(measure_fields(top_ns, dup_ns))
    return [{k: float(v[i]) for k, v in m.items()} for i in range(len(texts))]


@pytest.mark.parametrize(
    ("min_tokens", "top_ns", "dup_ns"),
    [(0, TOP, DUP), (20, TOP, DUP), (3, (1, 2, 5), (1, 3, 12)), (0, (), (2,)), (0, (), ())],
)
def test_measures_match_the_plain_statement(min_tokens: int, top_ns: tuple, dup_ns: tuple) -> None:
    texts = random_texts(random.Random(min_tokens * 7 + len(top_ns)), 400)
    got = measured(texts, min_tokens, top_ns, dup_ns)
    for text, g in zip(texts, got, strict=True):
        assert g == reference(text, min_tokens, top_ns, dup_ns), repr(text)


def test_rows_of_a_batch_do_not_mix(monkeypatch: pytest.MonkeyPatch) -> None:
    # The 3-gram "p q r" spans the end of row 0 and the start of row 1; identical rows share no n-grams.
    texts = ["p q r s p q", "r s t", "a b c d e f", "a b c d e f"]
    for top_ns in [(2, 3), (1, 3)]:  # without and with the 1-gram level
        got = measured(texts, 0, top_ns, (3, 5))
        assert [g["dup_3"] for g in got] == [0.0, 0.0, 0.0, 0.0]
        assert [g["top_3"] for g in got] == [0.0, 0.0, 0.0, 0.0]
        assert got[0][f"top_{top_ns[0]}"] == (2 * 2 / 6 if top_ns[0] == 2 else 2 * 1 / 6)
    # batch boundaries and the slices a batch is measured in do not matter
    texts = random_texts(random.Random(3), 60)
    whole = measured(texts, 0)
    assert [g for i in range(0, 60, 7) for g in measured(texts[i : i + 7], 0)] == whole
    monkeypatch.setattr(repetition, "CHUNK_BYTES", 50)
    assert measured(texts, 0) == whole
    assert measured([], 0) == []


def test_invalid_utf8_counts_as_replacement_characters() -> None:
    raw = pa.array([b"ok \xff\xfe bad\nx\nx", b"fine", None], pa.binary()).view(pa.string())
    m = repetition_measures(raw, (2,), (), 0)
    assert m["dup_line"].tolist() == [1 / 3, 0.0, 0.0]
    assert m["top_2"].tolist() == [0.0, 0.0, 0.0]
    assert Tokens(_valid_utf8(raw)).strings(np.arange(5)) == ["ok", "\ufffd\ufffd", "bad", "x", "x"]


def test_tokens_match_the_jvm_token_pattern(spark: SparkSession) -> None:
    """The numpy tokenizer gives what ``filters.TOKEN`` gives in the JVM (token_length_filter's tokens)."""
    texts = [
        *[t for t in random_texts(random.Random(5), 80) if t],
        "Ｆｕｌｌ-width ＡＢＣ and emoji 😀🎉 mixed 中文，日本語のカタカナ、한국어 text.",
        "tabs\tand\x0bvertical\x0ctabs\r\nCRLF \x1c\x1d\x1e\x1f unit separators \x85 NEL \u200b zero-width",
        "e\u0301 combining, 〇々〆 ideographic, ｶﾀｶﾅ half-width, \u2028line\u2029para\u202fnarrow\u205fmath",
        "𠀀𠀁 extension B, ⺀⼀ radicals, ㄅㄆ bopomofo, ꥠ hangul jamo ext, ㋐ circled katakana",
    ]
    df = spark.createDataFrame([(t,) for t in texts], "text string")
    jvm = [r[0] for r in df.select(F.regexp_extract_all("text", F.lit(f"({TOKEN})"), 1)).collect()]
    toks = Tokens(pa.array(texts))
    ours = toks.strings(np.arange(len(toks.ids)))
    rows = toks.row.tolist()
    for i, expected in enumerate(jvm):
        assert [t for t, r in zip(ours, rows, strict=True) if r == i] == expected, repr(texts[i])


# --------------------------------------------------------------------------------------- the Spark filter


def frame(spark: SparkSession, *texts: str | None) -> DataFrame:
    return spark.createDataFrame(
        [(f"id{i:02d}", t, ("src", [])) for i, t in enumerate(texts)], schema("pretrain")
    )


def kept(op: RepetitionFilter, spark: SparkSession, *texts: str | None) -> list[bool]:
    ids = {r["id"] for r in op.apply(frame(spark, *texts), PRETRAIN).collect()}
    return [f"id{i:02d}" in ids for i in range(len(texts))]


def only(**rule: object) -> RepetitionFilter:
    """A filter with every rule off but ``rule`` (and min_tokens 0 unless given)."""
    off = {
        "max_dup_line_frac": None,
        "max_dup_para_frac": None,
        "max_dup_line_char_frac": None,
        "max_dup_para_char_frac": None,
        "top_ngram_max_char_frac": {},
        "dup_ngram_max_frac": {},
        "min_tokens": 0,
    }
    return RepetitionFilter(RepetitionFilter.Params(**{**off, **rule}))


HAN = "一二三四五六七八九十百千万亿甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉戌亥春夏秋冬东南西北金木水火土"


def words(n: int, width: int = 4) -> list[str]:
    return [f"w{i:0{width - 1}d}" for i in range(n)]


def items(distinct: list[str], repeats: int) -> list[str]:
    """``distinct`` items with the first one repeated ``repeats`` more times, spread out."""
    out = list(distinct)
    for k in range(repeats):
        out.insert(2 * k + 1, distinct[0])
    return out


ZH_LINES = [f"第{HAN[i]}行说的是{HAN[i + 10]}件事" for i in range(14)]
EN_LINES = [f"line {w} says something else" for w in words(14)]


@pytest.mark.parametrize("lines", [ZH_LINES, EN_LINES], ids=["zh", "en"])
def test_duplicate_lines_at_and_over_the_threshold(spark: SparkSession, lines: list[str]) -> None:
    op = only(max_dup_line_frac=0.3)
    at = "\n".join(items(lines[:7], 3))  # 3 of 10 lines repeat: 0.3 is allowed
    over = "\n".join(items(lines[:9], 4))  # 4 / 13
    # decoys: a trailing space makes a different line; lines of ASCII spaces are not lines
    near = "\n".join([*lines[:4], lines[0] + " ", lines[1] + " ", "   ", "   ", " "])
    assert kept(op, spark, at, over, near) == [True, False, True]


@pytest.mark.parametrize("paras", [ZH_LINES, EN_LINES], ids=["zh", "en"])
def test_duplicate_paragraphs_at_and_over_the_threshold(spark: SparkSession, paras: list[str]) -> None:
    op = only(max_dup_para_frac=0.3)
    at = "\n \t\n".join(items(paras[:7], 3))  # blank lines with spaces or tabs still separate paragraphs
    over = "\n\n\n".join(items(paras[:9], 4))
    one_newline = "\n".join(items(paras[:7], 5))  # lines, not paragraphs: one paragraph
    assert kept(op, spark, at, over, one_newline) == [True, False, True]


@pytest.mark.parametrize(
    ("sep", "rule"), [("\n", "max_dup_line_char_frac"), ("\n\n", "max_dup_para_char_frac")]
)
def test_duplicate_characters_at_and_over_the_threshold(spark: SparkSession, sep: str, rule: str) -> None:
    op = only(**{rule: 0.2})
    dup, other = HAN[:20], HAN[20:40]  # 20 characters each; dup comes twice
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"  # 40
    at = sep.join([dup, other, dup, letters])  # 20 of 100 characters repeat
    over = sep.join([dup, other, dup, letters[:-1]])  # 20 / 99
    assert kept(op, spark, at, over) == [True, False]


def test_top_bigram_share_at_and_over_the_threshold(spark: SparkSession) -> None:
    op = only(top_ngram_max_char_frac={2: 0.2})
    # Chinese: every character is a token; "天气" 4 times in 40 characters = 0.2, in 39 = 0.205
    zh_at = "".join("天气" + HAN[8 * k : 8 * k + 8] for k in range(4))
    zh_over = zh_at[:-1]
    # English: "buy now" (6 characters of tokens) 4 times in 120 characters of tokens = 0.2, in 119 = 0.2017
    filler = words(24)
    en_at = " ".join(w for k in range(4) for w in ["buy", "now", *filler[6 * k : 6 * k + 6]])
    en_over = en_at[:-1]
    # without spaces between the words the text is one token: nothing repeats
    glued = en_over.replace(" ", "")
    assert kept(op, spark, zh_at, zh_over, en_at, en_over, glued) == [True, False, True, False, True]


def test_top_ngram_ties_take_the_smallest_string(spark: SparkSession) -> None:
    """Two bigrams occur 3 times each; the rule measures the one that sorts first, not the first seen or
    the longest."""
    op = only(top_ngram_max_char_frac={2: 0.2})
    filler = iter(words(40))

    def text(first: str, second: str) -> str:
        parts = [w for _ in range(3) for w in [first, next(filler)]]
        parts += [w for _ in range(3) for w in [second, next(filler)]]
        return " ".join(parts)

    # "ab yyyyyy" (8 characters of tokens, 3 times) sorts before "zz b" (3), which comes first in the text
    long_sorts_first = text("zz b", "ab yyyyyy")
    # "aa b" sorts first; "zz yyyyyy" comes first and is longer
    short_sorts_first = text("zz yyyyyy", "aa b")
    got = measured([long_sorts_first, short_sorts_first], 0, (2,), ())
    assert [g["top_2"] for g in got] == [24 / 57, 9 / 57]
    assert kept(op, spark, long_sorts_first, short_sorts_first) == [False, True]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_repeated_fivegrams_at_and_over_the_threshold(spark: SparkSession, lang: str) -> None:
    op = only(dup_ngram_max_frac={5: 0.15})
    toks = list(HAN) if lang == "zh" else words(len(HAN))
    join = "".join if lang == "zh" else " ".join
    # a 7-token run twice in 24 tokens: its 3 5-grams repeat, of 20; an 8-token run in 30: 4 of 26
    at = join(toks[:7] + toks[7:12] + toks[:7] + toks[12:17])
    over = join(toks[:8] + toks[8:15] + toks[:8] + toks[15:22])
    assert measured([at, over], 0, (), (5,))[0]["dup_5"] == 0.15
    assert kept(op, spark, at, over) == [True, False]


def test_min_tokens_and_short_texts(spark: SparkSession) -> None:
    assert kept(RepetitionFilter(), spark, "哈" * 19, "哈" * 20, "buy now " * 9, "buy now " * 10) == [
        True,
        False,
        True,
        False,
    ]
    every_text = RepetitionFilter(RepetitionFilter.Params(min_tokens=0))
    short = ["", None, " ", "\n\n\n", "\u3000", "短", "a", "a b", "哈哈", "天气好"]
    assert kept(every_text, spark, *short) == [True] * len(short)


def test_reason_names_every_failing_rule(spark: SparkSession) -> None:
    spam = "点击购买\n点击购买\n" + "买" * 30
    result = run_operators(
        frame(spark, "x x x\nx x x", spam, "正常的一句话。"), [RepetitionFilter()], PRETRAIN
    )
    try:
        reasons = {s["id"]: s["reason"] for s in result.steps[0].samples["dropped"]}
        assert reasons["id00"] == "duplicate lines 0.500 > 0.3; duplicate line characters 0.500 > 0.2"
        # 1 of 3 lines repeats, but only 4 of 38 characters: the line-character rule passes
        ref = reference(spam, 20)
        assert reasons["id01"] == "; ".join(
            [f"duplicate lines {ref['dup_line']:.3f} > 0.3"]
            + [
                f"top {n}-gram characters {ref[f'top_{n}']:.3f} > {lim}"
                for n, lim in [(2, 0.2), (3, 0.18), (4, 0.16)]
            ]
            + [
                f"repeated {n}-grams {ref[f'dup_{n}']:.3f} > {lim}"
                for n, lim in zip(DUP, [0.15, 0.14, 0.13, 0.12, 0.11, 0.1], strict=True)
            ]
        )
        assert reasons["id01"].startswith("duplicate lines 0.333 > 0.3; top 2-gram characters 1.579 > 0.2; ")
        assert result.steps[0].kept == 1
    finally:
        result.release()


def test_dialogue_turns_are_lines(spark: SparkSession) -> None:
    sft = OperatorContext(usage="sft")
    rows = [
        ("a", None, ["你好呀", "你好呀"], "你好呀", ("s", [])),
        ("b", None, ["你好", "再见"], "好的", ("s", [])),
    ]
    df = spark.createDataFrame(rows, schema("sft"))
    assert sorted(r["id"] for r in RepetitionFilter().apply(df, sft).collect()) == ["b"]
    target_only = RepetitionFilter(RepetitionFilter.Params(columns=["target"]))
    assert sorted(r["id"] for r in target_only.apply(df, sft).collect()) == ["a", "b"]


def test_spark_measures_match_the_plain_statement(spark: SparkSession) -> None:
    """Through Spark (two partitions, JVM-joined text): every fraction equals the reference on JVM tokens."""
    texts = random_texts(random.Random(11), 300)
    df = frame(spark, *texts).repartition(2)
    op = RepetitionFilter()
    rows = df.select(
        "id",
        "text",
        F.regexp_extract_all(F.coalesce("text", F.lit("")), F.lit(f"({TOKEN})"), 1).alias("t"),
        op._measure(F.coalesce("text", F.lit(""))).alias("m"),
    ).collect()
    assert len(rows) == len(texts)
    for r in rows:
        assert r["m"].asDict() == reference(r["text"], 20, toks=r["t"]), repr(r["text"])
