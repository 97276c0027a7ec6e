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

DATA_DIR = "data"
MANIFEST = "manifest.json"
QUARANTINE_DIR = "quarantine"
