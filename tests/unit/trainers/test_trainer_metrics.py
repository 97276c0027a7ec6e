"""ROUGE-L and BLEU-4 on character-tokenised Chinese, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from trainers.metrics import bleu_stats, corpus_bleu, lcs_length, rouge_l, sentence_bleu, tokenize


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("用Python写3个例子！", ["用", "python", "写", "3", "个", "例", "子"]),
        ("Hello, 世界 2024年!", ["hello", "世", "界", "2024", "年"]),
        ("snake_case\tand  café", ["snake", "case", "and", "café"]),
        ("，。！？  \n", []),
        ("", []),
        (None, []),
    ],
)
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


def test_lcs_length():
    assert lcs_length(list("甲乙丙"), list("甲丙丁戊")) == 2
    assert lcs_length([], list("甲")) == 0


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("我爱北京", "我爱上海", 0.5),  # LCS 2 of 4 and 4
        ("甲乙丙", "甲丙丁戊", 4 / 7),  # LCS 2: P 2/3, R 1/2
        ("我用Python写代码", "我用 python 编写代码。", 12 / 13),  # P 6/6, R 6/7
        ("今天天气很好", "今天天气很好！", 1.0),  # punctuation does not count
        ("", "今天天气很好", 0.0),
        ("今天天气很好", "", 0.0),
        ("完全不同", "毫无关系", 0.0),
    ],
)
def test_rouge_l(pred, ref, expected):
    assert rouge_l(pred, ref) == pytest.approx(expected)


def test_bleu_stats_clip_repeated_ngrams():
    # "天" occurs twice in both; "的的的" may match "的" only once.
    s = bleu_stats(tokenize("的的的"), tokenize("我的书"))
    assert s.matches[0] == 1 and s.totals[0] == 3


def test_sentence_bleu_without_zero_orders():
    # 1-4 gram precisions 4/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty.
    expected = (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert sentence_bleu("今天天气很好", "今天天气不错") == pytest.approx(expected)
    assert corpus_bleu(["今天天气很好"], ["今天天气不错"]) == pytest.approx(expected)


def test_bleu_brevity_penalty():
    # All precisions 1; c = 4, r = 6 -> BP = exp(1 - 6/4).
    assert sentence_bleu("今天天气", "今天天气很好") == pytest.approx(math.exp(-0.5))


def test_sentence_bleu_geometric_smoothing():
    # p1 2/4, p2 1/3, p3 0/2 -> 1/(2*2), p4 0/1 -> 1/(4*1)
    assert sentence_bleu("我爱北京", "我爱上海") == pytest.approx((1 / 2 * 1 / 3 * 1 / 4 * 1 / 4) ** 0.25)


def test_corpus_bleu_sums_statistics_over_the_corpus():
    # Pair 2 has no 3/4-grams; summed: 6/6, 4/4, 2/2, 1/1; c = 6, r = 8 -> BP = exp(1 - 8/6).
    score = corpus_bleu(["今天天气", "你好"], ["今天天气很好", "你好"])
    assert score == pytest.approx(math.exp(1 - 8 / 6))


def test_corpus_bleu_is_unsmoothed_and_zero_without_4gram_matches():
    assert corpus_bleu(["我爱北京"], ["我爱上海"]) == 0.0


@pytest.mark.parametrize("fn", [sentence_bleu, lambda p, r: corpus_bleu([p], [r])])
def test_bleu_edge_cases(fn):
    assert fn("今天天气很好", "今天天气很好") == pytest.approx(1.0)
    assert fn("", "今天天气很好") == 0.0
    assert fn("！！", "今天天气很好") == 0.0  # only punctuation: no tokens


def test_corpus_bleu_checks_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus_bleu(["a", "b"], ["a"])
    assert corpus_bleu([], []) == 0.0
