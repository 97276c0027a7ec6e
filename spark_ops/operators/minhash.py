"""Shingles and MinHash for a batch of texts in a few numpy passes -- no Python work per shingle.

A text's shingles are the character n-grams of its CJK characters (Chinese has no spaces, and one character
edit breaks only n shingles) and the word n-grams of its other words, lower-cased. A text shorter than n gives
itself as one shingle, so short records still compare.

Every shingle is hashed without a Python loop: a batch's code points are one ``uint32`` array ``c``, and with
``S[i] = sum(c[j] * P**j for j < i)`` (mod 2**64, ``P`` odd and so invertible) the polynomial hash of any
span ``[s, e)`` is ``(S[e] - S[s]) * P**-s`` -- one vectorised expression for all n-grams at once. Word n-grams
combine the words' hashes the same way. Hashes go through the SplitMix64 finaliser so their bits are uniform.

MinHash uses multiply-add-shift hashing ``(a x + b) >> 32`` (``a`` odd: a universal family) per permutation
over the batch's flat shingle array and ``minimum.reduceat`` by text. Only the band keys leave: ``bands``
64-bit hashes of ``rows`` consecutive minima each, with the band's index mixed in so one key column holds
every band.

This module is plain numpy (and ``re``) so it is tested without Spark; ``near_dedupe`` runs it in
``mapInArrow``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Han (with radicals, iteration marks and the supplementary planes), Hiragana, Katakana, Hangul.
_CJK_CLASS = (
    "\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3038-\u303b\u3040-\u30ff\u3100-\u312f\u3130-\u318f"
    "\u31a0-\u31bf\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f"
)
NON_CJK = re.compile(f"[^{_CJK_CLASS}]+")
CJK = re.compile(f"[{_CJK_CLASS}]+")
# Letters and digits (no underscore) of the non-CJK part: the CJK runs are replaced by spaces first.
WORD = re.compile(r"[^\W_]+")

_U64 = np.uint64
_P = 0x100000001B3  # the 64-bit FNV prime: odd, so it has an inverse mod 2**64
_P_INV = pow(_P, -1, 2**64)
TAG_CJK = _U64(0x5BD1E9955BD1E995)
TAG_WORD = _U64(0x27D4EB2F165667C5)
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise (a bijection on uint64 with good avalanche)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _powers(n: int, base: int) -> np.ndarray:
    """``base**j mod 2**64`` for j in 0..n-1."""
    out = np.full(n, base, dtype=_U64)
    if n:
        out[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=_U64)


def _code_points(parts: list[str]) -> np.ndarray:
    return np.frombuffer("".join(parts).encode("utf-32-le"), dtype=np.uint32).astype(_U64)


class _Spans:
    """Polynomial hashes of arbitrary spans of one code-point array."""

    def __init__(self, cp: np.ndarray) -> None:
        n = len(cp)
        with np.errstate(over="ignore"):
            self.prefix = np.zeros(n + 1, dtype=_U64)
            np.cumsum(cp * _powers(n, _P), dtype=_U64, out=self.prefix[1:])
        self.inv = _powers(n + 1, _P_INV)

    def hash(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (self.prefix[end] - self.prefix[start]) * self.inv[start]


def _ngram_starts(lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For items laid out back to back with these per-text ``lengths``: the start index of every n-gram that
    stays inside its text, the text it belongs to, and the texts with 0 < length < n (one whole shingle)."""
    ends = np.cumsum(lengths)
    starts_of_text = ends - lengths
    counts = np.maximum(lengths - n + 1, 0)
    text_of = np.repeat(np.arange(len(lengths)), counts)
    first = np.repeat(starts_of_text, counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    short = np.flatnonzero((lengths > 0) & (lengths < n))
    return first + within, text_of, short


@dataclass
class Shingles:
    """Shingle hashes of a batch: ``hashes[offsets[i]:offsets[i + 1]]`` are text i's (with repeats)."""

    hashes: np.ndarray
    offsets: np.ndarray

    def of(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]


def shingle(texts: list[str | None], cjk_ngram: int, word_ngram: int) -> Shingles:
    """Shingle hashes of every text (None counts as empty)."""
    low = [(t or "").lower() for t in texts]
    n_texts = len(low)
    pieces_hash: list[np.ndarray] = []
    pieces_text: list[np.ndarray] = []

    # CJK character n-grams
    cjk_parts = [NON_CJK.sub("", t) for t in low]
    cjk_len = np.fromiter((len(s) for s in cjk_parts), dtype=np.int64, count=n_texts)
    if cjk_len.any():
        spans = _Spans(_code_points(cjk_parts))
        starts, text_of, short = _ngram_starts(cjk_len, cjk_ngram)
        ends_of_text = np.cumsum(cjk_len)
        h = spans.hash(starts, starts + cjk_ngram)
        hs = spans.hash(ends_of_text[short] - cjk_len[short], ends_of_text[short])
        pieces_hash += [splitmix64(h ^ TAG_CJK), splitmix64(hs ^ TAG_CJK)]
        pieces_text += [text_of, short]

    # word n-grams over the rest
    words = [WORD.findall(CJK.sub(" ", t)) for t in low]
    word_len = np.fromiter((len(w) for w in words), dtype=np.int64, count=n_texts)
    if word_len.any():
        flat = [w for ws in words for w in ws]
        chars = np.fromiter((len(w) for w in flat), dtype=np.int64, count=len(flat))
        w_end = np.cumsum(chars)
        spans = _Spans(_code_points(flat))
        wh = splitmix64(spans.hash(w_end - chars, w_end))
        starts, text_of, short = _ngram_starts(word_len, word_ngram)
        g = wh[starts]
        with np.errstate(over="ignore"):
            for k in range(1, word_ngram):
                g = splitmix64(g) + wh[starts + k]
        # texts with fewer words than n: all their words as one shingle
        w_ends = np.cumsum(word_len)
        gs = np.empty(len(short), dtype=_U64)
        for j, t in enumerate(short):
            acc = wh[w_ends[t] - word_len[t]]
            with np.errstate(over="ignore"):
                for x in wh[w_ends[t] - word_len[t] + 1 : w_ends[t]]:
                    acc = splitmix64(np.asarray(acc, dtype=_U64)) + x
            gs[j] = acc
        pieces_hash += [splitmix64(g ^ TAG_WORD), splitmix64(gs ^ TAG_WORD)]
        pieces_text += [text_of, short]

    if not pieces_hash:
        return Shingles(np.empty(0, dtype=_U64), np.zeros(n_texts + 1, dtype=np.int64))
    hashes = np.concatenate(pieces_hash)
    owner = np.concatenate(pieces_text)
    order = np.argsort(owner, kind="stable")
    offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n_texts), out=offsets[1:])
    return Shingles(hashes[order], offsets)


