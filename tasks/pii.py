"""Personal-data detectors: one implementation for the ``desensitize`` operator, the dataset review's PII
hints (the quality report) and the gateway guardrail.

Pure Python and the standard library (plus the Public Suffix List's data file), so every engine can use it.

How a text is scanned:

1. **A folded view.** People type numbers in full width (``１３８…``), with no-break or ideographic spaces,
   typographic dashes and middle dots between digit groups. Detection runs on a view of the text in which
   full-width digits, Latin letters and the punctuation that occurs inside PII (``＠．－／＿＋＝＆％～＃``) are
   folded to ASCII, every space-like character to ``" "``, every dash to ``"-"`` and every middle dot to
   ``"."``. Each fold maps one character to one character, so offsets in the view are offsets in the text:
   a mask replaces exactly the characters written and everything else stays as it was (full-width text
   stays full-width). Sentence punctuation (``，；：！？（）``) is not folded, so a match never runs across
   a Chinese comma. Texts without any foldable character (most of them) are scanned as they are.
2. **Detectors** run in a fixed order on the view: URLs with a scheme or ``www.``, e-mails, URLs without a
   scheme (a host ending in a public suffix, followed by a path; never an e-mail's domain), MAC and IP
   addresses, then the digit-group types (ID card, bank card, VIN, IMEI, legacy ID card, mobile and
   landline phone numbers), passports and licence plates. A span one detector accepted is blanked out of
   the view for the later ones, so a span is reported once.
3. **Digit groups.** Between any two digits of a digit-group type one separator may stand (``" "``, ``"-"``,
   ``"."`` in the view). A number is found when it is not part of a longer digit run: not after a digit or
   ``digit.``/``digit-`` (a decimal tail, a date), not before a digit or ``.digit``/``-digit``; a number
   written with separators must also not continue with ``digit<space>`` or ``<space>digit`` (so a decoy card
   ``6222 0571 2345 6789`` does not yield a landline ``0571 2345 6789``). Letters may touch it (a label glued
   to the number: ``IMEI861583005872737``, ``Tel13812345678``, ``卡号6222…``). Checksums (GB 11643 for ID
   cards, Luhn for bank cards and IMEIs, ISO 3779 for VINs) and prefixes (mobile ``1[3-9]``, landline area
   codes) decide on the digits alone, so a tracking, order or ISBN number that fails them is left alone.

Each detector has a *hint*, a cheap pattern that every match contains, so the look-around-heavy pattern only
scans the texts that can hold a match at all.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

PiiType = Literal[
    "url", "email", "id_card", "bank_card", "vin", "imei", "phone", "mac", "ip", "passport", "plate"
]
Action = Literal["mask", "placeholder", "hash", "drop"]
ALL_TYPES: tuple[PiiType, ...] = (
    "url", "email", "id_card", "bank_card", "vin", "imei", "phone", "mac", "ip", "passport", "plate",
)  # fmt: skip

# ------------------------------------------------------------------------------------------- folding

# One character -> one ASCII character (never a change of length: offsets in the view are offsets in the text).
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_DOTS = "\u00b7\u2022\u2027\u2219\u30fb\uff65\uff0e"
_FULLWIDTH_PUNCT = "＠／＿＋＝＆％～＃"  # the ones that occur inside e-mails and URLs


def _fold_table() -> dict[int, int]:
    table = {c: c - 0xFEE0 for c in range(0xFF10, 0xFF1A)}  # ０-９
    table |= {c: c - 0xFEE0 for c in range(0xFF21, 0xFF3B)}  # Ａ-Ｚ
    table |= {c: c - 0xFEE0 for c in range(0xFF41, 0xFF5B)}  # ａ-ｚ
    table |= {ord(c): ord(c) - 0xFEE0 for c in _FULLWIDTH_PUNCT}
    table |= {ord(c): 0x20 for c in _SPACES}
    table |= {ord(c): 0x2D for c in _DASHES}
    table |= {ord(c): 0x2E for c in _DOTS}
    return table


FOLD = _fold_table()
_FOLD_STR = {chr(k): chr(v) for k, v in FOLD.items()}
_FOLDABLE = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(FOLD)) + "]")
_SEPARATORS = "[" + re.escape(_SPACES + _DASHES + _DOTS) + "]"
# Folding matters only where a full-width letter, digit or symbol is, or a separator touches a digit: an
# en dash in "1990–95" does, the one in "Paris – Rome" does not (most texts are scanned as they are).
_FOLD_TRIGGER = re.compile(
    "[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a" + re.escape(_FULLWIDTH_PUNCT) + "]"
    f"|[0-9]{_SEPARATORS}|{_SEPARATORS}[0-9]"
)


def fold(text: str) -> str:
    """The detection view of ``text``: same length, full-width forms and separators folded to ASCII."""
    if _FOLD_TRIGGER.search(text) is None:
        return text
    return _FOLDABLE.sub(lambda m: _FOLD_STR[m.group()], text)


# ------------------------------------------------------------------------------------------ checksums


def luhn_valid(m: str) -> bool:
    """Luhn check over the ASCII digits of ``m`` (anything else ignored): bank cards and IMEIs."""
    total = 0
    for i, ch in enumerate(reversed([c for c in m if "0" <= c <= "9"])):
        v = int(ch)
        if i % 2 == 1:
            v = v * 2 - 9 if v * 2 > 9 else v * 2
        total += v
    return total % 10 == 0


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id18_valid(m: str) -> bool:
    """GB 11643-1999 check character of an 18-character ID (no separators): weighted sum of the first 17
    digits mod 11 -> '10X98765432'."""
    s = sum(int(c) * w for c, w in zip(m[:17], _ID_WEIGHTS, strict=True))
    return "10X98765432"[s % 11] == m[17].upper()


_VIN_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin_valid(m: str) -> bool:
    """ISO 3779 / GB 16735 check digit (position 9): transliterated weighted sum mod 11, 10 -> 'X'."""
    if any(c not in _VIN_VALUES for c in m):
        return False
    s = sum(_VIN_VALUES[c] * w for c, w in zip(m, _VIN_WEIGHTS, strict=True))
    return ("X" if s % 11 == 10 else str(s % 11)) == m[8]


@cache
def public_suffix_tlds() -> frozenset[str]:
    """Top-level labels of the ICANN section of the Public Suffix List (the ``publicsuffixlist`` package's
    data file), lower-case ASCII."""
    import publicsuffixlist  # the data file only; imported here so parsing a DAG never pays for it

    path = Path(publicsuffixlist.__file__).with_name("public_suffix_list.dat")
    out: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if "===END ICANN DOMAINS===" in line:
            break
        if line and not line.startswith("//"):
            label = line.rsplit(".", 1)[-1].lstrip("*!")
            if label.isascii():
                out.add(label.lower())
    return frozenset(out)


def _public_host(m: str) -> bool:
    host = re.split(r"[/:]", m, maxsplit=1)[0]
    return host.rsplit(".", 1)[-1].lower() in public_suffix_tlds()


# ------------------------------------------------------------------------------------------ patterns

_SEP = "[ .\\-]"  # one separator between digits, in the view
_S = _SEP + "?"
_HEX = "[0-9A-Fa-f]"
_H4 = _HEX + "{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_PLATE_LETTER = "[A-HJ-NP-Z]"  # licence plates use no I or O
_VIN_CHAR = "[0-9A-HJ-NPR-Z]"  # VINs use no I, O or Q
# Digit groups: not inside a longer digit run, a decimal tail or a date; letters may touch them.
_NOT_AFTER_NUM = r"(?<![0-9])(?<![0-9][.\-])"
_NOT_BEFORE_NUM = r"(?![0-9])(?![.\-][0-9])"
_NOT_AFTER_WORD = r"(?<![0-9A-Za-z_])"
_NOT_BEFORE_WORD = r"(?![0-9A-Za-z_])"
_URL_CHARS = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*[A-Za-z0-9/#=&_~%\-]"


def _digits(n: str) -> str:
    """``n`` more digits, each optionally after one separator (``n`` is a regex count: ``9`` or ``6,7``)."""
    return f"(?:{_S}[0-9]){{{n}}}"


def _date8() -> str:
    return f"(?:19|20)[0-9]{_S}[0-9]{_S}(?:0{_S}[1-9]|1{_S}[0-2]){_S}(?:0{_S}[1-9]|[12]{_S}[0-9]|3{_S}[01])"


def _date6() -> str:
    return f"[0-9]{_S}[0-9]{_S}(?:0{_S}[1-9]|1{_S}[0-2]){_S}(?:0{_S}[1-9]|[12]{_S}[0-9]|3{_S}[01])"


Validator = Callable[[str], bool]


@dataclass(frozen=True)
class Detector:
    """One regex for one PII type, run on the folded view; ``body`` is the span, look-arounds anchor it.

    ``digit_groups``: the body may hold separators between digits; such a match must stand apart from
    other digit groups (module docstring), and ``valid`` receives the digits (and letters) alone.
    ``mask``: the name of its mask in ``_MASKS``.
    """

    pii: PiiType
    body: str
    before: str = _NOT_AFTER_WORD
    after: str = _NOT_BEFORE_WORD
    valid: Validator | None = None
    hint: str | None = None
    digit_groups: bool = False
    mask: str = ""
    # Scanned only inside the runs of digits (``_DIGIT_RUNS``) instead of over the whole text.
    in_digit_runs: bool = False

    @property
    def pattern(self) -> str:
        return f"{self.before}(?:{self.body}){self.after}"


def _group_detector(pii: PiiType, body: str, valid: Validator | None, mask: str, **kw: str) -> Detector:
    return Detector(
        pii,
        body,
        kw.get("before", _NOT_AFTER_NUM),
        _NOT_BEFORE_NUM,
        valid,
        hint=_DIGIT_RUN,
        digit_groups=True,
        mask=mask,
        in_digit_runs=True,
    )


# Every digit-group number has 10 digits or more (a landline after +86: 2-digit area code + 8), written
# with single separators or brackets between them. A run is maximal, so a number never crosses its end.
_DIGIT_RUN = "[0-9](?:[ .\\-()（）]?[0-9]){9,}"
_RUN_BEFORE = 6  # a match may start this far before its run: "+86 ", "（"
_AREA = "(?:10|2[0-9]|[3-9][0-9]{2})"  # after the trunk 0: Beijing 010, 02x, 0xxx

DETECTORS: tuple[Detector, ...] = (
    Detector(
        "url",
        rf"(?:(?:https?|ftp)://|www\.){_URL_CHARS}",
        before=r"(?<![0-9A-Za-z_./])",
        after="",
        hint=r"://|www\.",
        mask="url",
    ),
    Detector(
        "email",
        r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
        before=r"(?<![A-Za-z0-9._%+\-])",
        hint="@",
        mask="email",
    ),
    # No scheme: a host whose last label is a public suffix, then a path (a bare "example.com" is a name).
    Detector(
        "url",
        r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?::[0-9]{1,5})?/"
        rf"(?:{_URL_CHARS})?",
        before=r"(?<![A-Za-z0-9_.@%+\-/:])",
        after="",
        valid=_public_host,
        hint=r"\.[A-Za-z]{2,63}(?::[0-9]{1,5})?/",
        mask="url",
    ),
    Detector(
        "mac",
        # the dotted form needs a hex letter: "0571.2000.0000" is a landline
        rf"{_HEX}{{2}}([:\-]){_HEX}{{2}}(?:\1{_HEX}{{2}}){{4}}"
        rf"|(?=[0-9A-Fa-f.]{{0,13}}[A-Fa-f]){_HEX}{{4}}\.{_HEX}{{4}}\.{_HEX}{{4}}",
        r"(?<![0-9A-Za-z_:.\-])",
        r"(?![0-9A-Za-z_]|[:.\-][0-9A-Fa-f])",
        hint=rf":{_HEX}{{2}}:|-{_HEX}{{2}}-|\.{_HEX}{{4}}\.",
        mask="mac",
    ),
    Detector(
        "ip",
        "|".join(
            [
                rf"(?:{_H4}:){{7}}{_H4}",
                rf"(?:{_H4}:){{1,6}}:{_H4}",
                rf"(?:{_H4}:){{1,5}}(?::{_H4}){{1,2}}",
                rf"(?:{_H4}:){{1,4}}(?::{_H4}){{1,3}}",
                rf"(?:{_H4}:){{1,3}}(?::{_H4}){{1,4}}",
                rf"(?:{_H4}:){{1,2}}(?::{_H4}){{1,5}}",
                rf"{_H4}:(?::{_H4}){{1,6}}",
                rf"(?:{_H4}:){{1,7}}:",
            ]
        ),
        r"(?<![0-9A-Za-z_:])",
        r"(?![0-9A-Za-z_:])",
        hint=f"{_HEX}::?{_HEX}",
        mask="ip",
    ),
    # Before the digit groups: "192.168.10.105" would otherwise read as a dotted mobile number.
    Detector(
        "ip",
        rf"{_OCTET}(?:\.{_OCTET}){{3}}",
        r"(?<![0-9A-Za-z_.])",
        r"(?![0-9A-Za-z_]|\.[0-9])",
        hint=r"[0-9]\.[0-9]{1,3}\.[0-9]",
        mask="ip",
    ),
    _group_detector(
        "id_card", f"[1-8]{_digits(5)}{_S}{_date8()}{_digits(3)}{_S}[0-9Xx]", id18_valid, "id_card"
    ),
    _group_detector("bank_card", f"[3-69]{_digits('15,18')}", luhn_valid, "bank_card"),
    Detector(
        "vin",
        rf"(?={_VIN_CHAR}{{0,16}}[A-HJ-NPR-Z]){_VIN_CHAR}{{17}}",
        valid=vin_valid,
        hint=f"{_VIN_CHAR}{{17}}",
        mask="vin",
    ),
    _group_detector("imei", f"[0-9]{_digits(14)}", luhn_valid, "imei"),
    # The legacy 15-digit ID has no check digit; its embedded yyMMdd date is the only validation.
    _group_detector("id_card", f"[1-8]{_digits(5)}{_S}{_date6()}{_digits(3)}", None, "id_card"),
    _group_detector(
        "phone",
        f"(?:(?:\\+|00)86{_S})?1{_S}[3-9]{_digits(9)}",
        None,
        "mobile",
        before=r"(?<![0-9+])(?<![0-9][.\-])",
    ),
    # Landline: area code (with the trunk 0, in brackets or not; or after +86 without it), then 7-8 digits.
    _group_detector(
        "phone",
        f"(?:(?:\\+|00)86{_S}{_AREA}|[(（]0{_AREA}[)）] ?|0{_AREA}){_S}[2-9]{_digits('6,7')}",
        None,
        "landline",
        before=r"(?<![0-9+])(?<![0-9][.\-])",
    ),
    Detector(
        "passport",
        rf"[EGDSP][0-9]{_digits(7)}|E[A-HJ-NP-Z][0-9]{_digits(6)}|[DPS]E[0-9]{_digits(6)}",
        _NOT_AFTER_WORD,
        r"(?![0-9A-Za-z_])(?![ .\-][0-9])",
        hint="[DEGPS][0-9A-Z][0-9]",
        digit_groups=True,
        mask="passport",
    ),
    Detector(
        "plate",
        # new-energy (D/F + 5) before the ordinary 5-character form, which would match its prefix
        rf"[{_PROVINCES}]{_PLATE_LETTER}[. \-]?(?:[DF][A-HJ-NP-Z0-9][0-9]{{4}}|[0-9]{{5}}[DF]"
        rf"|[A-HJ-NP-Z0-9]{{4}}[A-HJ-NP-Z0-9挂学警])",
        before="",
        after=r"(?![0-9A-Za-z])",
        hint=f"[{_PROVINCES}]{_PLATE_LETTER}",
        mask="plate",
    ),
)

# ------------------------------------------------------------------------------------------ masking

_ALNUM = re.compile("[0-9A-Za-z]")
_NOT_ALNUM = re.compile("[^0-9A-Za-z]")


def compact(m: str) -> str:
    """The letters and digits of a (folded) match, upper-case: what checksums and hashes read."""
    return _NOT_ALNUM.sub("", m).upper()


def _keep_ends(m: str, head: int, tail: int) -> str:
    """Letters and digits masked except the first ``head`` and last ``tail`` of them; separators stay."""
    idx = [i for i, c in enumerate(m) if c.isascii() and c.isalnum()]
    hide = set(idx[head : len(idx) - tail if tail else len(idx)])
    return "".join("*" if i in hide else c for i, c in enumerate(m))


def _phone_digits(m: str) -> tuple[int, list[int]]:
    """(digits of the country code written: 0, 2 for +86 or 4 for 0086; positions of every digit in ``m``)."""
    pos = [i for i, c in enumerate(m) if "0" <= c <= "9"]
    lead = re.match(r"[^0-9]*(\+86|0086)", m)
    return (0 if lead is None else len(lead.group(1).lstrip("+"))), pos


def _national(m: str, landline: bool) -> str:
    """A phone number's national digits: no country code; a landline with its trunk 0."""
    cc, pos = _phone_digits(m)
    digits = "".join(m[i] for i in pos[cc:])
    return "0" + digits if landline and not digits.startswith("0") else digits


