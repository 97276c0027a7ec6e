"""Character classes by code point from RE2's Unicode tables (via pyarrow): one uint8 lookup table, so a
batch's classes are a numpy fancy-index of its code points instead of a regex per character."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def class_table(patterns: Mapping[int, str]) -> np.ndarray:
    """uint8 table over all code points: each ``value`` ORed in where its RE2 ``pattern`` matches the
    character (values are bits, or disjoint classes). About 60 ms per pattern; callers build it once."""
    cps = np.arange(0x110000, dtype=np.uint32)
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]  # surrogates never occur in decoded text
    utf8 = cps.tobytes().decode("utf-32-le").encode("utf-8")
    width = np.where(cps < 0x80, 1, np.where(cps < 0x800, 2, np.where(cps < 0x10000, 3, 4)))
    offsets = np.concatenate([[0], np.cumsum(width)]).astype(np.int32)
    chars = pa.StringArray.from_buffers(len(cps), pa.py_buffer(offsets), pa.py_buffer(utf8))
    table = np.zeros(0x110000, dtype=np.uint8)
    for value, pattern in patterns.items():
        table[cps[np.asarray(pc.match_substring_regex(chars, pattern), dtype=bool)]] |= value
    return table