class MinHasher:
    """MinHash band keys: ``bands`` x ``rows`` permutations, deterministic for a seed."""

    def __init__(self, bands: int, rows: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        perms = bands * rows
        self.bands, self.rows = bands, rows
        self.a = rng.integers(1, 2**63, size=perms, dtype=_U64) * _U64(2) + _U64(1)
        self.b = rng.integers(0, 2**63, size=perms, dtype=_U64)
        self.band_salt = splitmix64(np.arange(bands, dtype=_U64) + _U64(seed))

    def signatures(self, sh: Shingles) -> tuple[np.ndarray, np.ndarray]:
        """(texts with shingles, their signatures [n, bands * rows]); texts without shingles are left out."""
        sizes = np.diff(sh.offsets)
        present = np.flatnonzero(sizes > 0)
        starts = sh.offsets[:-1][present]
        sig = np.empty((len(present), len(self.a)), dtype=_U64)
        if len(present):
            shift = _U64(32)
            with np.errstate(over="ignore"):
                for k in range(len(self.a)):
                    sig[:, k] = np.minimum.reduceat((sh.hashes * self.a[k] + self.b[k]) >> shift, starts)
        return present, sig

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """[n, bands] int64 keys; equal keys mean equal minima in that band (up to 64-bit collisions)."""
        n = sig.shape[0]
        s = sig.reshape(n, self.bands, self.rows)
        keys = np.broadcast_to(self.band_salt, (n, self.bands)).copy()
        with np.errstate(over="ignore"):
            for r in range(self.rows):
                keys = splitmix64(keys + s[:, :, r])
        return keys.view(np.int64)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle multisets taken as sets (0 for two empty sets)."""
    ua, ub = np.unique(a), np.unique(b)
    if not len(ua) and not len(ub):
        return 0.0
    inter = len(np.intersect1d(ua, ub, assume_unique=True))
    return inter / (len(ua) + len(ub) - inter)
