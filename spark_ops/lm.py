r"""A character n-gram language model (interpolated Kneser-Ney) that the platform trains itself, for
``perplexity_filter``: fluent text scores low, garbled, machine-spun or shuffled text scores high.

The same idea as CCNet's KenLM filter (Wenzek et al. 2020), without a native dependency and without a
tokenizer: characters are the units, so Chinese (no spaces) and English need no segmenter, and one model
trained on a mixed corpus serves both (their contexts hardly share characters). Perplexities of different
languages are not comparable (a Chinese character carries far more information than a Latin letter), so
the model keeps, per language, the perplexity quantiles of held-out reference documents, and the filter's
limits are relative to those by default.

Text is normalised first: lower case, every decimal digit becomes ``0``, runs of whitespace and control
characters become one space, leading and trailing spaces go. Each document is preceded by ``order - 1``
start symbols (U+0002, which normalisation can never produce).

Probabilities (Chen & Goodman 1999, interpolated Kneser-Ney with one discount per order)::

    P_k(w | h) = max(a_k(hw) - D_k, 0) / s_k(h) + D_k * t_k(h) / s_k(h) * P_{k-1}(w | h')    (s_k(h) > 0)
    P_k(w | h) = P_{k-1}(w | h')                                                              (s_k(h) = 0)
    P_0(w)     = 1 / V

``a_k`` is the raw count for the highest order and the continuation count (distinct left neighbours) below
it; ``s_k(h)`` sums ``a_k(hv)`` over ``v``, ``t_k(h)`` counts the ``v`` with ``a_k(hv) > 0``, ``h'`` is ``h``
without its first character, ``V`` the number of characters seen plus one for unseen ones, and
``D_k = n1 / (n1 + 2 n2)`` from the numbers of k-grams with ``a_k`` 1 and 2. Every ``P_k(. | h)`` sums to 1.

How it stays vectorised. A batch's normalised code points form one array; the polynomial hash of any span
comes from prefix sums (as in ``operators/minhash.py``), so the k-grams at every position are hashed in one
numpy expression. Training counts with ``np.unique``. Scoring looks hashes up in an open-addressing table
(double hashing, load <= 1/2), probed for the whole batch at once: one probe round per collision depth, not
per character. A k-gram and the context of a (k+1)-gram are the same string, so each order has a single
table holding both roles, and one lookup per order and character gives both. 64-bit hashes stand for the
strings: a collision (odd for the corpora involved) would only borrow another n-gram's count.

The model file is an ``.npz`` (numpy arrays plus a JSON header); :func:`load` caches it per process.
``forgeflow lm train`` builds one (``tasks/cli_lm.py``).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spark_ops.charclass import class_table

FORMAT = "forgeflow-char-kn/1"
BOS = 2  # U+0002: normalisation turns every control character into a space, so it never occurs in text
LANGUAGES = ("zh", "en", "other")
QUANTILES = (0.5, 0.9, 0.95, 0.99)
CHUNK_CHARS = 1 << 19  # characters scored at once (see CharNGramModel.score)
_U64 = np.uint64
_P = 0x100000001B3  # odd, hence invertible mod 2**64
_P_INV = pow(_P, -1, 2**64)

# Character classes (bits), from RE2's Unicode tables via pyarrow: built once per process.
_SPACE, _DIGIT, _HAN, _KANA, _LATIN, _LETTER = 1, 2, 4, 8, 16, 32
_CLASS_PATTERNS = {
    _SPACE: r"[\s\p{Z}\p{Cc}]",
    _DIGIT: r"\p{Nd}",
    _HAN: r"\p{Han}",
    _KANA: r"[\p{Hiragana}\p{Katakana}]",
    _LATIN: r"\p{Latin}",
    _LETTER: r"\p{L}",
}
_TABLES: list[np.ndarray] = []


def char_classes() -> np.ndarray:
    """uint8 bit set of classes per code point (once per process)."""
    if not _TABLES:
        _TABLES.append(class_table(_CLASS_PATTERNS))
    return _TABLES[0]


# ---------------------------------------------------------------- text -> code points


@dataclass
class Batch:
    """Normalised texts back to back: ``cp`` (uint64 code points), per-text ``lengths`` and ``language``."""

    cp: np.ndarray
    lengths: np.ndarray
    language: np.ndarray  # object array of "zh" / "en" / "other"


def _languages(raw: np.ndarray, lengths: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """tag_language's rule with its default thresholds: zh when Han >= 0.3 of the letters and kana <= 0.05,
    en when Latin >= 0.8 of the letters, else other (also for texts without letters)."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    kind = classes[raw]

    def count(bit: int) -> np.ndarray:
        return np.bincount(owner, weights=(kind & bit) > 0, minlength=len(lengths))

    letters = count(_LETTER)
    with np.errstate(invalid="ignore", divide="ignore"):
        han, kana, latin = (np.nan_to_num(count(b) / letters) for b in (_HAN, _KANA, _LATIN))
    out = np.full(len(lengths), "other", dtype=object)
    out[(latin >= 0.8) & (letters > 0)] = "en"
    out[(han >= 0.3) & (kana <= 0.05) & (letters > 0)] = "zh"
    return out


