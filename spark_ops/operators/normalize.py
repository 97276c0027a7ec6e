"""Symbol normalisation: Unicode spaces, full-width ASCII, punctuation, enumerator symbols, repeated spaces,
optional Unicode normal forms (NFC / NFKC)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from functools import partial
from typing import Literal

from pydantic import Field, field_validator
from pyspark.sql import Column
from pyspark.sql import functions as F

from spark_ops.operators.base import Mapper, OperatorParams, holds_any, register

# Space separators other than ' ' itself (U+3000 is the full-width, ideographic space).
UNICODE_SPACE_CHARS = "\u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u202f\u205f\u3000"
UNICODE_SPACES = f"[{UNICODE_SPACE_CHARS}]"
FULLWIDTH = "".join(chr(c) for c in range(0xFF01, 0xFF5F))  # ！ .. ～, the full-width forms of ! .. ~
# Full-width punctuation that is the correct form in Chinese text (half-width would be an error there).
CJK_PUNCTUATION = "，！？：；（）～"


def _enumerator_table() -> dict[int, str]:
    """Number -> the enumerator symbols that mean it (circled, parenthesised, full stop, dingbats, ideographs)."""
    table: dict[int, list[int]] = {0: [0x24EA, 0x24FF]}
    for n in range(1, 21):
        table.setdefault(n, []).extend([0x2460 + n - 1, 0x2474 + n - 1, 0x2488 + n - 1])  # ① ⑴ ⒈
    for n in range(1, 11):
        # ❶ ➀ ➊ ⓵ ㊀ ㈠
        table[n].extend(
            [0x2776 + n - 1, 0x2780 + n - 1, 0x278A + n - 1, 0x24F5 + n - 1, 0x3280 + n - 1, 0x3220 + n - 1]
        )
    for n in range(11, 21):
        table[n].append(0x24EB + n - 11)  # ⓫
    for n in range(21, 36):
        table[n] = [0x3251 + n - 21]  # ㉑
    for n in range(36, 51):
        table[n] = [0x32B1 + n - 36]  # ㊱
    return {n: "".join(map(chr, codes)) for n, codes in table.items()}


# Typographic punctuation -> ASCII. Off by default: “”‘’ —— …… are the correct forms in Chinese prose.
DEFAULT_PUNCTUATION = {
    "“": '"',
    "”": '"',
    "„": '"',
    "‟": '"',
    "«": '"',
    "»": '"',
    "‘": "'",
    "’": "'",
    "‚": "'",
    "‛": "'",
    "′": "'",
    "″": '"',
    "‐": "-",
    "‑": "-",
    "‒": "-",
    "–": "-",
    "—": "-",
    "―": "-",
    "−": "-",
    "…": "...",
    "⋯": "...",
}


def _unicode_form(form: str, text: str) -> str:
    return unicodedata.normalize(form, text)


ENUMERATORS = _enumerator_table()
COLLAPSE = r"(```[\s\S]*?```)|(?<=\S)( ) +(?=[^ \n])"
ENUMERATOR_CHARS = "".join(ENUMERATORS.values())
ENUMERATOR_CLASS = f"[{ENUMERATOR_CHARS}]"


@register
class Normalizer(Mapper):
    """Normalise symbols so that equal text looks equal (to people, filters and dedupe)."""

    name = "normalize"

    class Params(OperatorParams):
        unicode_spaces: bool = Field(
            default=True,
            description="Replace Unicode space separators (no-break, em, ideographic...) with ' '.",
        )
        fullwidth: bool = Field(
            default=True, description="Full-width ASCII forms (Ａ１！) to half-width (A1!)."
        )
        keep_cjk_punctuation: bool = Field(
            default=False,
            description="With fullwidth: keep full-width ，！？：；（）～, the correct forms in Chinese prose.",
        )
        enumerators: bool = Field(
            default=True, description="Enumerator symbols ①⑴⒈➊❶➀⓵㊀㈠ (0-50) to '1.', '2.', ..."
        )
        punctuation: bool = Field(
            default=False,
            description="Map typographic punctuation to ASCII with `punctuation_map` (curly quotes, dashes, "
            "ellipses). Off by default: “” ‘’ —— …… are correct in Chinese prose.",
        )
        punctuation_map: dict[str, str] = Field(
            default_factory=lambda: dict(DEFAULT_PUNCTUATION),
            description="With punctuation: single character -> replacement (any length), e.g. {'…': '...'}.",
        )
        unicode_form: Literal["none", "NFC", "NFKC"] = Field(
            default="none",
            description="Unicode normalisation, last (pandas UDF). NFC composes accents (e + ́ -> é) and maps "
            "CJK compatibility ideographs (U+F900-U+FAFF, e.g. 豈 U+F900 -> U+8C48) to their unified twins; "
            "the text reads the same. NFKC also folds compatibility characters: full-width CJK punctuation "
            "，。-> , . (overriding keep_cjk_punctuation), Kangxi radicals ⼀ -> 一, ㊀ -> 一, ² -> 2, ﬁ -> fi, "
            "™ -> TM. Use NFKC for dedupe keys or search text, not for text a model learns to write.",
        )
        collapse_spaces: bool = Field(
            default=True,
            description="Collapse runs of spaces after a non-space to one; leading indentation and fenced "
            "``` code blocks are kept.",
        )

        @field_validator("punctuation_map")
        @classmethod
        def _single_chars(cls, v: dict[str, str]) -> dict[str, str]:
            bad = [k for k in v if len(k) != 1]
            if bad:
                raise ValueError(f"keys must be single characters; got {bad!r}")
            return v

    params: Params

    def rewrite(self, text: Column) -> Column:
        # The gates below test the *input* (a plain column reference) rather than the rewritten text, which
        # keeps the expression tree small: Catalyst copies a sub-expression wherever it is referenced.
        p = self.params
        orig = text
        if p.unicode_spaces:
            text = F.translate(text, UNICODE_SPACE_CHARS, " " * len(UNICODE_SPACE_CHARS))
        if p.fullwidth:
            src = "".join(c for c in FULLWIDTH if not (p.keep_cjk_punctuation and c in CJK_PUNCTUATION))
            text = F.translate(text, src, "".join(chr(ord(c) - 0xFEE0) for c in src))
        spaced_map = False
        if p.punctuation and p.punctuation_map:
            single = {k: v for k, v in p.punctuation_map.items() if len(v) == 1}
            if single:
                text = F.translate(text, "".join(single), "".join(single.values()))
            for k, v in p.punctuation_map.items():
                if len(v) != 1:
                    text = F.replace(text, F.lit(k), F.lit(v))
            spaced_map = any(" " in v for v in p.punctuation_map.values())
        if p.enumerators:
            # One regex per number, so only run the chain on the rare texts that hold an enumerator at all;
            # the steps above never create one, so the input tells. translate() is a per-character table
            # lookup: far cheaper than a regex scan as the gate.
            chained = text
            for n, chars in ENUMERATORS.items():
                chained = F.regexp_replace(chained, f"[{chars}]", f"{n}.")
            text = F.when(holds_any(orig, ENUMERATOR_CHARS), chained).otherwise(text)
        if p.collapse_spaces:
            # A fenced code block matches the first alternative and is put back unchanged ($1); elsewhere a
            # run of spaces between two non-spaces becomes one space ($2). Trailing spaces stay: two of them
            # before a newline are a Markdown line break. Only a run of two or more spaces can change, and
            # the input has one, or a Unicode space that became ' ' (or a mapped punctuation with a space).
            may_change = orig.contains("  ")
            if p.unicode_spaces:
                may_change = may_change | holds_any(orig, UNICODE_SPACE_CHARS)
            if spaced_map:
                may_change = F.lit(True)
            text = F.when(may_change, F.regexp_replace(text, COLLAPSE, "$1$2")).otherwise(text)
        return text

    def python_rewrite(self) -> Callable[[str], str] | None:
        form = self.params.unicode_form
        return None if form == "none" else partial(_unicode_form, form)
