"""Personal-data desensitisation: find PII by regex in the JVM, validate checksums in Spark SQL, then rewrite.

Every PII type is one or more *detectors*: a Java regex (with look-arounds so that a phone number inside a
longer digit run is not a phone number) and, where the format has one, a checksum written as Spark SQL
arithmetic (GB 11643 for ID cards, Luhn for bank cards and IMEIs, the ISO 3779 check digit for VINs). Nothing
runs row-at-a-time in Python: candidates come from ``regexp_extract_all``, validation is ``filter`` with a
higher-order arithmetic lambda, and only the validated strings are replaced, each by a quoted regex with the
same look-arounds, so a valid card number that also occurs inside a longer serial is not touched there.

Detectors run in a fixed order (URLs and e-mails first, since they contain digits; long digit runs before
shorter ones) on the text as already rewritten by the previous ones, so one span is never reported twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any, Literal

from pydantic import Field
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_ops.canonical import text_values
from spark_ops.operators.base import KEEP, NOTE, STAT, Operator, OperatorContext, OperatorParams, register

PiiType = Literal[
    "url", "email", "id_card", "bank_card", "vin", "imei", "phone", "mac", "ip", "passport", "plate"
]
Action = Literal["mask", "placeholder", "hash", "drop"]
ALL_TYPES: tuple[PiiType, ...] = (
    "url", "email", "id_card", "bank_card", "vin", "imei", "phone", "mac", "ip", "passport", "plate",
)  # fmt: skip

Validator = Callable[[Column], Column]
Masker = Callable[[Column], Column]

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


def _digit(s: Column, i: Column) -> Column:
    """The i-th (1-based) character of ``s`` as an int; callers only index digit positions (ANSI-safe)."""
    return s.substr(i, F.lit(1)).cast("int")


def luhn_valid(m: Column) -> Column:
    """Luhn check over the digits of ``m`` (separators ignored): bank cards and IMEIs."""
    d = F.reverse(F.regexp_replace(m, "[^0-9]", ""))

    def step(acc: Column, i: Column) -> Column:
        v = _digit(d, i)
        doubled = F.when(v * 2 > 9, v * 2 - 9).otherwise(v * 2)
        return acc + F.when(i % 2 == 0, doubled).otherwise(v)

    return F.aggregate(F.sequence(F.lit(1), F.length(d)), F.lit(0), step) % 10 == 0


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _int_array(values: tuple[int, ...]) -> Column:
    # Built per call: a Column needs an active SparkContext, which an import must not require.
    return F.array(*[F.lit(v) for v in values])


def id18_valid(m: Column) -> Column:
    """GB 11643-1999 check character: weighted sum of the first 17 digits mod 11 -> '10X98765432'."""
    s = F.aggregate(
        F.sequence(F.lit(1), F.lit(17)),
        F.lit(0),
        lambda acc, i: acc + _digit(m, i) * F.element_at(_int_array(_ID_WEIGHTS), i),
    )
    return F.lit("10X98765432").substr(s % 11 + 1, F.lit(1)) == F.upper(m.substr(F.lit(18), F.lit(1)))


_VIN_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin_valid(m: Column) -> Column:
    """ISO 3779 / GB 16735 check digit (position 9): transliterated weighted sum mod 11, 10 -> 'X'."""
    values = F.create_map(*[x for k, v in _VIN_VALUES.items() for x in (F.lit(k), F.lit(v))])
    weights = _int_array(_VIN_WEIGHTS)
    s = F.aggregate(
        F.sequence(F.lit(1), F.lit(17)),
        F.lit(0),
        lambda acc, i: acc + F.element_at(values, m.substr(i, F.lit(1))) * F.element_at(weights, i),
    )
    check = F.when(s % 11 == 10, F.lit("X")).otherwise((s % 11).cast("string"))
    return check == m.substr(F.lit(9), F.lit(1))


def keep_ends(head: int, tail: int) -> Masker:
    """Mask letters and digits except the first ``head`` and last ``tail`` characters; separators stay."""

    def mask(m: Column) -> Column:
        n = F.length(m)
        middle = F.regexp_replace(m.substr(F.lit(head + 1), n - head - tail), "[0-9A-Za-z]", "*")
        end = m.substr(n - tail + 1, F.lit(tail)) if tail else F.lit("")
        return F.concat(m.substr(F.lit(1), F.lit(head)), middle, end)

    return mask


def _regex_mask(pattern: str, replacement: str) -> Masker:
    return lambda m: F.regexp_replace(m, pattern, replacement)


@dataclass(frozen=True)
class Detector:
    """One regex for one PII type; ``body`` is what gets replaced, the look-arounds only anchor it."""

    pii: PiiType
    body: str
    before: str = _NOT_AFTER_WORD
    after: str = _NOT_BEFORE_WORD
    valid: Validator | None = None
    # A simple regex (valid in Python and Java) that every match contains: a cheap first pass over the
    # original text, so the look-around-heavy pattern only scans the texts that can hold a match at all.
    hint: str | None = None

    @property
    def pattern(self) -> str:
        return f"{self.before}(?:{self.body}){self.after}"


_HINT_CACHE: dict[tuple[str, ...], list] = {}


def hint_mask(text: str | None, hints: tuple[str, ...]) -> int:
    """Bit k set when ``hints[k]`` occurs in ``text`` (Python ``re``: its prefix scan skips the positions
    that cannot start a match, which Java's regex engine tries one by one)."""
    if not text:
        return 0
    pats = _HINT_CACHE.get(hints)
    if pats is None:
        import re

        pats = _HINT_CACHE[hints] = [re.compile(h) for h in hints]
    mask = 0
    for k, p in enumerate(pats):
        if p.search(text):
            mask |= 1 << k
    return mask


def _hint_mask_udf(hints: tuple[str, ...]) -> Any:
    """A pandas UDF: string -> long, the detectors whose hint the text holds (see :func:`hint_mask`)."""
    import pandas as pd

    def pii_hints(batch: pd.Series) -> pd.Series:
        return batch.map(lambda t: hint_mask(t, hints)).astype("int64")

    # The module postpones annotations (strings); pandas_udf reads them to pick the UDF kind.
    pii_hints.__annotations__ = {"batch": pd.Series, "return": pd.Series}
    return F.pandas_udf(T.LongType())(pii_hints)  # type: ignore[call-overload]


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
    "url": _regex_mask(r"^((?:(?:https?|ftp)://|www\.)[^/?#]).*$", "$1***"),
    "email": _regex_mask(r"^([^@])[^@]*@", "$1***@"),
    "id_card": keep_ends(3, 4),
    "bank_card": keep_ends(4, 4),
    "vin": keep_ends(3, 4),
    "imei": keep_ends(0, 4),
    "phone": _regex_mask(r"(1[3-9][0-9])([ \-]?)[0-9]{4}([ \-]?)([0-9]{4})$", "$1$2****$3$4"),
    "mac": keep_ends(8, 0),
    "ip": keep_ends(0, 0),
    "passport": keep_ends(1, 3),
    "plate": keep_ends(2, 1),
}


