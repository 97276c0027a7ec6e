"""Distillation: SFT of the student on the answers a teacher model writes for the training questions.

Steps (in ``Distill.source``, before the tokenizer and the model exist):

1. every record of the SFT dataset (its system prompt and turns, without the answer) goes to the teacher,
   any OpenAI-compatible endpoint (``spec.teacher``), ``distill.concurrency`` requests at a time, with
   the evaluation engine's client, timeouts and retries (trainers/evaluate.py);
2. each answer is checked by ``distill.rules`` (``check_answer``): not empty, within the length bounds,
   not cut at max_tokens (finish_reason 'length'), no refusal pattern, not looping (repeated-text
   ratio), and optionally in the question's language. A failed request is a reject too;
3. the accepted records (canonical SFT rows, the teacher's answer as target) are written to
   ``<output_uri>/teacher/`` as a dataset version directory (``data/part-0.parquet`` + ``manifest.json``
   with the counts), the rejects with their reason to ``teacher/rejects.jsonl``; the counts go to
   MLflow as ``teacher_*`` metrics, both files as run artefacts;
4. fewer accepted answers than ``distill.min_accept_ratio`` of the questions fails the run, naming the
   reasons; otherwise the student trains on them like sft_full (``distill.student`` 'full') or
   sft_lora ('lora').

A retried run with the same questions, teacher and rules reuses ``teacher/`` instead of asking again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from trainers.data import ChatRecord, DataError, chat_records
from trainers.methods import SftFull, SourcedData, get_method, register

if TYPE_CHECKING:
    from tasks.specs import AnswerRules, TrainSpec
    from tasks.storage import Lake
    from trainers.evaluate import Completion

log = logging.getLogger("forgeflow.trainers.distill")

TEACHER_DIR = "teacher"
REJECTS_FILE = "rejects.jsonl"
REPEAT_WINDOW = 10  # characters per window of the repeated-text ratio
# Every reject reason, in the order the checks run (metrics report each, zeros included).
REASONS = (
    "request_failed",
    "empty",
    "truncated",
    "too_short",
    "too_long",
    "refusal",
    "repetitive",
    "language_mismatch",
)


# ---------------------------------------------------------------- answer rules (pure)


def language_of(
    text: str, zh_min_ratio: float = 0.3, en_min_ratio: float = 0.8, kana_max: float = 0.05
) -> str:
    """'zh', 'en' or 'other' from character classes, with the tag_language operator's rule and defaults."""
    letters = han = kana = latin = 0
    for ch in text:
        if not ch.isalpha():
            continue
        letters += 1
        name = unicodedata.name(ch, "")
        if name.startswith("CJK UNIFIED IDEOGRAPH") or name.startswith("CJK COMPATIBILITY IDEOGRAPH"):
            han += 1
        elif name.startswith(("HIRAGANA", "KATAKANA")):
            kana += 1
        elif name.startswith("LATIN"):
            latin += 1
    if not letters:
        return "other"
    if han and han / letters >= zh_min_ratio and kana / letters <= kana_max:
        return "zh"
    if latin and latin / letters >= en_min_ratio:
        return "en"
    return "other"


def repeat_ratio(text: str, window: int = REPEAT_WINDOW) -> float:
    """Share of ``window``-character windows (whitespace collapsed) that occurred earlier in the text.

    Natural prose, Chinese or English, scores near 0; an answer stuck in a loop near 1.
    """
    s = " ".join(text.split())
    n = len(s) - window + 1
    if n < 2:
        return 0.0
    grams = [s[i : i + window] for i in range(n)]
    return 1.0 - len(set(grams)) / n