def normalise(texts: Sequence[str | None]) -> Batch:
    """Lower case, digits to ``0``, whitespace/control runs to one space, trimmed; None counts as empty."""
    low = [(t or "").lower() for t in texts]
    raw = np.frombuffer("".join(low).encode("utf-32-le"), dtype=np.uint32)
    lengths = np.fromiter(map(len, low), dtype=np.int64, count=len(low))
    classes = char_classes()
    language = _languages(raw, lengths, classes)
    kind = classes[raw]
    cp = raw.astype(_U64)
    cp[(kind & _DIGIT) > 0] = ord("0")
    space = (kind & _SPACE) > 0
    cp[space] = ord(" ")
    first = np.zeros(len(cp), dtype=bool)
    starts = np.cumsum(lengths) - lengths
    first[starts[lengths > 0]] = True
    prev_space = np.concatenate([[True], space[:-1]]) | first  # a text starting with spaces drops them
    keep = ~space | ~prev_space
    owner = np.repeat(np.arange(len(lengths)), lengths)
    cp, owner, space = cp[keep], owner[keep], space[keep]
    # at most one trailing space per text is left: drop it
    last = np.ones(len(cp), dtype=bool)
    last[:-1] = owner[1:] != owner[:-1]
    keep = ~(space & last)
    cp, owner = cp[keep], owner[keep]
    return Batch(cp, np.bincount(owner, minlength=len(lengths)).astype(np.int64), language)


@dataclass
class Layout:
    """Texts with ``order - 1`` start symbols before each: ``stream`` and the positions of real characters."""

    stream: np.ndarray
    real: np.ndarray  # positions in ``stream`` of the texts' characters
    owner: np.ndarray  # text of each real position
    prefix: np.ndarray = field(repr=False)
    inv: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, batch: Batch, order: int) -> Layout:
        pad = order - 1
        n_texts = len(batch.lengths)
        total = len(batch.cp) + pad * n_texts
        padded_start = np.cumsum(batch.lengths + pad) - (batch.lengths + pad)
        owner = np.repeat(np.arange(n_texts), batch.lengths)
        within = np.arange(len(batch.cp)) - np.repeat(np.cumsum(batch.lengths) - batch.lengths, batch.lengths)
        real = np.repeat(padded_start + pad, batch.lengths) + within
        stream = np.full(total, BOS, dtype=_U64)
        stream[real] = batch.cp
        with np.errstate(over="ignore"):
            one = np.ones(1, dtype=_U64)
            powers = np.cumprod(np.concatenate([one, np.full(total, _P, dtype=_U64)[:-1]]), dtype=_U64)
            prefix = np.zeros(total + 1, dtype=_U64)
            np.cumsum(stream * powers[:total], dtype=_U64, out=prefix[1:])
            inv = np.cumprod(np.concatenate([one, np.full(total, _P_INV, dtype=_U64)]), dtype=_U64)
        return cls(stream, real, owner, prefix, inv)

    def grams(self, k: int, end: np.ndarray) -> np.ndarray:
        """Hash of the k characters ending at (and including) each position in ``end``."""
        start = end - k + 1
        with np.errstate(over="ignore"):
            return (self.prefix[end + 1] - self.prefix[start]) * self.inv[start]


# ---------------------------------------------------------------- lookup table


