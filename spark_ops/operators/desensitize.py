"""Personal-data desensitisation: find PII by regex, validate checksums, then rewrite -- in one vectorised
pass per Arrow batch.

Every PII type is one or more *detectors*: a regex (with look-arounds so that a phone number inside a longer
digit run is not a phone number) and, where the format has one, a checksum (GB 11643 for ID cards, Luhn for
bank cards and IMEIs, the ISO 3779 check digit for VINs). Only validated strings are replaced, each through a
quoted regex with the same look-arounds, so a valid card number that also occurs inside a longer serial is
not touched there.

Detectors run in a fixed order (URLs and e-mails first, since they contain digits; long digit runs before
shorter ones) on the text as already rewritten by the previous ones, so one span is never reported twice.
Each has a *hint*, a cheap pattern that every match contains, so the look-around regex only scans texts that
can hold a match at all.

The scan runs in a pandas UDF with Python's ``re``: measured on a mixed zh/en corpus, Java's regex engine
(``regexp_extract_all`` / ``rlike``) was about ten times slower on these patterns than ``re``, whose prefix
scan skips the positions that cannot start a match. The patterns are written in the syntax both share.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any, Literal

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import text_values
from spark_ops.operators.base import KEEP, NOTE, STAT, Operator, OperatorContext, OperatorParams, register
from spark_ops.operators.sensitive_words import _put_back

PiiType = Literal[
    "url", "email", "id_card", "bank_card", "vin", "imei", "phone", "mac", "ip", "passport", "plate"
]
Action = Literal["mask", "placeholder", "hash", "drop"]
ALL_TYPES: tuple[PiiType, ...] = (
    "url", "email", "id_card", "bank_card", "vin", "imei", "phone", "mac", "ip", "passport", "plate",
)  # fmt: skip

Validator = Callable[[str], bool]
Masker = Callable[[str], str]

# ASCII word characters: CJK text abuts numbers directly ("电话13812345678"), so only ASCII counts as "glued".
_NOT_AFTER_WORD = r"(?<![0-9A-Za-z_])"
_NOT_BEFORE_WORD = r"(?![0-9A-Za-z_])"
_NOT_AFTER_NUM = r"(?<![0-9A-Za-z_.\-])"  # also not the tail of "1.5" or "2023-..."
_NOT_BEFORE_NUM = r"(?![0-9A-Za-z_]|[.\-][0-9])"
_HEX = "[0-9A-Fa-f]"
_H4 = _HEX + "{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_DATE8 = "(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
_DATE6 = "[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_PLATE_LETTER = "[A-HJ-NP-Z]"  # licence plates use no I or O
_VIN_CHAR = "[0-9A-HJ-NPR-Z]"  # VINs use no I, O or Q


def luhn_valid(m: str) -> bool:
    """Luhn check over the digits of ``m`` (separators ignored): bank cards and IMEIs."""
    total = 0
    for i, ch in enumerate(reversed([c for c in m if c.isdigit() and c.isascii()])):
        v = int(ch)
        if i % 2 == 1:
            v = v * 2 - 9 if v * 2 > 9 else v * 2
        total += v
    return total % 10 == 0


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id18_valid(m: str) -> bool:
    """GB 11643-1999 check character: weighted sum of the first 17 digits mod 11 -> '10X98765432'."""
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


_ALNUM = re.compile("[0-9A-Za-z]")


@dataclass(frozen=True)
class _KeepEnds:
    """Mask letters and digits except the first ``head`` and last ``tail`` characters; separators stay."""

    head: int
    tail: int

    def __call__(self, m: str) -> str:
        end = len(m) - self.tail
        return (
            m[: self.head]
            + _ALNUM.sub("*", m[self.head : max(end, self.head)])
            + (m[end:] if self.tail else "")
        )


@dataclass(frozen=True)
class _RegexMask:
    pattern: str
    replacement: str

    def __call__(self, m: str) -> str:
        return re.sub(self.pattern, self.replacement, m)


def keep_ends(head: int, tail: int) -> Masker:
    return _KeepEnds(head, tail)


@dataclass(frozen=True)
class Detector:
    """One regex for one PII type; ``body`` is what gets replaced, the look-arounds only anchor it."""

    pii: PiiType
    body: str
    before: str = _NOT_AFTER_WORD
    after: str = _NOT_BEFORE_WORD
    valid: Validator | None = None
    # A simple regex every match contains: a cheap first pass, so the look-around-heavy pattern only scans
    # the texts that can hold a match at all.
    hint: str | None = None

    @property
    def pattern(self) -> str:
        return f"{self.before}(?:{self.body}){self.after}"


DETECTORS: tuple[Detector, ...] = (
    Detector(
        "url",
        r"(?:(?:https?|ftp)://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*[A-Za-z0-9/#=&_~%\-]",
        before=r"(?<![0-9A-Za-z_./])",
        after="",
        hint=r"://|www\.",
    ),
    Detector(
        "email",
        r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
        before=r"(?<![A-Za-z0-9._%+\-])",
        hint="@",
    ),
    Detector(
        "id_card",
        rf"[1-8][0-9]{{5}}{_DATE8}[0-9]{{3}}[0-9Xx]",
        _NOT_AFTER_NUM,
        _NOT_BEFORE_NUM,
        id18_valid,
        hint="[0-9]{17}",
    ),
    Detector(
        "bank_card",
        r"[3-69][0-9]{3}(?:[ \-]?[0-9]{4}){3}(?:[ \-]?[0-9]{1,3})?",
        _NOT_AFTER_NUM,
        _NOT_BEFORE_NUM,
        luhn_valid,
        hint=r"[0-9]{4}[ \-]?[0-9]{4}",
    ),
    Detector(
        "vin",
        rf"(?={_VIN_CHAR}{{0,16}}[A-HJ-NPR-Z]){_VIN_CHAR}{{17}}",
        valid=vin_valid,
        hint=f"{_VIN_CHAR}{{17}}",
    ),
    Detector(
        "imei",
        r"[0-9]{2}[ \-]?[0-9]{6}[ \-]?[0-9]{6}[ \-]?[0-9]",
        _NOT_AFTER_NUM,
        _NOT_BEFORE_NUM,
        luhn_valid,
        hint="[0-9]{6}",
    ),
    # The legacy 15-digit ID has no check digit; its embedded yyMMdd date is the only validation.
    Detector(
        "id_card", rf"[1-8][0-9]{{5}}{_DATE6}[0-9]{{3}}", _NOT_AFTER_NUM, _NOT_BEFORE_NUM, hint="[0-9]{15}"
    ),
    Detector(
        "phone",
        r"(?:(?:\+|00)86[ \-]?)?1[3-9][0-9](?:[ \-]?[0-9]{4}){2}",
        r"(?<![0-9A-Za-z_.\-+])",
        _NOT_BEFORE_NUM,
        hint=r"[0-9]{4}[ \-]?[0-9]{4}",
    ),
    Detector(
        "mac",
        rf"{_HEX}{{2}}([:\-]){_HEX}{{2}}(?:\1{_HEX}{{2}}){{4}}|{_HEX}{{4}}\.{_HEX}{{4}}\.{_HEX}{{4}}",
        r"(?<![0-9A-Za-z_:.\-])",
        r"(?![0-9A-Za-z_]|[:.\-][0-9A-Fa-f])",
        hint=rf"{_HEX}{{2}}[:\-]{_HEX}{{2}}|{_HEX}{{4}}\.{_HEX}{{4}}",
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
    ),
    Detector(
        "ip",
        rf"{_OCTET}(?:\.{_OCTET}){{3}}",
        r"(?<![0-9A-Za-z_.])",
        r"(?![0-9A-Za-z_]|\.[0-9])",
        hint=r"[0-9]\.[0-9]{1,3}\.[0-9]",
    ),
    Detector(
        "passport", r"[EGDSP][0-9]{8}|E[A-HJ-NP-Z][0-9]{7}|[DPS]E[0-9]{7}", hint="[DEGPS][0-9A-Z][0-9]{7}"
    ),
    Detector(
        "plate",
        # new-energy (D/F + 5) before the ordinary 5-character form, which would match its prefix
        rf"[{_PROVINCES}]{_PLATE_LETTER}[·• \-]?(?:[DF][A-HJ-NP-Z0-9][0-9]{{4}}|[0-9]{{5}}[DF]"
        rf"|[A-HJ-NP-Z0-9]{{4}}[A-HJ-NP-Z0-9挂学警])",
        before="",
        after=r"(?![0-9A-Za-z])",
        hint=f"[{_PROVINCES}]{_PLATE_LETTER}",
    ),
)

MASKS: dict[PiiType, Masker] = {
    "url": _RegexMask(r"^((?:(?:https?|ftp)://|www\.)[^/?#]).*$", r"\1***"),
    "email": _RegexMask(r"^([^@])[^@]*@", r"\1***@"),
    "id_card": keep_ends(3, 4),
    "bank_card": keep_ends(4, 4),
    "vin": keep_ends(3, 4),
    "imei": keep_ends(0, 4),
    "phone": _RegexMask(r"(1[3-9][0-9])([ \-]?)[0-9]{4}([ \-]?)([0-9]{4})$", r"\1\2****\3\4"),
    "mac": keep_ends(8, 0),
    "ip": keep_ends(0, 0),
    "passport": keep_ends(1, 3),
    "plate": keep_ends(2, 1),
}


@dataclass(frozen=True)
class ScanConfig:
    """What one desensitize step does, in plain values (shipped to the Python workers)."""

    types: tuple[PiiType, ...]
    actions: tuple[tuple[PiiType, Action], ...]
    salt: str

    def action(self, pii: PiiType) -> Action:
        return dict(self.actions)[pii]


_COMPILED: dict[ScanConfig, list[tuple[Detector, re.Pattern[str], re.Pattern[str]]]] = {}


def _compiled(cfg: ScanConfig) -> list[tuple[Detector, re.Pattern[str], re.Pattern[str]]]:
    out = _COMPILED.get(cfg)
    if out is None:
        enabled = set(cfg.types)
        out = _COMPILED[cfg] = [
            (d, re.compile(d.hint or d.body), re.compile(d.pattern)) for d in DETECTORS if d.pii in enabled
        ]
    return out


def _replacement(cfg: ScanConfig, pii: PiiType, m: str) -> str:
    act = cfg.action(pii)
    tag = pii.upper()
    if act == "placeholder":
        return f"[{tag}]"
    if act == "hash":
        return f"[{tag}:{hashlib.sha256((cfg.salt + m).encode('utf-8')).hexdigest()[:16]}]"
    return MASKS[pii](m)


def desensitize_text(text: str, cfg: ScanConfig, counts: dict[PiiType, int]) -> str:
    """``text`` with every validated PII match rewritten per ``cfg``; adds the matches per type to ``counts``."""
    for det, hint, pattern in _compiled(cfg):
        if not hint.search(text):
            continue
        found = [m.group(0) for m in pattern.finditer(text)]
        if det.valid is not None:
            found = [m for m in found if det.valid(m)]
        if not found:
            continue
        counts[det.pii] = counts.get(det.pii, 0) + len(found)
        if cfg.action(det.pii) == "drop":
            continue
        for m in dict.fromkeys(found):
            rep = _replacement(cfg, det.pii, m)
            text = re.sub(f"{det.before}{re.escape(m)}{det.after}", lambda _, r=rep: r, text)
    return text


def _scan_udf(cfg: ScanConfig) -> Any:
    """A pandas UDF: array<string> -> struct<values: array<string>, counts: array<long>> (per cfg.types)."""
    import pandas as pd

    def pii_scan(batch: pd.Series) -> pd.DataFrame:
        out_values, out_counts = [], []
        for values in batch:
            counts: dict[PiiType, int] = {}
            if values is None:
                out_values.append(None)
            else:
                out_values.append([None if v is None else desensitize_text(v, cfg, counts) for v in values])
            out_counts.append([counts.get(t, 0) for t in cfg.types])
        return pd.DataFrame({"values": out_values, "counts": out_counts})

    out_type = T.StructType(
        [
            T.StructField("values", T.ArrayType(T.StringType())),
            T.StructField("counts", T.ArrayType(T.LongType())),
        ]
    )
    # The module postpones annotations (strings); pandas_udf reads them to pick the UDF kind.
    pii_scan.__annotations__ = {"batch": pd.Series, "return": pd.DataFrame}
    return F.pandas_udf(out_type)(pii_scan)  # type: ignore[call-overload]


@register
class Desensitizer(Operator):
    """Find personal data (phone, ID card, bank card, e-mail, URL, IP, MAC, IMEI, passport, plate, VIN) and
    mask it, replace it with a typed placeholder or a salted hash, or drop the record."""

    row_local = True

    @property
    def fusable(self) -> bool:
        return False  # a pandas UDF: runs as a step of its own (see Operator.fusable)

    name = "desensitize"

    class Params(OperatorParams):
        types: list[PiiType] = Field(
            default_factory=lambda: list(ALL_TYPES),
            description="PII types to look for: " + ", ".join(ALL_TYPES) + ".",
        )
        default_action: Action = Field(
            default="mask",
            description="What to do with found PII: mask (keep a few characters, e.g. 138****5678), "
            "placeholder ([PHONE]), hash ([PHONE:<salted sha256 prefix>]) or drop (drop the record).",
        )
        actions: dict[PiiType, Action] = Field(
            default_factory=dict,
            description="Per-type action overriding default_action, e.g. {id_card: drop}.",
        )
        salt: str = Field(
            default="forgeflow",
            description="Salt for the hash action; set a secret one so hashes cannot be reversed by "
            "hashing every phone number.",
        )

    params: Params

    def action(self, pii: PiiType) -> Action:
        """The action for one PII type."""
        return self.params.actions.get(pii, self.params.default_action)

    def writes(self, ctx: OperatorContext) -> tuple[str, ...]:
        return self.columns(ctx)

    def config(self) -> ScanConfig:
        types = tuple(dict.fromkeys(self.params.types))
        return ScanConfig(types, tuple((t, self.action(t)) for t in types), self.params.salt)

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        types = {f.name: f.dataType for f in df.schema.fields}
        cfg = self.config()
        udf = _scan_udf(cfg)
        out = df
        scanned = []
        for c in self.columns(ctx):
            name = f"_pii_{c}"
            out = out.withColumn(name, udf(text_values(c, types[c])))
            scanned.append(name)
            out = out.withColumn(c, _put_back(F.col(c), types[c], F.col(name)["values"]))
        stats = {
            STAT + pii: reduce(lambda a, b: a + b, [F.col(s)["counts"][i] for s in scanned])
            for i, pii in enumerate(cfg.types)
        }
        out = out.withColumns(stats) if stats else out
        drop_types = [p for p in cfg.types if self.action(p) == "drop"]
        if drop_types:
            hit = [F.when(F.col(STAT + p) > 0, F.lit(p)) for p in drop_types]
            reasons = F.concat_ws(", ", *hit)
            out = out.withColumn(KEEP, reasons == "").withColumn(
                NOTE, F.when(reasons != "", F.concat(F.lit("contains "), reasons))
            )
        return out.drop(*scanned)
