"""Model references: turn ``models:/name/latest`` into a concrete version so a run records what it used."""

from __future__ import annotations

from tasks.registry import MODEL_REF, resolve_version


def pin_model_ref(ref: str) -> str:
    """``models:/name/latest`` → ``models:/name/<n>``; other references pass through unchanged."""
    m = MODEL_REF.match(ref)
    if not m:
        return ref
    return f"models:/{m['name']}/{resolve_version(m['name'], m['version'])}"


def service_model_name(ref: str) -> str:
    """A name for the model in the OpenAI API: the registered name, or the directory name."""
    m = MODEL_REF.match(ref)
    return m["name"] if m else ref.rstrip("/").rsplit("/", 1)[-1]