def _mask_phone(m: str, landline: bool) -> str:
    """Digits masked but for the head (a mobile's first 3; a landline's area code) and the last 4; a country
    code, brackets and separators stay."""
    cc, pos = _phone_digits(m)
    body = pos[cc:]
    head = 3
    if landline:
        trunk = m[body[0]] == "0"
        first = m[body[1]] if trunk else m[body[0]]
        head = (3 if first in "12" else 4) - (0 if trunk else 1)
    hide = set(body[head : len(body) - 4])
    return "".join("*" if i in hide else c for i, c in enumerate(m))


def _mask_url(m: str) -> str:
    head = re.match(r"(?:(?:https?|ftp)://|www\.)?[^/?#]", m)
    return (head.group(0) if head else m[:1]) + "***"


_MASKS: dict[str, Callable[[str], str]] = {
    "url": _mask_url,
    "email": lambda m: re.sub(r"^([^@])[^@]*@", r"\1***@", m),
    "id_card": lambda m: _keep_ends(m, 3, 4),
    "bank_card": lambda m: _keep_ends(m, 4, 4),
    "vin": lambda m: _keep_ends(m, 3, 4),
    "imei": lambda m: _keep_ends(m, 0, 4),
    "mobile": lambda m: _mask_phone(m, landline=False),
    "landline": lambda m: _mask_phone(m, landline=True),
    "mac": lambda m: m[:8] + _ALNUM.sub("*", m[8:]),
    "ip": lambda m: _ALNUM.sub("*", m),
    "passport": lambda m: _keep_ends(m, 1, 3),
    "plate": lambda m: m[:2] + _ALNUM.sub("*", m[2:-1]) + m[-1:],
}