def _matches(text: Column, pattern: Column, det: Detector, gated: Column) -> Column:
    """Validated matches of ``det`` in ``text``; an empty array (never null) for null text or where ``gated``
    says the text holds no hint of the detector."""
    text = F.coalesce(text, F.lit(""))
    found = F.regexp_extract_all(text, pattern, F.lit(0))
    if det.valid is not None:
        found = F.filter(found, det.valid)
    return F.when(gated, found).otherwise(F.array().cast("array<string>"))


def _matcher(pattern: Column, det: Detector, gated: Column) -> Callable[[Column], Column]:
    # A factory, not a lambda with default arguments: PySpark reads a lambda's parameter count.
    return lambda s: _matches(s, pattern, det, gated)


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

    def _replacement(self, pii: PiiType, m: Column) -> Column:
        act = self.action(pii)
        tag = pii.upper()
        if act == "placeholder":
            return F.lit(f"[{tag}]")
        if act == "hash":
            digest = F.substring(F.sha2(F.concat(F.lit(self.params.salt), m), 256), 1, 16)
            return F.concat(F.lit(f"[{tag}:"), digest, F.lit("]"))
        return MASKS[pii](m)

    def _rewrite(self, det: Detector, text: Column, found: Column) -> Column:
        """``text`` with every validated match in ``found`` replaced, anchored by the detector's look-arounds."""
        if self.action(det.pii) == "drop":
            return text

        def one(acc: Column, m: Column) -> Column:
            pattern = F.concat(F.lit(det.before + r"\Q"), m, F.lit(r"\E" + det.after))
            # $ and \ are special in a Java replacement string; masked URLs may keep a $.
            rep = F.regexp_replace(self._replacement(det.pii, m), r"([\\$])", r"\\$1")
            return F.regexp_replace(acc, pattern, rep)

        return F.when(F.size(found) > 0, F.aggregate(F.array_distinct(found), text, one)).otherwise(text)

    def _rewrite_column(self, det: Detector, col: Column, dtype: T.DataType, found: Column) -> Column:
        """Rewrite a text column of any canonical shape; ``found`` holds the matches per text value."""
        if isinstance(dtype, T.StringType):
            return self._rewrite(det, col, found[0])
        if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.StringType):
            return F.transform(col, lambda s, i: self._rewrite(det, s, found[i]))
        return F.transform(col, lambda a, i: a.withField("text", self._rewrite(det, a["text"], found[i])))

    def annotate(self, df: DataFrame, ctx: OperatorContext) -> DataFrame:
        types = {f.name: f.dataType for f in df.schema.fields}
        enabled = set(self.params.types)
        counts: dict[PiiType, list[str]] = {}
        detectors = tuple(d for d in DETECTORS if d.pii in enabled)
        # Every detector has a hint: a cheap pattern each of its matches contains. One vectorised pass finds
        # which hints a text holds (a bit per detector); a detector's look-around regex then scans only the
        # texts holding its hint -- for most texts, no detector runs at all.
        hints = tuple(d.hint or d.body for d in detectors)
        masks = _hint_mask_udf(hints)
        gates = {c: F.concat_ws("\n", text_values(c, types[c])) for c in self.columns(ctx)}
        out = df.withColumns({f"_pii_gate_{c}": masks(g) for c, g in gates.items()})
        for k, det in enumerate(detectors):
            for c in self.columns(ctx):
                dtype = types[c]
                found_col = f"_pii{k}_{c}"
                pattern = F.lit(det.pattern)
                gated = (F.col(f"_pii_gate_{c}").bitwiseAND(F.lit(1 << k))) != 0
                # array<array<string>>: validated matches per text value (one value for a string column)
                found = F.transform(
                    F.coalesce(text_values(c, dtype), F.array().cast("array<string>")),
                    _matcher(pattern, det, gated),
                )
                # Materialised as a column so the (costly) regex scan runs once for both the rewrite and
                # the counters; Spark does not collapse projections that would duplicate it.
                out = out.withColumn(found_col, found)
                fc = F.col(found_col)
                # ``found`` is empty for a text without the hint, and an empty ``found`` leaves it unchanged
                new = self._rewrite_column(det, F.col(c), dtype, fc)
                out = out.withColumn(c, new)
                counts.setdefault(det.pii, []).append(found_col)
        stat_exprs: dict[str, Column] = {}
        for pii, cols in counts.items():
            per_value = [F.aggregate(F.col(fc), F.lit(0), lambda acc, a: acc + F.size(a)) for fc in cols]
            stat_exprs[STAT + pii] = reduce(lambda a, b: a + b, per_value)
        out = out.withColumns(stat_exprs) if stat_exprs else out
        found_cols = [fc for cols in counts.values() for fc in cols]
        drop_types = [p for p in counts if self.action(p) == "drop"]
        if drop_types:
            hit = [F.when(F.col(STAT + p) > 0, F.lit(p)) for p in drop_types]
            reasons = F.concat_ws(", ", *hit)
            out = out.withColumn(KEEP, reasons == "").withColumn(
                NOTE, F.when(reasons != "", F.concat(F.lit("contains "), reasons))
            )
        return out.drop(*found_cols, *[f"_pii_gate_{c}" for c in gates])