@functools.lru_cache(maxsize=16)
def _refusal_re(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


def check_answer(question: str, answer: Completion, rules: AnswerRules) -> str | None:
    """Why the teacher's ``answer`` to ``question`` cannot be training data (a REASONS entry), or None."""
    text = answer.text.strip()
    if not text:
        return "empty"
    if rules.reject_truncated and answer.finish_reason == "length":
        return "truncated"
    if len(text) < rules.min_chars:
        return "too_short"
    if len(text) > rules.max_chars:
        return "too_long"
    refusal = _refusal_re(tuple(rules.refusal_patterns))
    if refusal is not None and refusal.search(text):
        return "refusal"
    if repeat_ratio(text) > rules.max_repeat_ratio:
        return "repetitive"
    if rules.match_language and language_of(text) != language_of(question):
        return "language_mismatch"
    return None


# ---------------------------------------------------------------- asking the teacher


@dataclass
class TeacherAnswer:
    """One question's outcome, as a rejects.jsonl line when it is not accepted."""

    index: int
    id: str | None
    question: str
    answer: str | None
    finish_reason: str | None
    reason: str | None  # None: accepted
    error: str | None = None


def ask_teacher(spec: TrainSpec, records: list[ChatRecord], ids: list[str | None]) -> list[TeacherAnswer]:
    """The teacher's answer to every record, checked by the rules; in record order."""
    from trainers.evaluate import EndpointError, chat_body, complete_choice, endpoint_client

    assert spec.teacher is not None  # TrainSpec validates it for method distill
    cfg = spec.distill
    with endpoint_client(spec.teacher, cfg.concurrency) as (http, url):

        def one(i: int) -> TeacherAnswer:
            rec = records[i]
            body = chat_body(spec.teacher.model, rec.messages(with_target=False), cfg.generation)
            try:
                got = complete_choice(http, url, body)
            except EndpointError as e:
                return TeacherAnswer(i, ids[i], rec.question, None, None, "request_failed", str(e))
            reason = check_answer(rec.question, got, cfg.rules)
            return TeacherAnswer(i, ids[i], rec.question, got.text, got.finish_reason, reason)

        with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="teacher") as pool:
            return list(pool.map(one, range(len(records))))


def teacher_rows(
    spec: TrainSpec, records: list[ChatRecord], answers: list[TeacherAnswer]
) -> list[dict[str, Any]]:
    """Canonical SFT rows of the accepted answers; ``meta`` names the teacher and the original record."""
    assert spec.teacher is not None
    rows = []
    for rec, ans in zip(records, answers, strict=True):
        if ans.reason is not None or ans.answer is None:
            continue
        target = ans.answer.strip()
        content = json.dumps([rec.system, rec.context, target], ensure_ascii=False)
        tags = ["distill", *([f"origin:{ans.id}"] if ans.id else [])]
        rows.append(
            {
                "id": hashlib.sha256(content.encode()).hexdigest()[:32],
                "system": rec.system,
                "context": list(rec.context),
                "target": target,
                "meta": {"source": f"teacher:{spec.teacher.model}", "tags": tags},
            }
        )
    return rows