def _canonical(det: Detector, view: str) -> str:
    """What the hash action hashes: a number's digits alone (so ``138-1234-5678`` and ``13812345678`` hash
    alike; a phone without its country code), any other match as folded."""
    if det.pii == "phone":
        return _national(view, landline=det.mask == "landline")
    return compact(view) if det.digit_groups else view


def _onto_original(original: str, view: str, replaced: str) -> str:
    """``replaced`` (a rewrite of ``view``) with every character it kept from ``view`` taken from
    ``original`` instead, so full-width characters that were not masked stay as written."""
    if original == view:
        return replaced
    if len(replaced) == len(view):
        return "".join(o if v == r else r for o, v, r in zip(original, view, replaced, strict=True))
    p = 0
    while p < min(len(view), len(replaced)) and view[p] == replaced[p]:
        p += 1
    s = 0
    while s < min(len(view), len(replaced)) - p and view[-1 - s] == replaced[-1 - s]:
        s += 1
    return original[:p] + replaced[p : len(replaced) - s] + original[len(original) - s :]


# ------------------------------------------------------------------------------------------ scanning


@dataclass(frozen=True)
class Finding:
    """One validated match: ``text[start:end]`` is the PII as written; ``view`` the same span folded."""

    pii: PiiType
    start: int
    end: int
    view: str
    detector: Detector


