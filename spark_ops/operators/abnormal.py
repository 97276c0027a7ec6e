"""Abnormal content: control and invisible characters, garbled text, emoji, HTML, special symbols, boilerplate.

Every operator here is a :class:`Mapper` built from Spark SQL ``regexp_replace`` / ``translate`` (Java
regular expressions), so the hot path stays in the JVM. The one exception is full HTML entity unescaping
(``html.unescape`` knows 2,000+ named entities and numeric references), which runs in a pandas UDF and only
when asked for.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pyspark.sql import Column
from pyspark.sql import functions as F

from spark_ops.operators.base import Mapper, OperatorParams, holds_any, register
from spark_ops.operators.regex import check_java_regex

# C0 controls except \t (09) and \n (0A); \r is handled apart (CRLF -> LF, a lone CR -> LF); DEL; C1 controls.
CONTROL = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]"
# Zero-width space / non-joiner / joiner, word joiner, invisible operators, soft hyphen, BOM (ZWNBSP),
# Mongolian vowel separator.
INVISIBLE = r"[\x{200B}-\x{200D}\x{2060}-\x{2064}\x{00AD}\x{FEFF}\x{180E}]"
# Bidirectional controls: LRM/RLM, embeddings/overrides (202A-202E), isolates (2066-2069), Arabic letter mark.
BIDI = r"[\x{200E}\x{200F}\x{202A}-\x{202E}\x{2066}-\x{2069}\x{061C}]"

# Bytes 0x80-0xBF (UTF-8 continuation bytes) as Latin-1 shows them, plus the characters cp1252 puts at
# 0x80-0x9F -- what a continuation byte looks like after a wrong decode either way.
CONTROL_CHARS = "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]))
INVISIBLE_CHARS = "".join(map(chr, [*range(0x200B, 0x200E), *range(0x2060, 0x2065), 0x00AD, 0xFEFF, 0x180E]))
BIDI_CHARS = "".join(map(chr, [0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x061C]))
# Every garbled match holds one of these: a Latin-1 lead/byte (U+0080-U+00FF) or a replacement pattern's char.
GARBLED_GATE = "".join(map(chr, range(0x80, 0x100))) + "\ufffd锟烫屯"

_CONT = r"[\x{0080}-\x{00BF}\x{20AC}\x{201A}\x{0192}\x{201E}\x{2026}\x{2020}\x{2021}\x{02C6}\x{2030}\x{0160}\x{2039}\x{0152}\x{017D}\x{2018}\x{2019}\x{201C}\x{201D}\x{2022}\x{2013}\x{2014}\x{02DC}\x{2122}\x{0161}\x{203A}\x{0153}\x{017E}\x{0178}]"
# UTF-8 read as Latin-1 / cp1252: a lead byte (Ã, â, ä ...) followed by its continuation bytes, e.g. "Ã©"
# (é), "â€™" (’), "ï¿½" (U+FFFD), "ä½ å¥½" (你好). One sequence on its own is ambiguous ("«café…»" holds
# é + … + », the bytes of a CJK character), so a lone sequence counts only with the leads real mojibake
# shows alone -- Â/Ã (Latin-1 letters and symbols), â (punctuation: â€™ â€œ), ï (ï¿½, full-width forms) or
# a 4-byte lead (emoji) -- and any other lead (CJK, Cyrillic ...) only in runs of two or more.
_SEQ = rf"(?:[\x{{00C2}}-\x{{00DF}}]{_CONT}|[\x{{00E0}}-\x{{00EF}}]{_CONT}{{2}}|[\x{{00F0}}-\x{{00F4}}]{_CONT}{{3}})"
_LONE = rf"(?:[\x{{00C2}}\x{{00C3}}]{_CONT}|[\x{{00E2}}\x{{00EF}}]{_CONT}{{2}}|[\x{{00F0}}-\x{{00F4}}]{_CONT}{{3}})"
UTF8_AS_LATIN1 = rf"{_LONE}{_SEQ}*|{_SEQ}{{2,}}"
# GBK (or Big5) bytes read as Latin-1: runs of 4+ characters from U+00A1-U+00FF, e.g. "ÄãºÃ" (你好); real
# European text never strings four accented letters or Latin-1 symbols together.
GBK_AS_LATIN1 = r"[\x{00A1}-\x{00FF}]{4,}"
# U+FFFD replacement characters, and the classic Chinese mojibake of U+FFFD pairs read as GBK (锟斤拷) and of
# uninitialised memory (烫烫烫 / 屯屯屯, MSVC's 0xCC / 0xCD fill).
REPLACEMENT = r"\x{FFFD}+|(?:锟斤拷)+|烫{3,}|屯{3,}"
GARBLED = f"{REPLACEMENT}|{UTF8_AS_LATIN1}|{GBK_AS_LATIN1}"

# Emoji by code block (not Java's \p{IsEmoji}: that property also holds the digits 0-9, # and *).
# Dingbats 2776-2793 (❶ ➀ ➊) are enumerators, handled by `normalize`, and are left alone.
EMOJI_CHAR = (
    r"[\x{1F000}-\x{1F0FF}\x{1F100}-\x{1F1FF}\x{1F200}-\x{1F2FF}\x{1F300}-\x{1F5FF}\x{1F600}-\x{1F64F}"
    r"\x{1F680}-\x{1F6FF}\x{1F780}-\x{1F7FF}\x{1F900}-\x{1F9FF}\x{1FA70}-\x{1FAFF}"
    r"\x{2600}-\x{26FF}\x{2700}-\x{2775}\x{2794}-\x{27BF}\x{2B05}-\x{2B07}\x{2B1B}\x{2B1C}\x{2B50}\x{2B55}"
    r"\x{231A}\x{231B}\x{23E9}-\x{23F3}\x{23F8}-\x{23FA}\x{2934}\x{2935}\x{3030}\x{303D}]"
)
# Modifiers that belong to an emoji: variation selectors, ZWJ (family sequences), skin tones, tag characters.
EMOJI_TAIL = r"[\x{FE0E}\x{FE0F}\x{200D}\x{1F3FB}-\x{1F3FF}\x{E0020}-\x{E007F}]"
KEYCAP = r"[0-9#*]\x{FE0F}?\x{20E3}"
EMOJI = rf"{KEYCAP}|{EMOJI_CHAR}(?:{EMOJI_TAIL}|{EMOJI_CHAR})*"


def _class_chars(cls: str) -> str:
    """Every character of a ``[\\x{...}-\\x{...}...]`` class, as one string (for :func:`holds_any`)."""
    out = []
    for lo, hi in re.findall(r"\\x\{([0-9A-F]+)\}(?:-\\x\{([0-9A-F]+)\})?", cls):
        out.extend(map(chr, range(int(lo, 16), int(hi or lo, 16) + 1)))
    return "".join(out)


# Every emoji match holds an emoji character or the keycap mark.
EMOJI_GATE = _class_chars(EMOJI_CHAR) + "\u20e3"

HTML_TAG_NAMES = (
    "a|abbr|address|article|aside|audio|b|base|bdi|bdo|blockquote|body|br|button|canvas|caption|center|cite|"
    "code|col|colgroup|dd|del|details|dfn|div|dl|dt|em|embed|fieldset|figcaption|figure|font|footer|form|"
    "h[1-6]|head|header|hr|html|i|iframe|img|input|ins|kbd|label|legend|li|link|main|mark|meta|nav|noscript|"
    "object|ol|option|p|picture|pre|q|s|samp|section|select|small|source|span|strike|strong|sub|summary|sup|"
    "table|tbody|td|textarea|tfoot|th|thead|time|title|tr|tt|u|ul|var|video|wbr"
)
# A tag must look like one: a known name, then attributes (name, name=value) or nothing, then > or />.
# "a<b and c>d" or "x < y > z" are not tags and stay.
_ATTRS = r"""(?:\s+[A-Za-z_:][-\w:.]*(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>=`]+))?)*\s*/?"""
HTML_TAG = rf"(?i)</?(?:{HTML_TAG_NAMES}){_ATTRS}>"
HTML_BLOCK_BREAK = r"(?i)<br\s*/?>|</(?:p|div|li|tr|h[1-6]|table|ul|ol|blockquote|pre|section|article)\s*>"
HTML_DROP = r"(?is)<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->|<!DOCTYPE[^>]*>"
# The entities that make up nearly all of real web text, replaced in Spark; `full` mode handles the rest.
COMMON_ENTITIES = {
    "&nbsp;": " ",
    "&lt;": "<",
    "&gt;": ">",
    "&quot;": '"',
    "&#34;": '"',
    "&#39;": "'",
    "&apos;": "'",
    "&#160;": " ",
    "&ensp;": " ",
    "&emsp;": " ",
    "&ldquo;": "“",
    "&rdquo;": "”",
    "&lsquo;": "‘",
    "&rsquo;": "’",
    "&mdash;": "—",
    "&ndash;": "–",
    "&hellip;": "…",
    "&middot;": "·",
    "&copy;": "©",
    "&reg;": "®",
    "&trade;": "™",
    "&amp;": "&",  # last, so "&amp;lt;" becomes "&lt;" (text), not "<"
}
ENTITY = r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"

DEFAULT_SYMBOLS = "•●▪▫■□◆◇►▶◀▲▼△▽█▇▆▅▄▃▂▁▌▐░▒▓◎❖✦✧★☆®©™"
DEFAULT_BOILERPLATE = [
    "本文来源",
    "文章来源",
    "版权所有",
    "版权归.{1,20}所有",
    "转载请注明",
    "未经(?:许可|授权).{0,10}(?:转载|使用)",
    "关注(?:我们的)?(?:微信)?公众号",
    "扫码关注",
    "扫描二维码",
    "点击(?:上方|下方)?.{0,6}关注",
    "原文链接",
    "责任编辑",
    "(?i)copyright\\s*(?:©|\\(c\\)|&copy;)",
    "(?i)all rights reserved",
    "(?i)originally published (?:at|in|on|by)",
]


@register
class InvisibleCharRemover(Mapper):
    """Remove control characters (U+0000-U+001F except tab and newline, DEL, C1), zero-width and BOM
    characters and bidirectional controls; CRLF and lone CR become LF."""

    name = "remove_invisible"

    class Params(OperatorParams):
        control: bool = Field(
            default=True,
            description="Remove C0/C1 control characters except \\t and \\n; \\r\\n and \\r -> \\n.",
        )
        invisible: bool = Field(
            default=True,
            description="Remove zero-width characters (U+200B-U+200D, U+2060-U+2064), soft hyphen and BOM "
            "(U+FEFF). Note: U+200D also joins emoji sequences (👨‍👩‍👧 becomes three emoji).",
        )
        bidi: bool = Field(
            default=True,
            description="Remove bidirectional controls (U+200E/F, U+202A-U+202E, U+2066-U+2069).",
        )

    params: Params

    def rewrite(self, text: Column) -> Column:
        p = self.params
        orig = text
        if p.control:
            text = F.when(orig.contains("\r"), F.regexp_replace(text, r"\r\n?", "\n")).otherwise(text)
        # One pass over the text for all enabled classes: the classes are disjoint, so order does not matter.
        # A translate() lookup per character first: texts without any of them skip the regex.
        enabled = ((CONTROL, CONTROL_CHARS, p.control), (INVISIBLE, INVISIBLE_CHARS, p.invisible))
        enabled += ((BIDI, BIDI_CHARS, p.bidi),)
        classes = [c[1:-1] for c, _, on in enabled if on]
        if not classes:
            return text
        gate = holds_any(orig, "".join(chars for _, chars, on in enabled if on))
        return F.when(gate, F.regexp_replace(text, "[" + "".join(classes) + "]", "")).otherwise(text)


@register
class GarbledTextRemover(Mapper):
    """Remove garbled text: U+FFFD runs, 锟斤拷 / 烫烫烫, UTF-8 read as Latin-1 or cp1252 ("Ã©", "â€™", "ï¿½")
    and GBK read as Latin-1 (runs of 4+ Latin-1 characters like "ÄãºÃ"). Accented words stay."""

    name = "remove_garbled"

    class Params(OperatorParams):
        replacement_chars: bool = Field(
            default=True, description="Remove U+FFFD runs, 锟斤拷, 烫烫烫, 屯屯屯."
        )
        mojibake: bool = Field(
            default=True,
            description="Remove UTF-8-as-Latin-1/cp1252 sequences and GBK-as-Latin-1 runs (4+ characters of "
            "U+00A1-U+00FF in a row).",
        )

    params: Params

    def rewrite(self, text: Column) -> Column:
        orig = text
        if self.params.replacement_chars:
            text = F.regexp_replace(text, REPLACEMENT, "")
        if self.params.mojibake:
            text = F.regexp_replace(text, f"{UTF8_AS_LATIN1}|{GBK_AS_LATIN1}", "")
        # Removing a match never creates a gate character, so the input tells whether anything can match.
        return F.when(holds_any(orig, GARBLED_GATE), text).otherwise(orig)


@register
class EmojiRemover(Mapper):
    """Remove emoji with their modifiers (skin tones, variation selectors, ZWJ sequences, flags, keycaps).

    Enumerator dingbats (❶ ➀ ➊, U+2776-U+2793) are not emoji here; `normalize` turns them into "1.".
    """

    name = "remove_emoji"

    class Params(OperatorParams):
        replacement: str = Field(default="", description="What an emoji sequence becomes (default: nothing).")

    params: Params

    def rewrite(self, text: Column) -> Column:
        rep = self.params.replacement.replace("\\", "\\\\").replace("$", "\\$")
        return F.when(holds_any(text, EMOJI_GATE), F.regexp_replace(text, EMOJI, rep)).otherwise(text)


_ENTITY_RE = re.compile(ENTITY)


def _unescape(text: str) -> str:
    # Only terminated references: html.unescape alone would also turn HTML5's legacy "&lt 2" into "< 2".
    return _ENTITY_RE.sub(lambda m: html.unescape(m[0]), text) if "&" in text else text


@register
class HtmlCleaner(Mapper):
    """Strip HTML: drop script/style blocks, comments and tags (keeping their text), turn <br> and block ends
    into newlines, unescape entities."""

    name = "clean_html"

    class Params(OperatorParams):
        tags: bool = Field(default=True, description="Drop tags of known HTML elements; their text stays.")
        entities: Literal["none", "common", "full"] = Field(
            default="full",
            description="'common': the ~20 usual entities (&amp; &lt; &nbsp; &ldquo; ...) in Spark SQL; "
            "'full': every named and numeric entity (&#20320; &eacute; ...) with html.unescape in a pandas "
            "UDF (slower: the text crosses to Python); 'none': leave entities.",
        )

    params: Params

    def rewrite(self, text: Column) -> Column:
        if self.params.tags:
            stripped = F.regexp_replace(text, HTML_DROP, "")
            stripped = F.regexp_replace(stripped, HTML_BLOCK_BREAK, "\n")
            stripped = F.regexp_replace(stripped, HTML_TAG, "")
            # Block ends leave line breaks at the edges and in runs: trim them, at most one blank line.
            stripped = F.regexp_replace(
                F.regexp_replace(stripped, r"^\s*\n|\n\s*$", ""), r"\n\s*\n\s*\n", "\n\n"
            )
            # contains() first: most texts hold no '<' and skip the regex scan entirely.
            has_html = text.contains("<") & text.rlike(f"{HTML_TAG}|{HTML_DROP}")
            text = F.when(has_html, stripped).otherwise(text)
        if self.params.entities == "common":
            # One pass per entity; texts without '&' skip the chain.
            chained = text
            for entity, char in COMMON_ENTITIES.items():
                chained = F.replace(chained, F.lit(entity), F.lit(char))
            text = F.when(text.contains("&"), chained).otherwise(text)
        return text

    def python_rewrite(self) -> Callable[[str], str] | None:
        return _unescape if self.params.entities == "full" else None


@register
class SpecialSymbolRemover(Mapper):
    """Remove special symbols (• █ ◆ □ ► ® © ...); a bullet starting a line goes with the spaces after it."""

    name = "remove_symbols"

    class Params(OperatorParams):
        symbols: str = Field(
            default=DEFAULT_SYMBOLS,
            description="Characters to remove. The default leaves ○ (a zero in Chinese numbers: 二○二四) and "
            "arrows, which carry meaning.",
        )
        extra_symbols: str = Field(default="", description="More characters to remove, added to `symbols`.")

    params: Params

    def rewrite(self, text: Column) -> Column:
        chars = "".join(dict.fromkeys(self.params.symbols + self.params.extra_symbols))
        if not chars:
            return text
        cls = "[" + "".join(re.escape(c) for c in chars) + "]"
        stripped = F.regexp_replace(text, rf"(?m)^([ \t]*){cls}+[ \t]*", "$1")
        return F.when(holds_any(text, chars), F.regexp_replace(stripped, cls, "")).otherwise(text)


@register
class BoilerplateLineRemover(Mapper):
    """Remove short lines that match watermark / boilerplate patterns (source notes, copyright, "follow our
    WeChat account"), including the line break. Long lines are content that merely mentions such words."""

    name = "remove_boilerplate_lines"

    class Params(OperatorParams):
        patterns: list[str] = Field(
            default_factory=lambda: list(DEFAULT_BOILERPLATE),
            description="Regular expressions (Java syntax; validated with Python's re); a line matching any "
            "is removed.",
        )
        extra_patterns: list[str] = Field(
            default_factory=list, description="More patterns, added to `patterns`."
        )
        max_line_chars: int = Field(
            default=100,
            ge=1,
            description="Only lines of at most this many characters count as boilerplate; a long paragraph "
            "that mentions 版权所有 is kept.",
        )

        @field_validator("patterns", "extra_patterns")
        @classmethod
        def _valid(cls, v: list[str], info: ValidationInfo) -> list[str]:
            return [check_java_regex(p, f"{info.field_name}[{i}]") for i, p in enumerate(v)]

    params: Params

    def rewrite(self, text: Column) -> Column:
        patterns = self.params.patterns + self.params.extra_patterns
        if not patterns:
            return text
        # A leading inline flag such as (?i) is scoped to its own pattern: (?i:...).
        bodies = "|".join(_scoped(p) for p in patterns)
        n = self.params.max_line_chars
        # (?=[^\n]{0,N}$) bounds the line's length; the match must lie within the line ([^\n] around it).
        line = rf"(?m)^(?=[^\n]{{0,{n}}}$)[^\n]*?(?:{bodies})[^\n]*(?:\n|$)"
        return F.regexp_replace(text, line, "")


def _scoped(pattern: str) -> str:
    m = re.match(r"^\(\?([a-zA-Z]+)\)", pattern)
    return f"(?{m.group(1)}:{pattern[m.end() :]})" if m else f"(?:{pattern})"
