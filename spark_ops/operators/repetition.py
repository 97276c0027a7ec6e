r"""Gopher's repetition measures (Rae et al. 2021) for a whole Arrow batch at once, with numpy.

``repetition_measures`` takes a batch of texts and returns, per text, every fraction that
``repetition_filter`` bounds. ``repetition_udf`` wraps it in an Arrow UDF: one call per Arrow batch and no
Python object per token or line (strings are only built for ties in the top-n-gram rule).

How it stays linear without building n-gram strings:

* Lines and paragraphs are split by Arrow compute functions (C++) and get batch-wide integer ids from
  Arrow's hash ``dictionary_encode``. Tokens come from the batch's code points (one UTF-32 copy of the
  batch) and a per-code-point class table: CJK characters' ids are their code points, words' ids come from
  one ``dictionary_encode`` of binary views of the UTF-32 text.
* A document's n-grams get ids by induction: the (n-1)-gram id at a position and the next token id form an
  int64 key that ``pandas.factorize`` (a hash table) turns into the n-gram id; the first key includes the
  document, so equal ids mean equal token sequences in the same document. No hashing collisions: ids are
  exact.
* Only windows whose (n-1)-gram occurs at least twice in its document can repeat, so only those are carried
  to n; in natural text almost nothing is left after n = 4, which is what makes the 5-10-gram rules cheap.

The definitions are exactly those of the earlier Spark-SQL implementation (they are pinned by a pure-Python
reference in tests/unit/spark_ops/test_repetition.py):

* tokens: each Han, Hiragana, Katakana or Hangul character, and each run of other characters between
  whitespace (ASCII ``\s`` and Unicode separators ``\p{Z}``): ``filters.TOKEN``, which
  ``token_length_filter`` evaluates in the JVM. The class table comes from RE2's Unicode tables (pyarrow),
  which are newer than Java 17's (Unicode 13): characters assigned to those scripts since (e.g. CJK
  extension H) are single tokens here and part of a word there. Invalid UTF-8 (possible after a cast from
  binary) counts as U+FFFD.
* lines: the text split on ``\n``; paragraphs: split on ``\n\s*\n`` (``\s`` = ASCII whitespace, as in
  Java). Both keep only items with a character other than an ASCII space. An item is a duplicate when it
  equals an earlier one exactly; the fractions are duplicates / items and their characters / all items'
  characters.
* top n-gram: the most frequent n-gram (ties: the smallest when its tokens are joined with spaces, in code
  point order, as a Spark ``array_sort`` would give), times its count, in characters of its tokens, over
  the characters of all tokens; 0 unless it occurs more than once.
* repeated n-grams: n-gram occurrences that repeat an earlier one / all n-gram occurrences.
* Both n-gram rules give 0 for texts with fewer than ``min_tokens`` tokens; every fraction is 0 for an
  empty text.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import types as T
from pyspark.sql.functions import arrow_udf

from spark_ops.charclass import class_table

# filters.TOKEN in RE2 syntax: CJK characters, and the separators between other tokens (Java's [\s\p{Z}]).
CJK = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]"
SEPARATOR = r"[\t\n\x0b\f\r\p{Z}]"
# Text measured at once (see repetition_measures).
CHUNK_BYTES = 1 << 20
LINE_FIELDS = ("dup_line", "dup_para", "dup_line_char", "dup_para_char")
# Java's ``\n\s*\n`` in RE2 syntax (pyarrow): Java's \s is [ \t\n\x0B\f\r] unless UNICODE_CHARACTER_CLASS.
PARAGRAPH_BREAK = r"\n[ \t\n\x0b\f\r]*\n"


def _valid_utf8(texts: pa.Array) -> pa.Array:
    """``texts``, with invalid UTF-8 sequences (which Spark strings may hold) replaced by U+FFFD."""
    try:
        texts.validate(full=True)
        return texts
    except pa.ArrowInvalid:
        raw = texts.view(pa.large_binary() if pa.types.is_large_string(texts.type) else pa.binary())
        return pa.array(
            [None if b is None else b.decode("utf-8", "replace") for b in raw.to_pylist()], pa.string()
        )


def measure_fields(top_ns: Iterable[int], dup_ns: Iterable[int]) -> list[str]:
    """Names of the fractions ``repetition_measures`` returns, in order."""
    return [*LINE_FIELDS, *(f"top_{n}" for n in sorted(top_ns)), *(f"dup_{n}" for n in sorted(dup_ns))]


def _ratio(count: np.ndarray, total: np.ndarray) -> np.ndarray:
    """count / total as float64, 0 where total is 0."""
    out = np.zeros(len(total), dtype=np.float64)
    np.divide(count, total, out=out, where=total > 0)
    return out


def _factorize(keys: np.ndarray) -> np.ndarray:
    """Dense ids 0..k-1 for int64 keys, in order of first appearance (a hash table, no sort)."""
    codes, _ = pd.factorize(keys, sort=False)
    return codes.astype(np.int64, copy=False)


def _flatten(lists: Any) -> tuple[Any, np.ndarray]:
    """The values of a list array (nulls count as empty lists) and the row each value belongs to."""
    values = pc.list_flatten(lists)
    rows = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    return values, rows


# Character classes by code point (0 other, 1 separator, 2 CJK), built once per Python worker from RE2.
_OTHER, _SEPARATOR, _CJK = 0, 1, 2
_CLASSES: list[np.ndarray] = []


def _classes() -> np.ndarray:
    """uint8 class of every code point (separator and CJK never overlap), once per process."""
    if not _CLASSES:
        _CLASSES.append(class_table({_SEPARATOR: SEPARATOR, _CJK: CJK}))
    return _CLASSES[0]


class Tokens:
    """The tokens of a batch of texts, flat and in order: compact integer ids 0..vocab-1 (equal ids, equal
    strings), the row each belongs to, start / end offsets in ``text`` and lengths in characters."""

    def __init__(self, texts: pa.Array) -> None:
        rows = pc.fill_null(texts, "").to_pylist()
        self.text = "".join(rows)  # one string per batch (not per token); slices give tokens back
        utf32 = self.text.encode("utf-32-le")
        cp = np.frombuffer(utf32, dtype=np.uint32)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        row_start = np.concatenate([[0], np.cumsum(lengths)])
        kind = _classes()[cp]
        other = kind == _OTHER
        first = np.zeros(len(cp), dtype=bool)  # first / last character of its row
        last = np.zeros(len(cp), dtype=bool)
        nonempty = lengths > 0
        first[row_start[:-1][nonempty]] = True
        last[row_start[1:][nonempty] - 1] = True
        prev_other = np.concatenate([[False], other[:-1]]) & ~first
        next_other = np.concatenate([other[1:], [False]]) & ~last
        word_start = np.flatnonzero(other & ~prev_other)
        word_end = np.flatnonzero(other & ~next_other) + 1
        self.start = np.flatnonzero((kind == _CJK) | (other & ~prev_other))
        is_word = other[self.start]
        self.end = self.start + 1
        self.end[is_word] = word_end
        self.row = np.searchsorted(row_start[1:], self.start, side="right").astype(np.int64)
        self.length = self.end - self.start
        ids = cp[self.start].astype(np.int64)
        if len(word_start):
            # Words as binary views of the UTF-32 text, alternating with the gaps between them; one hash pass.
            bounds = np.empty(2 * len(word_start), dtype=np.int64)
            bounds[0::2], bounds[1::2] = word_start * 4, word_end * 4
            pieces = pa.LargeBinaryArray.from_buffers(
                pa.large_binary(), len(bounds) - 1, [None, pa.py_buffer(bounds), pa.py_buffer(utf32)]
            )
            ids[is_word] = 0x110000 + np.asarray(pc.dictionary_encode(pieces).indices, dtype=np.int64)[0::2]
        # Compact ids 0..vocab-1 keep the n-gram keys small
        present = np.bincount(ids) > 0
        self.ids = (np.cumsum(present) - 1)[ids]
        self.vocab = max(int(present.sum()), 1)

    def strings(self, positions: np.ndarray) -> list[str]:
        """The tokens at these flat positions, as strings."""
        return [self.text[s:e] for s, e in zip(self.start[positions], self.end[positions], strict=True)]


def _duplicates(texts: Any, pattern: str, regex: bool, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate items / items, their characters / all characters) per row, items = ``texts`` split on
    ``pattern`` without those that are empty or ASCII spaces only."""
    split = pc.split_pattern_regex if regex else pc.split_pattern
    values, rows = _flatten(split(texts, pattern=pattern))
    kept = np.asarray(pc.not_equal(pc.utf8_trim(values, characters=" "), ""), dtype=bool)
    encoded = pc.dictionary_encode(values)
    ids = np.asarray(encoded.indices, dtype=np.int64)[kept]
    lengths = np.asarray(pc.utf8_length(values), dtype=np.int64)[kept]
    rows = rows[kept]
    codes = _factorize(rows * max(len(encoded.dictionary), 1) + ids)
    n_codes = int(codes.max()) + 1 if len(codes) else 0
    code_row = np.zeros(n_codes, dtype=np.int64)
    code_row[codes] = rows
    code_len = np.zeros(n_codes, dtype=np.int64)
    code_len[codes] = lengths  # every occurrence of an item has the same length
    items = np.bincount(rows, minlength=n_rows)
    distinct = np.bincount(code_row, minlength=n_rows)
    chars = np.bincount(rows, weights=lengths, minlength=n_rows)
    distinct_chars = np.bincount(code_row, weights=code_len, minlength=n_rows)
    return _ratio(items - distinct, items), _ratio(chars - distinct_chars, chars)