@dataclass(frozen=True)
class ScanConfig:
    """What one desensitize step does, in plain values (shipped to the Python workers)."""

    types: tuple[PiiType, ...]
    actions: tuple[tuple[PiiType, Action], ...]
    salt: str

    def action(self, pii: PiiType) -> Action:
        return dict(self.actions)[pii]


@cache
def _compiled(types: frozenset[PiiType]) -> tuple[tuple[Detector, re.Pattern[str], re.Pattern[str]], ...]:
    return tuple(
        (d, re.compile(d.hint or d.body), re.compile(d.pattern)) for d in DETECTORS if d.pii in types
    )


_SEP_RE = re.compile(_SEP)


def _stands_apart(view: str, start: int, end: int) -> bool:
    """A number written with separators is not one group of a longer grouped run."""
    before = view[max(0, start - 2) : start]
    after = view[end : end + 2]
    return not (
        (len(before) == 2 and before[0].isdigit() and before[0].isascii() and before[1] == " ")
        or (len(after) == 2 and after[0] == " " and after[1].isdigit() and after[1].isascii())
    )


_DIGIT_RUN_RE = re.compile(_DIGIT_RUN)


def _digit_windows(work: str) -> list[tuple[int, int]]:
    """(pos, endpos) around every maximal digit run: a digit-group match lies inside one. ``endpos`` leaves
    the two characters after the run visible to the look-aheads; overlapping windows are merged."""
    out: list[tuple[int, int]] = []
    for m in _DIGIT_RUN_RE.finditer(work):
        pos, endpos = max(0, m.start() - _RUN_BEFORE), min(len(work), m.end() + 2)
        if out and pos <= out[-1][1]:
            out[-1] = (out[-1][0], endpos)
        else:
            out.append((pos, endpos))
    return out