class HashTable:
    """uint64 key -> row index, open addressing with double hashing; batch-vectorised insert and lookup."""

    def __init__(self, keys: np.ndarray) -> None:
        bits = max(4, int(math.ceil(math.log2(max(len(keys), 1)))) + 1)  # load factor in (1/4, 1/2]
        self.mask = (1 << bits) - 1
        self.shift = _U64(64 - bits)
        self.keys = np.zeros(1 << bits, dtype=_U64)
        self.rows = np.full(1 << bits, -1, dtype=np.int32)
        slot, step = self._probe(keys)
        pending = np.arange(len(keys))
        while pending.size:
            s = slot[pending]
            free = np.flatnonzero(self.rows[s] < 0)
            taken, first = np.unique(s[free], return_index=True)
            winners = pending[free[first]]
            self.keys[taken] = keys[winners]
            self.rows[taken] = winners
            lost = np.ones(pending.size, dtype=bool)
            lost[free[first]] = False
            pending = pending[lost]
            slot[pending] = (slot[pending] + step[pending]) & self.mask

    def _probe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mixed = _mix(keys)
        slot = (mixed >> self.shift).astype(np.int64)
        step = ((mixed & _U64(self.mask)) | _U64(1)).astype(np.int64)  # odd: visits every slot
        return slot, step

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent."""
        out = np.full(len(keys), -1, dtype=np.int64)
        slot, step = self._probe(keys)
        active = np.arange(len(keys))
        while active.size:
            s = slot[active]
            rows = self.rows[s]
            occupied = rows >= 0
            hit = occupied & (self.keys[s] == keys[active])
            out[active[hit]] = rows[hit]
            active = active[occupied & ~hit]
            slot[active] = (slot[active] + step[active]) & self.mask
        return out


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: polynomial hashes of similar strings share low bits; the table needs uniform
    ones."""
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


# ---------------------------------------------------------------- the model


@dataclass
class OrderTable:
    """One order k: every k-gram seen (as a gram, or as the context of a (k+1)-gram) with ``a`` = its count
    a_k (0 when it only occurs as a context), ``s`` and ``t`` = s_{k+1}, t_{k+1} as a context (0 if never)."""

    keys: np.ndarray
    a: np.ndarray
    s: np.ndarray
    t: np.ndarray
    _table: HashTable | None = field(default=None, repr=False)

    @property
    def table(self) -> HashTable:
        if self._table is None:
            self._table = HashTable(self.keys)
        return self._table


