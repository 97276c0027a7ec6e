"""Canonical record schemas (DESIGN.md, data contracts) and the dataset-version layout in the lake.

A dataset version directory holds ``data/*.parquet`` (the records), ``manifest.json`` (counts, schema,
operator statistics, lineage) and, when records were rejected on import, ``quarantine/*.jsonl``
(each with source file, line number and reason).

Columns by usage (every record also has ``id`` — a stable hash of its content — and ``meta``,
a struct of ``source: string`` and ``tags: array<string>``):
- pretrain: ``text: string``
- sft, model_test, rl: ``system: string (nullable)``, ``context: array<string>`` (alternating turns, the
  last one a user turn), ``target: string`` (the answer; reasoning as ``<think>...</think>answer``)
- reward_model: ``system``, ``context``, ``answers: array<struct<text: string, score: double, rank: int>>``
  (2 to 5 answers, distinct ranks, rank 1 the best; a higher score never has a worse rank)

Vision data (modality ``image``, usages sft, rl and model_test) adds ``image: string`` after ``context``: the
absolute path or URI of the image the question is about. Text schemas are unchanged.
"""

from __future__ import annotations

META_FIELDS = ("source", "tags")

COLUMNS: dict[str, tuple[str, ...]] = {
    "pretrain": ("id", "text", "meta"),
    "sft": ("id", "system", "context", "target", "meta"),
    "model_test": ("id", "system", "context", "target", "meta"),
    "rl": ("id", "system", "context", "target", "meta"),
    "reward_model": ("id", "system", "context", "answers", "meta"),
}

IMAGE_COLUMN = "image"
MAX_ANSWERS = 5


def columns(usage: str, modality: str = "text") -> tuple[str, ...]:
    """The columns of ``usage``'s records; vision data (``modality="image"``) adds ``image`` after context."""
    cols = COLUMNS[usage]
    if modality != "image":
        return cols
    at = cols.index("context") + 1
    return (*cols[:at], IMAGE_COLUMN, *cols[at:])


DATA_DIR = "data"
MANIFEST = "manifest.json"
QUARANTINE_DIR = "quarantine"