def find_pii(text: str, types: tuple[PiiType, ...] | frozenset[PiiType] = ALL_TYPES) -> list[Finding]:
    """Every validated PII span of ``types`` in ``text``, in text order; spans never overlap."""
    view = fold(text)
    work = view
    found: list[Finding] = []
    hints: dict[str, bool] = {}
    windows: list[tuple[int, int]] | None = None
    for det, hint, pattern in _compiled(frozenset(types)):
        if det.in_digit_runs:
            if windows is None:
                windows = _digit_windows(work)
            matches = [m for pos, endpos in windows for m in pattern.finditer(work, pos, endpos)]
        else:
            seen = hints.get(hint.pattern)
            if seen is None:
                seen = hints[hint.pattern] = hint.search(work) is not None
            if not seen:
                continue
            matches = list(pattern.finditer(work))
        spans = []
        for m in matches:
            start, end = m.span()
            value = m.group(0)
            if det.digit_groups and _SEP_RE.search(value) and not _stands_apart(work, start, end):
                continue
            if det.valid is not None and not det.valid(compact(value) if det.digit_groups else value):
                continue
            spans.append((start, end))
        if not spans:
            continue
        pieces, last = [], 0
        for start, end in spans:
            found.append(Finding(det.pii, start, end, view[start:end], det))
            pieces += [work[last:start], "\x00" * (end - start)]
            last = end
        work = "".join(pieces) + work[last:]
        hints.clear()  # the blanked text may no longer hold what a hint saw
        windows = None
    found.sort(key=lambda f: f.start)
    return found