def fingerprint(spec: TrainSpec, records: list[ChatRecord]) -> str:
    """What the teacher data depends on: the questions, the teacher, its sampling and the rules."""
    assert spec.teacher is not None
    key = {
        "questions": [r.messages(with_target=False) for r in records],
        "teacher": {"base_url": spec.teacher.base_url, "model": spec.teacher.model},
        "generation": spec.distill.generation.model_dump(mode="json"),
        "rules": spec.distill.rules.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(key, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def teacher_metrics(manifest: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of a teacher manifest: counts, accept ratio, rejects by reason."""
    n, accepted = manifest["questions"], manifest["records"]
    metrics = {
        "teacher_questions": float(n),
        "teacher_accepted": float(accepted),
        "teacher_rejected": float(n - accepted),
        "teacher_accept_ratio": accepted / n if n else 0.0,
        "teacher_seconds": float(manifest.get("seconds", 0.0)),
    }
    metrics.update(
        {f"teacher_rejected_{r}": float(manifest["rejected_by_reason"].get(r, 0)) for r in REASONS}
    )
    return metrics


def _reused(lake: Lake, teacher_uri: str, key: str) -> tuple[dict[str, Any], str] | None:
    """The manifest and rejects of an earlier attempt that asked the same questions, if any."""
    manifest_uri = f"{teacher_uri}/manifest.json"
    if not lake.exists(manifest_uri):
        return None
    try:
        manifest = lake.read_json(manifest_uri)
        if manifest.get("fingerprint") != key:
            return None
        rejects = lake.read_text(f"{teacher_uri}/{REJECTS_FILE}")
    except Exception as e:  # unreadable leftovers: ask again
        log.warning("cannot reuse the teacher data at %s (%s); asking the teacher again", teacher_uri, e)
        return None
    return manifest, rejects


# ---------------------------------------------------------------- the method


@register
class Distill(SftFull):
    """SFT (full or LoRA) on rule-checked teacher answers to the questions of an SFT dataset."""

    name = "distill"

    def source(self, spec, lake, train_df, eval_df):
        from trainers.data import read_records

        assert spec.teacher is not None
        records = chat_records(train_df, spec.train_uri)
        ids = [str(i) for i in train_df["id"]] if "id" in train_df.columns else [None] * len(records)
        teacher_uri = f"{spec.output_uri.rstrip('/')}/{TEACHER_DIR}"
        key = fingerprint(spec, records)

        earlier = _reused(lake, teacher_uri, key)
        if earlier is not None:
            manifest, rejects_jsonl = earlier
            log.info("reusing the teacher data of an earlier attempt at %s", teacher_uri)
        else:
            logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
            log.info(
                "asking %s at %s for %d answers", spec.teacher.model, spec.teacher.base_url, len(records)
            )
            started = time.perf_counter()
            answers = ask_teacher(spec, records, ids)
            manifest, rejects_jsonl = self._write(
                spec, lake, teacher_uri, records, answers, key, time.perf_counter() - started
            )
        self._enough(spec, manifest, teacher_uri)

        with lake.fetch(teacher_uri) as path:
            teacher_df = read_records(path)
        metrics = teacher_metrics(manifest) | {"teacher_reused": float(earlier is not None)}
        texts = {
            f"{TEACHER_DIR}/{REJECTS_FILE}": rejects_jsonl,
            f"{TEACHER_DIR}/manifest.json": json.dumps(manifest, ensure_ascii=False, indent=2),
        }
        return SourcedData(teacher_df, eval_df, metrics, texts)

    @staticmethod
    def _write(
        spec: TrainSpec,
        lake: Lake,
        teacher_uri: str,
        records: list[ChatRecord],
        answers: list[TeacherAnswer],
        key: str,
        seconds: float,
    ) -> tuple[dict[str, Any], str]:
        """Write the teacher dataset version, its manifest and the rejects; returns (manifest, rejects)."""
        import pandas as pd

        from tasks.records import COLUMNS, DATA_DIR, MANIFEST

        assert spec.teacher is not None
        rows = teacher_rows(spec, records, answers)
        rejected = [a for a in answers if a.reason is not None]
        by_reason = {r: sum(a.reason == r for a in rejected) for r in REASONS}
        manifest = {
            "usage": "sft",
            "records": len(rows),
            "questions": len(answers),
            "rejected": len(rejected),
            "rejected_by_reason": {r: n for r, n in by_reason.items() if n},
            "source": spec.train_uri,
            "dataset_ref": spec.dataset_ref,
            "teacher": {"base_url": spec.teacher.base_url, "model": spec.teacher.model},
            "generation": spec.distill.generation.model_dump(mode="json"),
            "rules": spec.distill.rules.model_dump(mode="json"),
            "seconds": round(seconds, 3),
            "fingerprint": key,
        }
        rejects_jsonl = "".join(json.dumps(asdict(a), ensure_ascii=False) + "\n" for a in rejected)
        frame = pd.DataFrame(rows, columns=list(COLUMNS["sft"]))
        with lake.stage(teacher_uri) as out:
            (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
            frame.to_parquet(out / DATA_DIR / "part-0.parquet", index=False)
            (out / REJECTS_FILE).write_text(rejects_jsonl, encoding="utf-8")
            # Written last: a manifest marks a complete teacher dataset (reused by a retried run).
            (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
        log.info(
            "teacher: %d of %d answers accepted; rejected by reason %s; written to %s",
            len(rows),
            len(answers),
            manifest["rejected_by_reason"],
            teacher_uri,
        )
        return manifest, rejects_jsonl

    @staticmethod
    def _enough(spec: TrainSpec, manifest: dict[str, Any], teacher_uri: str) -> None:
        n, accepted = manifest["questions"], manifest["records"]
        need = spec.distill.min_accept_ratio
        if accepted == 0 or accepted < need * n:
            assert spec.teacher is not None
            raise DataError(
                f"distill: only {accepted} of {n} teacher answers passed the rules (distill.min_accept_ratio "
                f"{need}); rejected by reason: {manifest['rejected_by_reason']}; see "
                f"{teacher_uri}/{REJECTS_FILE}. Check the teacher ({spec.teacher.model} at "
                f"{spec.teacher.base_url}), raise distill.generation.max_tokens when answers are truncated, "
                "or relax distill.rules"
            )

    def build(self, spec, model):
        return get_method("sft_lora").build(spec, model) if spec.distill.student == "lora" else model

    def export(self, spec, trainer, tokenizer, out):
        if spec.distill.student == "lora":
            return get_method("sft_lora").export(spec, trainer, tokenizer, out)
        return super().export(spec, trainer, tokenizer, out)
