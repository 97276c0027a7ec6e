"""The publication gate on a quality record: pass, block, override with a recorded reason."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from tasks.quality import QualityBlocked, failed_expectations, gate, require_publishable

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def quality(*expectations: dict[str, Any]) -> dict[str, Any]:
    failed = sum(not e["success"] for e in expectations)
    return {
        "summary": {"records": 10},
        "validation": {
            "suite": "forgeflow-sft",
            "success": failed == 0,
            "evaluated": len(expectations),
            "failed": failed,
            "expectations": list(expectations),
        },
    }


OK = {
    "name": "expect_column_values_to_be_unique",
    "title": "unique id",
    "column": "id",
    "success": True,
    "unexpected_count": 0,
    "examples": [],
    "error": None,
    "observed": None,
}
PII = {
    "name": "expect_column_values_to_not_match_regex_list",
    "title": "no personal data left in target",
    "column": "target",
    "success": False,
    "unexpected_count": 2,
    "examples": ["r2", "r9"],
    "error": None,
    "observed": None,
}
SCHEMA = {
    "name": "expect_table_columns_to_match_set",
    "title": "schema: exactly the canonical sft columns",
    "column": None,
    "success": False,
    "unexpected_count": None,
    "examples": [],
    "error": None,
    "observed": ["id", "text"],
}


def test_passed_suite_is_allowed_without_override() -> None:
    d = gate(quality(OK), None, None, now=NOW)
    assert d == {"allowed": True, "reason": "suite forgeflow-sft passed", "failed": [], "override": None}
    # a reason given anyway is not recorded: nothing was overridden
    assert gate(quality(OK), "just because", "bob", now=NOW)["override"] is None


def test_failed_suite_blocks_and_names_the_expectations() -> None:
    d = gate(quality(OK, PII, SCHEMA), None, "bob", now=NOW)
    assert d["allowed"] is False and d["override"] is None
    assert d["reason"] == "suite forgeflow-sft failed 2 of 3 expectations"
    assert d["failed"] == [
        "no personal data left in target: 2 unexpected (e.g. id r2, r9)",
        "schema: exactly the canonical sft columns: observed ['id', 'text']",
    ]
    with pytest.raises(QualityBlocked) as err:
        require_publishable(quality(OK, PII, SCHEMA), None, "bob", now=NOW)
    msg = str(err.value)
    assert "no personal data left in target" in msg and "schema: exactly the canonical sft columns" in msg
    assert "unique id" not in msg
    assert err.value.decision["allowed"] is False


@pytest.mark.parametrize("reason", [None, "", "   \n"])
def test_blank_override_reason_does_not_count(reason: str | None) -> None:
    with pytest.raises(QualityBlocked):
        require_publishable(quality(PII), reason, "bob", now=NOW)


def test_override_with_a_reason_is_recorded() -> None:
    d = require_publishable(quality(PII), "  hotline numbers are public  ", "alice", now=NOW)
    assert d["allowed"] is True
    assert d["override"] == {
        "reason": "hotline numbers are public",
        "user": "alice",
        "at": "2026-01-02T03:04:05+00:00",
    }
    assert d["failed"] == ["no personal data left in target: 2 unexpected (e.g. id r2, r9)"]
    assert "overridden by alice: hotline numbers are public" in d["reason"]
    assert gate(quality(PII), "ok", None, now=NOW)["override"]["user"] == "unknown"


def test_no_suite_result_blocks_unless_overridden() -> None:
    for q in (None, {}, {"summary": {}}):
        d = gate(q, None, "bob", now=NOW)
        assert d["allowed"] is False and "no expectation suite" in d["reason"]
    assert gate(None, "legacy version, checked by hand", "bob", now=NOW)["allowed"] is True


def test_errors_are_named() -> None:
    broken = {**PII, "unexpected_count": None, "error": "column target__chars does not exist"}
    assert failed_expectations(quality(broken)) == [
        "no personal data left in target: error column target__chars does not exist"
    ]


def test_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, tasks.quality; heavy = {'pyspark', 'pandas', 'great_expectations', 'numpy'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