def replacement(cfg: ScanConfig, f: Finding, original: str) -> str:
    """What ``original`` (the span as written) becomes under ``cfg``'s action for its type."""
    act = cfg.action(f.pii)
    tag = f.pii.upper()
    if act == "placeholder":
        return f"[{tag}]"
    if act == "hash":
        digest = hashlib.sha256((cfg.salt + _canonical(f.detector, f.view)).encode("utf-8", "surrogatepass"))
        return f"[{tag}:{digest.hexdigest()[:16]}]"
    return _onto_original(original, f.view, _MASKS[f.detector.mask](f.view))


def desensitize_text(text: str, cfg: ScanConfig, counts: dict[PiiType, int]) -> str:
    """``text`` with every validated PII span rewritten per ``cfg`` (``drop``: left as it is); adds the spans
    per type to ``counts``."""
    found = find_pii(text, cfg.types)
    if not found:
        return text
    pieces, last = [], 0
    for f in found:
        counts[f.pii] = counts.get(f.pii, 0) + 1
        if cfg.action(f.pii) == "drop":
            continue
        pieces += [text[last : f.start], replacement(cfg, f, text[f.start : f.end])]
        last = f.end
    return "".join(pieces) + text[last:] if pieces else text


# ------------------------------------------------------------------------------- the quality gate's regexes