@dataclass
class CharNGramModel:
    order: int
    discounts: list[float]  # D_1 .. D_n
    vocab: int  # V: characters seen, plus one for unseen ones
    unigram_s: float  # s_1 and t_1 of the empty context
    unigram_t: float
    tables: list[OrderTable]  # orders 1 .. n
    reference: dict[str, dict[str, float]] = field(default_factory=dict)  # language -> quantiles, docs
    info: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------ scoring

    def log_probs(self, layout: Layout) -> np.ndarray:
        """Natural-log probability of every real character of ``layout`` given its ``order - 1`` predecessors."""
        pos = layout.real
        p = np.full(len(pos), 1.0 / self.vocab)
        # context of order k+1 at a position = the k-gram ending one position earlier: one lookup per order
        # over the real positions and the position before each text's first character gives both.
        mask = np.zeros(len(layout.stream), dtype=bool)
        mask[pos] = True
        mask[pos - 1] = True
        query = np.flatnonzero(mask)
        at = np.cumsum(mask)[pos] - 1
        ctx_s, ctx_t = np.full(len(pos), self.unigram_s), np.full(len(pos), self.unigram_t)
        for k in range(1, self.order + 1):
            tab = self.tables[k - 1]
            rows = tab.table.find(layout.grams(k, query))
            found = rows >= 0
            a = np.where(found, tab.a[rows], 0.0)[at]
            d = self.discounts[k - 1]
            seen = ctx_s > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                mixed = (np.maximum(a - d, 0.0) + d * ctx_t * p) / ctx_s
            p = np.where(seen, mixed, p)
            if k < self.order:  # this k-gram, ending before each position, is the next order's context
                ctx_s = np.where(found, tab.s[rows], 0.0)[at - 1]
                ctx_t = np.where(found, tab.t[rows], 0.0)[at - 1]
        return np.log(p)

    def score(self, texts: Sequence[str | None], min_chars: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(perplexity per text, NaN where it has fewer than ``min_chars`` normalised characters; language).

        Texts are scored in slices of about ``CHUNK_CHARS`` characters: the working arrays take some 150
        bytes per character, so a whole Arrow batch at once would cost gigabytes."""
        ppl = np.empty(len(texts))
        language = np.empty(len(texts), dtype=object)
        sizes = np.fromiter((len(t) if t else 0 for t in texts), dtype=np.int64, count=len(texts))
        bounds = np.searchsorted(
            np.cumsum(sizes), np.arange(CHUNK_CHARS, sizes.sum() + CHUNK_CHARS, CHUNK_CHARS)
        )
        start = 0
        for end in [*np.unique(np.minimum(bounds + 1, len(texts))).tolist(), len(texts)]:
            if end <= start:
                continue
            ppl[start:end], language[start:end] = self._score(texts[start:end], min_chars)
            start = end
        return ppl, language

    def _score(self, texts: Sequence[str | None], min_chars: int) -> tuple[np.ndarray, np.ndarray]:
        batch = normalise(texts)
        layout = Layout.of(batch, self.order)
        lp = self.log_probs(layout)
        total = np.bincount(layout.owner, weights=lp, minlength=len(batch.lengths))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            ppl = np.exp(-total / batch.lengths)
        ppl[batch.lengths < max(min_chars, 1)] = np.nan
        return ppl, batch.language

    # ------------------------------------------------------------ files

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "order": self.order,
            "discounts": self.discounts,
            "vocab": self.vocab,
            "unigram_s": self.unigram_s,
            "unigram_t": self.unigram_t,
            "reference": self.reference,
            "info": self.info,
        }

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "header": np.frombuffer(json.dumps(self.header()).encode(), np.uint8)
        }
        for k, tab in enumerate(self.tables, start=1):
            arrays.update({f"keys{k}": tab.keys, f"a{k}": tab.a, f"s{k}": tab.s, f"t{k}": tab.t})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "model") -> CharNGramModel:
        z, header = _open(io.BytesIO(data), where)
        tables = [
            OrderTable(z[f"keys{k}"], z[f"a{k}"], z[f"s{k}"], z[f"t{k}"])
            for k in range(1, header["order"] + 1)
        ]
        return cls(
            order=header["order"],
            discounts=header["discounts"],
            vocab=header["vocab"],
            unigram_s=header["unigram_s"],
            unigram_t=header["unigram_t"],
            tables=tables,
            reference=header["reference"],
            info=header["info"],
        )


# ---------------------------------------------------------------- training


def _discount(counts: np.ndarray) -> float:
    n1 = int((counts == 1).sum())
    n2 = int((counts == 2).sum())
    if n1 == 0 or n2 == 0:
        return 0.5
    return float(min(max(n1 / (n1 + 2 * n2), 0.05), 0.95))


def _order_table(
    keys: np.ndarray, a: np.ndarray, ctx_keys: np.ndarray, ctx_s: np.ndarray, ctx_t: np.ndarray
) -> OrderTable:
    """Merge the k-grams (with a_k) and the contexts of order k+1 (with s, t) into one sorted table."""
    union = np.union1d(keys, ctx_keys)
    out_a = np.zeros(len(union), dtype=np.float32)
    out_s = np.zeros(len(union), dtype=np.float32)
    out_t = np.zeros(len(union), dtype=np.float32)
    out_a[np.searchsorted(union, keys)] = a
    where = np.searchsorted(union, ctx_keys)
    out_s[where] = ctx_s
    out_t[where] = ctx_t
    return OrderTable(union, out_a, out_s, out_t)


def train(
    texts: Iterable[str],
    order: int = 5,
    max_chars: int = 20_000_000,
    holdout_every: int = 10,
    min_chars: int = 50,
) -> CharNGramModel:
    """Count a model on ``texts`` (up to ``max_chars`` characters); every ``holdout_every``-th text
    with at least ``min_chars`` characters is held out and scored afterwards for the per-language reference
    perplexities (0: none held out)."""
    if not 1 <= order <= 10:
        raise ValueError(f"order {order}: must be 1-10")
    started = time.monotonic()
    train_texts: list[str] = []
    held: list[str] = []
    chars = 0
    eligible = 0
    for t in texts:
        if not t or not t.strip():
            continue
        if len(t) >= min_chars:
            eligible += 1
            if holdout_every and eligible % holdout_every == 0:
                held.append(t)
                continue
        if chars + len(t) > max_chars:
            t = t[: max_chars - chars]
        train_texts.append(t)
        chars += len(t)
        if chars >= max_chars:
            break
    if not train_texts:
        raise ValueError("no text to train on (every input text was empty)")

    batch = normalise(train_texts)
    layout = Layout.of(batch, order)
    pos = layout.real
    counts: list[np.ndarray] = []
    grams: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (keys, a, position of one occurrence)
    for k in range(1, order + 1):
        g = layout.grams(k, pos)
        if k == order:
            keys, first, a = np.unique(g, return_index=True, return_counts=True)
        else:
            # continuation count: distinct (k+1)-grams ending here, grouped by their last k characters
            _, rep = np.unique(layout.grams(k + 1, pos), return_index=True)
            keys, first, a = np.unique(g[rep], return_index=True, return_counts=True)
            first = rep[first]
        grams.append((keys, a.astype(np.float32), pos[first]))
        counts.append(a)
    tables: list[OrderTable] = []
    unigram_s, unigram_t = float(grams[0][1].sum()), float(len(grams[0][0]))
    for k in range(1, order + 1):
        keys, a, where = grams[k - 1]
        if k < order:
            nk, na, nwhere = grams[k]  # the (k+1)-grams: their first k characters are contexts of order k+1
            ctx = layout.grams(k, nwhere - 1)
            ctx_keys, inverse = np.unique(ctx, return_inverse=True)
            s = np.bincount(inverse, weights=na, minlength=len(ctx_keys))
            t = np.bincount(inverse, minlength=len(ctx_keys)).astype(np.float64)
        else:
            ctx_keys, s, t = np.empty(0, dtype=_U64), np.empty(0), np.empty(0)
        tables.append(_order_table(keys, a, ctx_keys, s, t))
    model = CharNGramModel(
        order=order,
        discounts=[_discount(c) for c in counts],
        vocab=int(len(grams[0][0])) + 1,
        unigram_s=unigram_s,
        unigram_t=unigram_t,
        tables=tables,
        info={
            "train_texts": len(train_texts),
            "train_chars": int(len(batch.cp)),
            "held_out_texts": len(held),
            "ngrams": [int(len(t.keys)) for t in tables],
            "max_chars": max_chars,
            "min_chars": min_chars,
        },
    )
    model.reference = reference_perplexities(model, held, min_chars)
    model.info["train_seconds"] = round(time.monotonic() - started, 2)
    return model


def reference_perplexities(
    model: CharNGramModel, texts: list[str], min_chars: int
) -> dict[str, dict[str, float]]:
    """Per language with at least 5 scored texts: their perplexity quantiles and count."""
    if not texts:
        return {}
    ppl, lang = model.score(texts, min_chars)
    out: dict[str, dict[str, float]] = {}
    for language in LANGUAGES:
        values = ppl[(lang == language) & np.isfinite(ppl)]
        if len(values) >= 5:
            out[language] = {**quantiles(values), "docs": int(len(values))}
    return out


def quantiles(values: np.ndarray) -> dict[str, float]:
    """``p50`` ... ``p99`` (QUANTILES) of some perplexities, rounded."""
    q = np.quantile(values, QUANTILES)
    return {f"p{round(x * 100)}": round(float(v), 3) for x, v in zip(QUANTILES, q, strict=True)}


def _open(source: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """(the npz archive, its checked JSON header); the tables are read lazily from the archive."""
    try:
        z = np.load(source, allow_pickle=False)
        header = json.loads(bytes(z["header"]).decode())
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{where}: not a Forgeflow n-gram model file ({e})") from e
    if header.get("format") != FORMAT:
        raise ValueError(f"{where}: format {header.get('format')!r}, expected {FORMAT!r}")
    return z, header


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a model file, without reading its tables."""
    z, header = _open(path, str(path))
    z.close()
    return header


# ---------------------------------------------------------------- per-process cache

_CACHE: dict[str, CharNGramModel] = {}


def load(path: str) -> CharNGramModel:
    """The model in the local file ``path``, read once per process (Spark reuses its Python workers)."""
    model = _CACHE.get(path)
    if model is None:
        with open(path, "rb") as f:
            model = CharNGramModel.from_bytes(f.read(), where=path)
        _CACHE.clear()  # one model at a time: they can take hundreds of MB
        _CACHE[path] = model
    return model
