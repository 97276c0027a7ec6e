"""The publication gate: a version whose expectation suite failed is not published unless overridden.

``quality`` is what the quality engine (``python -m spark_ops.quality``) records in result.json and the
catalogue keeps in ``dataset_versions.quality``: its ``validation`` holds the suite result. An override
needs a non-empty reason; the decision records who gave it and when, so the catalogue says why a failing
version went out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


class QualityBlocked(Exception):
    """Publication refused: the expectation suite failed (or never ran) and no override reason was given."""

    def __init__(self, message: str, decision: dict[str, Any]):
        super().__init__(message)
        self.decision = decision


def failed_expectations(quality: dict[str, Any] | None) -> list[str]:
    """Human names of the failed expectations: 'title [column]: N unexpected' (or the error)."""
    validation = (quality or {}).get("validation") or {}
    out = []
    for e in validation.get("expectations", []):
        if e.get("success"):
            continue
        name = e.get("title") or e.get("name") or "expectation"
        if e.get("column") and e["column"] not in name:
            name += f" [{e['column']}]"
        if e.get("error"):
            name += f": error {e['error']}"
        elif e.get("unexpected_count") is not None:
            name += f": {e['unexpected_count']} unexpected"
            if e.get("examples"):
                name += f" (e.g. id {', '.join(map(str, e['examples'][:3]))})"
        elif e.get("observed") is not None:
            name += f": observed {e['observed']}"
        out.append(name)
    return out


def gate(
    quality: dict[str, Any] | None,
    override_reason: str | None,
    user: str | None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The publication decision: ``{allowed, reason, failed: [names], override: {reason, user, at} | None}``.

    A passed suite is allowed (an override reason is then not needed and not recorded). A failed suite, or
    a quality record without a suite result, is blocked unless ``override_reason`` is non-blank.
    """
    validation = (quality or {}).get("validation")
    reason_given = (override_reason or "").strip()
    if validation is not None and validation.get("success") is True:
        return {
            "allowed": True,
            "reason": f"suite {validation.get('suite', '')} passed".strip(),
            "failed": [],
            "override": None,
        }
    if validation is None:
        failed = ["no expectation suite result: run the quality step first"]
        problem = "no expectation suite was run on this version"
    else:
        failed = failed_expectations(quality) or ["the suite reported failure"]
        problem = (
            f"suite {validation.get('suite', '')} failed {validation.get('failed', len(failed))} of "
            f"{validation.get('evaluated', '?')} expectations"
        )
    if not reason_given:
        return {"allowed": False, "reason": problem, "failed": failed, "override": None}
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    return {
        "allowed": True,
        "reason": f"{problem}; overridden by {user or 'unknown user'}: {reason_given}",
        "failed": failed,
        "override": {"reason": reason_given, "user": user or "unknown", "at": at},
    }


def blocked_message(decision: dict[str, Any]) -> str:
    lines = [f"publication blocked: {decision['reason']}. Failed expectations:"]
    lines += [f"  - {f}" for f in decision["failed"]]
    lines.append(
        "Fix the data (e.g. run the desensitize or empty_filter operators) or publish with an "
        "override reason, which is recorded with your name."
    )
    return "\n".join(lines)


def require_publishable(
    quality: dict[str, Any] | None,
    override_reason: str | None,
    user: str | None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """:func:`gate`, raising :class:`QualityBlocked` (naming the failed expectations) when not allowed."""
    decision = gate(quality, override_reason, user, now=now)
    if not decision["allowed"]:
        raise QualityBlocked(blocked_message(decision), decision)
    return decision
