"""User regex replacement (Spark SQL) and date format unification (pandas UDF: dates are checked on a calendar)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pyspark.sql import Column
from pyspark.sql import functions as F

from spark_ops.operators.base import Mapper, OperatorParams, register
from spark_ops.operators.regex import check_java_regex


class ReplaceRule(BaseModel):
    """One replacement: every match of ``pattern`` becomes ``replacement``."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(
        description="A Java regular expression (Spark's regexp_replace), e.g. '\\\\s*[（(]完[）)]$'."
    )
    replacement: str = Field(
        default="", description="Replacement; $1, $2 ... insert groups; write \\\\$ for a $."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        return check_java_regex(v)


@register
class RegexReplacer(Mapper):
    """Apply user rules in order: each is a regular expression and its replacement."""

    name = "regex_replace"

    class Params(OperatorParams):
        rules: list[ReplaceRule] = Field(
            min_length=1, description="Rules applied in order, {pattern, replacement}."
        )

        @field_validator("rules")
        @classmethod
        def _groups_exist(cls, v: list[ReplaceRule]) -> list[ReplaceRule]:
            for i, r in enumerate(v):
                groups = _groups(r.pattern)
                refs = [int(g) for g in re.findall(r"(?<!\\)\$(\d)", r.replacement)]
                if any(g > groups for g in refs):
                    raise ValueError(
                        f"rules[{i}]: replacement {r.replacement!r} refers to group ${max(refs)} but pattern "
                        f"{r.pattern!r} has {groups} group(s)"
                    )
            return v

    params: Params

    def rewrite(self, text: Column) -> Column:
        for r in self.params.rules:
            text = F.regexp_replace(text, r.pattern, r.replacement)
        return text


def _groups(pattern: str) -> int:
    """Capturing groups of a pattern (Java-only constructs aside, the count is the same as Python's)."""
    try:
        return re.compile(pattern).groups
    except re.error:
        return pattern.count("(") - pattern.count("(?") - pattern.count("\\(")


_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [
            ("January", "Jan"),
            ("February", "Feb"),
            ("March", "Mar"),
            ("April", "Apr"),
            ("May",),
            ("June", "Jun"),
            ("July", "Jul"),
            ("August", "Aug"),
            ("September", "Sept", "Sep"),
            ("October", "Oct"),
            ("November", "Nov"),
            ("December", "Dec"),
        ]
    )
    for m in names
}
_MONTH = "(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_YEAR = r"(1[5-9]\d\d|2[01]\d\d)"
# Not glued to other digits, dots or separators: keeps versions (1.2.2024.3), ranges and serials out.
_LEFT = r"(?<![\d./\-])"
_RIGHT = r"(?![\d]|[./\-]\d)"
DATE_PATTERNS: dict[str, re.Pattern[str]] = {
    "cjk": re.compile(rf"(?<!\d){_YEAR}\s*年\s*(\d{{1,2}})\s*月\s*(\d{{1,2}})\s*[日号](?!\d)"),
    "ymd": re.compile(rf"{_LEFT}{_YEAR}([-/.])(\d{{1,2}})\2(\d{{1,2}}){_RIGHT}"),
    "month_day_year": re.compile(rf"\b{_MONTH}\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+{_YEAR}\b"),
    "day_month_year": re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}\b"),
    "numeric_dmy_or_mdy": re.compile(rf"{_LEFT}(\d{{1,2}})([/.\-])(\d{{1,2}})\2{_YEAR}{_RIGHT}"),
}


def _format(fmt: str, y: str | int, m: str | int, d: str | int, original: str) -> str:
    try:
        return date(int(y), int(m), int(d)).strftime(fmt)
    except ValueError:  # 2024/13/45, 2023年2月29日: not a date, leave it as written
        return original


def _unify_dates(fmt: str, numeric_order: str, text: str) -> str:
    if not any(ch.isdigit() for ch in text):
        return text
    text = DATE_PATTERNS["cjk"].sub(lambda m: _format(fmt, m[1], m[2], m[3], m[0]), text)
    text = DATE_PATTERNS["ymd"].sub(lambda m: _format(fmt, m[1], m[3], m[4], m[0]), text)
    text = DATE_PATTERNS["month_day_year"].sub(lambda m: _format(fmt, m[3], _MONTHS[m[1]], m[2], m[0]), text)
    text = DATE_PATTERNS["day_month_year"].sub(lambda m: _format(fmt, m[3], _MONTHS[m[2]], m[1], m[0]), text)
    if numeric_order == "mdy":
        text = DATE_PATTERNS["numeric_dmy_or_mdy"].sub(lambda m: _format(fmt, m[4], m[1], m[3], m[0]), text)
    elif numeric_order == "dmy":
        text = DATE_PATTERNS["numeric_dmy_or_mdy"].sub(lambda m: _format(fmt, m[4], m[3], m[1], m[0]), text)
    return text


@register
class DateNormalizer(Mapper):
    """Rewrite dates to one format: 2024年3月5日, 2024/3/5, 2024.3.5, March 5, 2024, 5 March 2024 -> 2024-03-05.

    Only real calendar dates with a year 1500-2199 change; 2024/13/45, 3/4 cups, versions like 1.2.3 and
    numbers glued to other digits stay. Runs in a pandas UDF because each candidate is checked on a calendar.
    """

    name = "normalize_dates"

    class Params(OperatorParams):
        target_format: str = Field(
            default="%Y-%m-%d",
            description="strftime format of the result, e.g. '%Y-%m-%d' or '%Y年%m月%d日'.",
        )
        numeric_order: Literal["none", "mdy", "dmy"] = Field(
            default="none",
            description="How to read 03/05/2024: 'mdy' (US: March 5), 'dmy' (Europe: 3 May) or 'none' "
            "(ambiguous: leave such dates alone).",
        )

        @field_validator("target_format")
        @classmethod
        def _has_fields(cls, v: str) -> str:
            if not all(f in v for f in ("%Y", "%m", "%d")) and not all(f in v for f in ("%Y", "%b", "%d")):
                raise ValueError(f"target_format {v!r} must contain %Y, %m (or %b) and %d")
            return v

    params: Params

    def rewrite(self, text: Column) -> Column:
        return text

    def python_rewrite(self) -> Callable[[str], str] | None:
        return partial(_unify_dates, self.params.target_format, self.params.numeric_order)
