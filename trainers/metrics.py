"""Rule metrics for generated answers: ROUGE-L and BLEU-4 on character-tokenised Chinese.

Tokenisation (``tokenize``): every CJK character (ideographs, kana, hangul) is one token, each run of
other letters/digits (Latin, accented, Cyrillic, ...) is one lower-cased token, and whitespace and
punctuation are dropped. So "用Python写3个例子！" -> 用 python 写 3 个 例 子.

- ``rouge_l``: F-measure (beta = 1) of the longest common subsequence, as in Lin (2004) and Google's
  rouge-score; 0.0 when either side has no tokens.
- ``corpus_bleu``: BLEU-4 of Papineni et al. (2002) over a corpus with one reference per hypothesis:
  clipped n-gram counts summed over the corpus, uniform weights, brevity penalty exp(1 - r/c) when c <= r;
  no smoothing (0.0 when some order has no match), like NLTK's ``corpus_bleu``.
- ``sentence_bleu``: BLEU-4 of one pair with NIST geometric smoothing (Chen & Cherry 2014, method 3;
  NLTK ``SmoothingFunction().method3``): the k-th order with no match counts 1 / (2^k * n-grams).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_CJK = (
    "\u3040-\u30ff"  # hiragana, katakana
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B-G
)
# One CJK character, or a run of word characters that are neither CJK nor '_' (\w minus those).
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")

MAX_ORDER = 4


def tokenize(text: str | None) -> list[str]:
    """Character-level tokens for Chinese, word-level for Latin runs; punctuation and spaces dropped."""
    if not text:
        return []
    return [t.lower() for t in _TOKEN_RE.findall(text)]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 between a prediction and its reference."""
    pred, ref = tokenize(prediction), tokenize(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class BleuStats:
    """Sufficient statistics of BLEU: clipped matches and totals per order, hypothesis/reference length."""

    matches: tuple[int, ...]
    totals: tuple[int, ...]
    hyp_len: int
    ref_len: int

    def __add__(self, other: BleuStats) -> BleuStats:
        return BleuStats(
            tuple(a + b for a, b in zip(self.matches, other.matches, strict=True)),
            tuple(a + b for a, b in zip(self.totals, other.totals, strict=True)),
            self.hyp_len + other.hyp_len,
            self.ref_len + other.ref_len,
        )


def bleu_stats(hyp: Sequence[str], ref: Sequence[str], max_order: int = MAX_ORDER) -> BleuStats:
    """Clipped n-gram matches of one tokenised hypothesis against one reference."""
    matches, totals = [], []
    for n in range(1, max_order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        matches.append(sum(min(c, r[g]) for g, c in h.items()))
        totals.append(max(len(hyp) - n + 1, 0))
    return BleuStats(tuple(matches), tuple(totals), len(hyp), len(ref))


def _brevity_penalty(hyp_len: int, ref_len: int) -> float:
    if hyp_len == 0:
        return 0.0
    return 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)


def bleu_from_stats(stats: BleuStats, smooth: bool = False) -> float:
    """BLEU from summed statistics; ``smooth`` applies NIST geometric smoothing to zero-match orders."""
    if stats.hyp_len == 0:
        return 0.0
    log_p = 0.0
    k = 0
    for m, t in zip(stats.matches, stats.totals, strict=True):
        if m > 0:
            log_p += math.log(m / t)
        elif smooth:
            k += 1
            log_p += math.log(1 / (2**k * max(t, 1)))
        else:
            return 0.0
    return _brevity_penalty(stats.hyp_len, stats.ref_len) * math.exp(log_p / len(stats.matches))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level BLEU-4 (one reference per prediction), unsmoothed."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    total = BleuStats((0,) * MAX_ORDER, (0,) * MAX_ORDER, 0, 0)
    for p, r in zip(predictions, references, strict=True):
        total = total + bleu_stats(tokenize(p), tokenize(r))
    return bleu_from_stats(total)


def sentence_bleu(prediction: str, reference: str) -> float:
    """Sentence-level BLEU-4 with NIST geometric smoothing."""
    return bleu_from_stats(bleu_stats(tokenize(prediction), tokenize(reference)), smooth=True)
