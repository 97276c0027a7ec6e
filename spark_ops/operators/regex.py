"""Checking user regular expressions before Spark runs them (Spark uses Java's java.util.regex syntax)."""

from __future__ import annotations

import re

# Java constructs Python's re lacks, replaced by a stand-in of the same shape so that the rest of the
# pattern (groups, classes, repeats) is still checked: \p{IsHan} / \P{L}, \x{1F600}, possessive repeats,
# \Q...\E quoting, atomic groups (Python 3.11 has them, but keep older syntax checks lenient).
_JAVA_ONLY = [
    (re.compile(r"\\[pP]\{[A-Za-z_=]+\}|\\[pP][A-Z]"), "a"),
    (re.compile(r"\\x\{[0-9A-Fa-f]{1,6}\}"), "a"),
    (re.compile(r"\\Q.*?(?:\\E|$)", re.S), "a"),
    (re.compile(r"(?<=[*+?}])\+"), ""),
]


def check_java_regex(pattern: str, where: str = "pattern") -> str:
    """Return ``pattern`` if it looks like a valid Java regex; otherwise raise ValueError naming ``where``.

    Python's ``re`` is close to Java's syntax and catches what users get wrong (unbalanced parentheses or
    brackets, bad repeats, dangling escapes); Java-only constructs are accepted.
    """
    probe = pattern
    for rx, stand_in in _JAVA_ONLY:
        probe = rx.sub(stand_in, probe)
    try:
        re.compile(probe)
    except re.error as e:
        raise ValueError(f"{where}: invalid regular expression {pattern!r}: {e}") from None
    return pattern