def repetition_measures(
    texts: pa.Array, top_ns: Iterable[int], dup_ns: Iterable[int], min_tokens: int
) -> dict[str, np.ndarray]:
    """Every repetition fraction of every text of a batch -> {field name: float64 array}, fields as
    ``measure_fields``; see the module docstring for the definitions.

    The batch is measured in slices of about ``CHUNK_BYTES`` of text: the hash tables and the random
    accesses of a whole 10,000-row Arrow batch fall out of the CPU caches (half the speed)."""
    texts = _valid_utf8(texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts)
    top, dup = sorted(set(top_ns)), sorted(set(dup_ns))
    sizes = np.cumsum(np.asarray(pc.fill_null(pc.binary_length(texts), 0), dtype=np.int64))
    total = int(sizes[-1]) if len(sizes) else 0
    # a slice ends with the row that crosses the next multiple of CHUNK_BYTES
    ends = np.searchsorted(sizes, np.arange(CHUNK_BYTES, total, CHUNK_BYTES)) + 1
    bounds = np.unique(np.clip(np.concatenate([[0], ends, [len(texts)]]), 0, len(texts))).tolist()
    parts = [_measure_slice(texts.slice(a, b - a), top, dup, min_tokens) for a, b in pairwise(bounds)]
    if not parts:
        return _measure_slice(texts, top, dup, min_tokens)
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _measure_slice(
    texts: pa.Array, top_ns: list[int], dup_ns: list[int], min_tokens: int
) -> dict[str, np.ndarray]:
    n_rows = len(texts)
    out: dict[str, np.ndarray] = {}
    out["dup_line"], out["dup_line_char"] = _duplicates(texts, "\n", False, n_rows)
    out["dup_para"], out["dup_para_char"] = _duplicates(texts, PARAGRAPH_BREAK, True, n_rows)
    if not top_ns and not dup_ns:
        return out

    toks = Tokens(texts)
    row, tok, tok_len, vocab = toks.row, toks.ids, toks.length, toks.vocab
    n_tok = np.bincount(row, minlength=n_rows)
    total_chars = np.bincount(row, weights=tok_len, minlength=n_rows).astype(np.int64)
    cum_chars = np.concatenate([[0], np.cumsum(tok_len)])
    row_end = np.cumsum(n_tok)[row]  # one past the row's last token, per token (rows are contiguous)
    enough = n_tok >= min_tokens

    # Active windows: start position and n-gram id; the first key includes the row.
    start = np.arange(len(tok), dtype=np.int64)
    first = 1
    if 1 not in top_ns and 1 not in dup_ns and n_rows * vocab * vocab < 2**62:
        first = 2  # no 1-gram rule: key the bigrams directly (one hash pass fewer)
        start = start[start + 2 <= row_end]
        gram = _factorize((row[start] * vocab + tok[start]) * vocab + tok[start + 1])
    else:
        gram = _factorize(row * vocab + tok)
    counts = np.zeros(0, dtype=np.int64)
    for n in range(first, max([*top_ns, *dup_ns]) + 1):
        if n > first:
            # An n-gram can only repeat if its (n-1)-gram prefix does; the others are unique in their row.
            carry = counts[gram] >= 2
            start, gram = start[carry], gram[carry]
            fits = start + n <= row_end[start]
            start, gram = start[fits], gram[fits]
            gram = _factorize(gram * vocab + tok[start + n - 1])
        n_grams = int(gram.max()) + 1 if len(gram) else 0
        counts = np.bincount(gram, minlength=n_grams)
        gram_row = np.zeros(n_grams, dtype=np.int64)
        gram_row[gram] = row[start]
        if n in dup_ns:
            windows = np.maximum(n_tok - n + 1, 0)
            repeated = np.bincount(row[start], minlength=n_rows) - np.bincount(gram_row, minlength=n_rows)
            out[f"dup_{n}"] = np.where(enough, _ratio(repeated, windows), 0.0)
        if n in top_ns:
            best, chars = _top_gram(toks, start, gram, counts, gram_row, cum_chars, n, n_rows)
            frac = _ratio(best * chars, total_chars)
            out[f"top_{n}"] = np.where(enough & (best > 1), frac, 0.0)
    return out


