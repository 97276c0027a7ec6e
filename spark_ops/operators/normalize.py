"""Symbol normalisation: Unicode spaces, full-width ASCII and enumerator symbols, repeated spaces."""

from __future__ import annotations

from pydantic import Field
from pyspark.sql import Column
from pyspark.sql import functions as F

from spark_ops.operators.base import Mapper, OperatorParams, register

# Space separators other than ' ' itself (U+3000 is the full-width, ideographic space).
UNICODE_SPACES = "[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
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


ENUMERATORS = _enumerator_table()
COLLAPSE = r"(```[\s\S]*?```)|(?<=\S)( ) +(?=[^ \n])"
ENUMERATOR_CLASS = "[" + "".join(ENUMERATORS.values()) + "]"


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
        collapse_spaces: bool = Field(
            default=True,
            description="Collapse runs of spaces after a non-space to one; leading indentation and fenced "
            "``` code blocks are kept.",
        )

    params: Params

    def rewrite(self, text: Column) -> Column:
        p = self.params
        if p.unicode_spaces:
            text = F.regexp_replace(text, UNICODE_SPACES, " ")
        if p.fullwidth:
            src = "".join(c for c in FULLWIDTH if not (p.keep_cjk_punctuation and c in CJK_PUNCTUATION))
            text = F.translate(text, src, "".join(chr(ord(c) - 0xFEE0) for c in src))
        if p.enumerators:
            # One regex per number, so only run the chain on the rare texts that hold an enumerator at all.
            chained = text
            for n, chars in ENUMERATORS.items():
                chained = F.regexp_replace(chained, f"[{chars}]", f"{n}.")
            text = F.when(text.rlike(ENUMERATOR_CLASS), chained).otherwise(text)
        if p.collapse_spaces:
            # A fenced code block matches the first alternative and is put back unchanged ($1); elsewhere a
            # run of spaces between two non-spaces becomes one space ($2). Trailing spaces stay: two of them
            # before a newline are a Markdown line break.
            text = F.regexp_replace(text, COLLAPSE, "$1$2")
        return text