def _escaped(chars: str) -> str:
    return "".join(c if c.isascii() else f"\\u{ord(c):04x}" for c in chars)


_RAW_SEP = "[ .\\-" + _escaped(_SPACES + _DASHES + _DOTS) + "]"


def _fw(c: str) -> str:
    return f"\\u{ord(c) + 0xFEE0:04x}"


def _raw_digits(pattern: str) -> str:
    """``pattern`` with every digit it matches also matching its full-width form: ASCII digits outside a
    class become ``[d<full-width d>]``, digit ranges and digits inside a class gain their full-width twins;
    quantifier counts (``{5}``, ``{6,7}``) and escapes stay."""
    out: list[str] = []
    i, in_class, n = 0, False, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            width = 6 if pattern[i + 1] == "u" else 2  # \uXXXX or a one-character escape
            out.append(pattern[i : i + width])
            i += width
            continue
        if not in_class and c == "{":
            j = pattern.index("}", i)
            out.append(pattern[i : j + 1])
            i = j + 1
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        elif c.isdigit() and in_class:
            if i + 2 < n and pattern[i + 1] == "-" and pattern[i + 2].isdigit():
                out.append(f"{pattern[i : i + 3]}{_fw(c)}-{_fw(pattern[i + 2])}")
                i += 3
                continue
            out.append(c + _fw(c))
            i += 1
            continue
        elif c.isdigit():
            out.append(f"[{c}{_fw(c)}]")
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def gate_patterns(types: tuple[PiiType, ...]) -> list[str]:
    """The detectors of ``types`` as regexes over the raw text, for the Great Expectations gate (Java and
    Python read them alike): every digit also matches its full-width form, a separator every character the
    view folds to one. A regex checks no checksum, so the gate is stricter than the detectors."""
    out = []
    for d in DETECTORS:
        if d.pii in types:
            out.append(_raw_digits(d.pattern.replace(_SEP, _RAW_SEP)))
    return list(dict.fromkeys(out))