def _top_gram(
    toks: Tokens,
    start: np.ndarray,
    gram: np.ndarray,
    counts: np.ndarray,
    gram_row: np.ndarray,
    cum_chars: np.ndarray,
    n: int,
    n_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the count of its most frequent n-gram (when > 1, else <= 1) and that n-gram's characters."""
    best = np.zeros(n_rows, dtype=np.int64)
    chars = np.zeros(n_rows, dtype=np.int64)
    repeated = np.flatnonzero(counts >= 2)
    if not len(repeated):
        return best, chars
    np.maximum.at(best, gram_row[repeated], counts[repeated])
    gram_chars = np.zeros(len(counts), dtype=np.int64)
    gram_chars[gram] = cum_chars[start + n] - cum_chars[start]
    gram_start = np.zeros(len(counts), dtype=np.int64)
    gram_start[gram] = start  # any occurrence: they hold the same tokens
    top = repeated[counts[repeated] == best[gram_row[repeated]]]
    top_row = gram_row[top]
    low = np.full(n_rows, np.iinfo(np.int64).max)
    np.minimum.at(low, top_row, gram_chars[top])
    np.maximum.at(chars, top_row, gram_chars[top])
    # Ties of different lengths: Spark took the smallest joined string; so do we (rare, few strings).
    tied = np.flatnonzero((chars > 0) & (low < chars))
    if len(tied):
        pick = top[np.isin(top_row, tied)]
        taken = (gram_start[pick][:, None] + np.arange(n)).ravel()
        words = toks.strings(taken)
        smallest: dict[int, tuple[str, int]] = {}
        for k, g in enumerate(pick):
            joined = " ".join(words[k * n : (k + 1) * n])
            r = int(gram_row[g])
            if r not in smallest or joined < smallest[r][0]:
                smallest[r] = (joined, int(gram_chars[g]))
        for r, (_, c) in smallest.items():
            chars[r] = c
    return best, chars


def repetition_udf(top_ns: Iterable[int], dup_ns: Iterable[int], min_tokens: int) -> Any:
    """An Arrow UDF ``string -> struct<field: double, ...>`` of ``measure_fields(top_ns, dup_ns)``."""
    top_ns, dup_ns = tuple(sorted(set(top_ns))), tuple(sorted(set(dup_ns)))
    names = measure_fields(top_ns, dup_ns)
    out_type = T.StructType([T.StructField(name, T.DoubleType()) for name in names])

    def repetition(text: pa.Array) -> pa.Array:
        m = repetition_measures(text, top_ns, dup_ns, min_tokens)
        return pa.StructArray.from_arrays([pa.array(m[name], pa.float64()) for name in names], names=names)

    # Postponed annotations are strings; arrow_udf reads the hints to pick the UDF kind.
    repetition.__annotations__ = {"text": pa.Array, "return": pa.Array}
    return arrow_udf(out_type)(repetition)  # type: ignore[call-overload]
