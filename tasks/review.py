"""Human sampling review of a dataset version (seed 001 §2.1.5 数据评估; REQUIREMENTS §1 quality evaluation).

Evaluation standards are named sets of items (category, item, description). The presets in
``include/review/standards.yaml`` are loaded into the catalogue on first use; users create, edit and delete
standards there, and restore a preset from the file. A review task samples N records of a version
(seeded, reproducible), snapshots the standard — later edits never change a running task — and assigns
each record to one reviewer. Reviewers mark Pass or Fail; a Fail carries at least one problem tag (an item
of the standard) and optional problem spans. At 100 % the task is done, verdicts are final, and the report
(pass rate overall and per reviewer, counts per tag and category, failed records) goes into the lake next
to the version.

Plain functions for the API (``plugins/forgeflow_console``), the command line and the ``dataset_review``
DAG; each takes an optional ``Catalog`` / ``Lake`` and builds them from the settings otherwise:

    create_task(ReviewTaskIn, created_by) -> ReviewTaskOut
    next_item(task_id, reviewer) -> ReviewItemOut | None
    submit_verdict(task_id, item_id, reviewer, VerdictIn) -> ReviewItemOut
    progress(task_id) -> Progress;  report(task_id, partial=False) -> ReviewReport
    write_report(task_id) -> {"uri", "report"};  check_threshold(report, threshold) -> dict
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tasks.catalog import Base, Catalog, CatalogError, Dataset, DatasetVersion, Scene, now
from tasks.records import DATA_DIR
from tasks.settings import PROJECT_ROOT
from tasks.specs import check_name
from tasks.storage import Lake

PRESETS_FILE = PROJECT_ROOT / "include" / "review" / "standards.yaml"
STATUSES = ("pending", "in_progress", "done")
ASSIGNMENTS = ("round_robin", "balanced")
MAX_SAMPLE = 100_000
READ_BATCH = 8192


class ReviewError(ValueError):
    """A review request that cannot be satisfied; the message says what was wrong and what to do."""

    status_code = 422


class ReviewNotFound(ReviewError):
    status_code = 404


class ReviewForbidden(ReviewError):
    """The reviewer may not act on this task or record."""

    status_code = 403


class ReviewConflict(ReviewError):
    """The request clashes with the task's state (done, not yet 100 %, name taken)."""

    status_code = 409


class ReviewTimeout(ReviewError):
    """The reviewers did not finish before the gate's deadline."""

    status_code = 408


class ReviewGateFailed(ReviewError):
    """The finished review's pass rate is below the threshold."""

    status_code = 409


# ---------------------------------------------------------------------------------------------- tables
class ReviewStandard(Base):
    """An evaluation standard. Deleting one keeps the row (``deleted_at``) so a preset is not re-added."""

    __tablename__ = "review_standards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    items: Mapped[list[Any]] = mapped_column(JSON, default=list)
    preset: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ReviewTask(Base):
    __tablename__ = "review_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(127))
    run_key: Mapped[str | None] = mapped_column(String(250), unique=True, nullable=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    version_ref: Mapped[str] = mapped_column(String(255))
    version_uri: Mapped[str] = mapped_column(Text)
    standard: Mapped[dict[str, Any]] = mapped_column(JSON)
    sample_size: Mapped[int] = mapped_column(Integer)
    sampled: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    reviewers: Mapped[list[Any]] = mapped_column(JSON)
    assignment: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    report_uri: Mapped[str | None] = mapped_column(Text, nullable=True)


class ReviewItem(Base):
    __tablename__ = "review_items"
    __table_args__ = (
        UniqueConstraint("task_id", "record_id", name="uq_review_item_record"),
        UniqueConstraint("task_id", "position", name="uq_review_item_position"),
        Index("ix_review_items_assignee", "task_id", "assignee", "verdict"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("review_tasks.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    record_id: Mapped[str] = mapped_column(String(255))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    assignee: Mapped[str] = mapped_column(String(255))
    verdict: Mapped[str | None] = mapped_column(String(8), nullable=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    spans: Mapped[list[Any]] = mapped_column(JSON, default=list)
    note: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str | None] = mapped_column(String(255), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# ---------------------------------------------------------------------------------------------- contracts
class StandardItem(BaseModel):
    """One evaluation item (评估项) of a standard."""

    category: str = Field(
        min_length=1, max_length=63, description="Evaluation category, e.g. completeness, accuracy."
    )
    item: str = Field(
        min_length=1,
        max_length=63,
        description="Item name, unique within the standard; reviewers tag failed records with it.",
    )
    description: str = Field(
        default="", max_length=2000, description="What the problem looks like, written without ambiguity."
    )

    @field_validator("category", "item")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be blank")
        return v


class StandardIn(BaseModel):
    """A standard as users create or replace it."""

    name: str = Field(description="Standard name: lowercase letters, digits and '-'.")
    description: str = Field(default="", max_length=2000, description="What the standard is for.")
    items: list[StandardItem] = Field(min_length=1, description="The evaluation items, in display order.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "standard name")

    @field_validator("items")
    @classmethod
    def _unique_items(cls, items: list[StandardItem]) -> list[StandardItem]:
        seen: set[str] = set()
        for i, it in enumerate(items):
            if it.item in seen:
                raise ValueError(f"item {it.item!r} appears twice (items[{i}]); item names are unique")
            seen.add(it.item)
        return items


class StandardOut(StandardIn):
    preset: bool = Field(description="Came from the preset file (restorable from it).")
    revision: int = Field(description="Increases with every edit; tasks record the revision they used.")
    created_by: str = Field(default="", description="Who created it (empty for presets).")
    created_at: str = Field(description="ISO time of creation (UTC).")
    updated_at: str = Field(description="ISO time of the last edit (UTC).")


class ProblemSpan(BaseModel):
    """A marked stretch of a record's text that shows a problem (the seed's right-click annotation)."""

    field: str = Field(
        description="The record field holding the text: text, target, system, context[i], answers[i].text."
    )
    start: int = Field(ge=0, description="First character of the span (0-based, in Unicode characters).")
    end: int = Field(gt=0, description="One past the last character of the span.")
    tag: str | None = Field(default=None, description="Item of the standard this span shows, if any.")
    note: str = Field(default="", max_length=2000, description="Free-text remark on the span.")

    @model_validator(mode="after")
    def _ordered(self) -> ProblemSpan:
        if self.end <= self.start:
            raise ValueError(f"span end {self.end} must be greater than start {self.start}")
        return self


class VerdictIn(BaseModel):
    """A reviewer's judgement of one record."""

    verdict: Literal["pass", "fail"] = Field(description="pass (meets the standard) or fail.")
    tags: list[str] = Field(
        default_factory=list, description="Problem items of the standard; a fail needs at least one."
    )
    spans: list[ProblemSpan] = Field(default_factory=list, description="Marked problem spans (optional).")
    note: str = Field(default="", max_length=4000, description="Free-text remark on the record.")

    @field_validator("verdict", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


class ReviewTaskIn(BaseModel):
    """What a new review task needs (the seed's create-task wizard: dataset, sampling, standard, people)."""

    version: str = Field(
        description="Dataset version SCENE/NAME@Vn; @latest or @published are pinned to their number."
    )
    standard: str = Field(description="Name of the evaluation standard; the task keeps a snapshot of it.")
    sample_size: int = Field(
        ge=1, le=MAX_SAMPLE, description="Records to sample; more than the version holds means all."
    )
    seed: int = Field(default=0, ge=0, lt=2**63, description="Sampling seed: the same seed, the same sample.")
    reviewers: list[str] = Field(min_length=1, description="User names of the reviewers (Airflow users).")
    assignment: Literal["round_robin", "balanced"] = Field(
        default="round_robin",
        description="round_robin: records dealt in turn; balanced: each record to the reviewer with the "
        "fewest characters to read so far.",
    )
    name: str = Field(
        default="", max_length=127, description="Task name (default: derived from the version)."
    )
    run_key: str | None = Field(
        default=None, max_length=250, description="Idempotency key: a retried creator gets the same task."
    )

    @field_validator("reviewers")
    @classmethod
    def _reviewers(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for i, r in enumerate(v):
            r = r.strip()
            if not r:
                raise ValueError(f"reviewers[{i}] is blank")
            if r not in out:
                out.append(r)
        return out


class ReviewTaskOut(BaseModel):
    id: int = Field(description="Task id.")
    name: str = Field(description="Task name.")
    version_ref: str = Field(description="The pinned version SCENE/NAME@Vn.")
    version_uri: str = Field(description="Lake URI of the version.")
    standard: dict[str, Any] = Field(
        description="Snapshot of the standard: name, revision, description, items."
    )
    sample_size: int = Field(description="Records asked for.")
    sampled: int = Field(description="Records actually sampled (at most the version's count).")
    seed: int = Field(description="Sampling seed.")
    reviewers: list[str] = Field(description="Assigned reviewers.")
    assignment: str = Field(description="round_robin or balanced.")
    status: str = Field(description="pending, in_progress or done.")
    created_by: str = Field(description="Who created the task.")
    created_at: str = Field(description="ISO creation time (UTC).")
    completed_at: str | None = Field(default=None, description="When the last record was judged.")
    report_uri: str | None = Field(default=None, description="Lake URI of the final report, once written.")
    run_key: str | None = Field(default=None, description="Idempotency key of the creating run.")


class ReviewItemOut(BaseModel):
    id: int = Field(description="Item id (unique across tasks).")
    task_id: int = Field(description="Review task id.")
    position: int = Field(description="Place in the sample (0-based), the order reviewers see.")
    record_id: str = Field(description="The record's id in the version.")
    record: dict[str, Any] = Field(description="Snapshot of the record's content.")
    assignee: str = Field(description="The reviewer this record is assigned to.")
    verdict: Literal["pass", "fail"] | None = Field(default=None, description="None until judged.")
    tags: list[str] = Field(default_factory=list, description="Problem items tagged.")
    spans: list[ProblemSpan] = Field(default_factory=list, description="Marked problem spans.")
    note: str = Field(default="", description="Reviewer's remark.")
    reviewer: str | None = Field(default=None, description="Who gave the verdict.")
    decided_at: str | None = Field(default=None, description="ISO time of the (last) verdict.")


class ReviewerProgress(BaseModel):
    assigned: int = Field(description="Records assigned.")
    decided: int = Field(description="Records judged.")
    passed: int = Field(description="Records passed.")
    failed: int = Field(description="Records failed.")


class Progress(BaseModel):
    task_id: int = Field(description="Review task id.")
    status: str = Field(description="pending, in_progress or done.")
    total: int = Field(description="Records in the sample.")
    decided: int = Field(description="Records judged.")
    passed: int = Field(description="Records passed.")
    failed: int = Field(description="Records failed.")
    percent: float = Field(description="decided / total × 100, rounded to 0.1.")
    per_reviewer: dict[str, ReviewerProgress] = Field(description="The same counts per reviewer.")


class ReviewerReport(ReviewerProgress):
    pass_rate: float | None = Field(description="passed / decided (None when nothing was judged).")


class FailedRecord(BaseModel):
    item_id: int = Field(description="Item id.")
    position: int = Field(description="Place in the sample.")
    record_id: str = Field(description="The record's id in the version.")
    tags: list[str] = Field(description="Problem items tagged.")
    spans: list[ProblemSpan] = Field(description="Marked spans.")
    note: str = Field(description="Reviewer's remark.")
    reviewer: str = Field(description="Who failed it.")


class CategoryCount(BaseModel):
    records: int = Field(description="Failed records with at least one tag of this category.")
    tags: int = Field(description="Tags of this category over all failed records.")


class ReviewReport(BaseModel):
    """The quality report of a review task (评估报告)."""

    task_id: int = Field(description="Review task id.")
    name: str = Field(description="Task name.")
    version_ref: str = Field(description="The reviewed version.")
    standard: str = Field(description="Standard name.")
    standard_revision: int = Field(description="Revision of the standard the task snapshotted.")
    sample_size: int = Field(description="Records asked for.")
    sampled: int = Field(description="Records sampled.")
    seed: int = Field(description="Sampling seed.")
    partial: bool = Field(description="True when the review is not complete (counts cover judged records).")
    decided: int = Field(description="Records judged.")
    passed: int = Field(description="Records passed.")
    failed: int = Field(description="Records failed.")
    pass_rate: float | None = Field(description="passed / decided; None when nothing was judged.")
    per_reviewer: dict[str, ReviewerReport] = Field(description="Counts and pass rate per reviewer.")
    tags: dict[str, int] = Field(description="Failed records per problem item (every item listed).")
    categories: dict[str, CategoryCount] = Field(description="Counts per category of the standard.")
    failed_records: list[FailedRecord] = Field(description="Every failed record with its tags, in order.")
    completed_at: str | None = Field(description="When the last record was judged (None if partial).")


# ---------------------------------------------------------------------------------------------- helpers
def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()


def _catalog(catalog: Catalog | None) -> Catalog:
    return catalog or Catalog.from_settings()


def _sessions(cat: Catalog):
    # The catalogue owns the engine and its session factory; review tables live in the same database.
    return cat._session


def _pydantic_error(e: ValidationError, where: str) -> ReviewError:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    return ReviewError(f"{where}: " + "; ".join(parts))


# ---------------------------------------------------------------------------------------------- standards
def load_presets(path: Path = PRESETS_FILE) -> list[StandardIn]:
    """The preset standards of the YAML file, validated (errors name the file and the entry)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ReviewError(f"{path}: cannot read the preset standards: {e}") from e
    entries = doc.get("standards") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ReviewError(f"{path}: expected a top-level 'standards:' list")
    out: list[StandardIn] = []
    for i, entry in enumerate(entries):
        try:
            out.append(StandardIn.model_validate(entry))
        except ValidationError as e:
            raise _pydantic_error(e, f"{path}: standards[{i}]") from e
        except ValueError as e:
            raise ReviewError(f"{path}: standards[{i}]: {e}") from e
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ReviewError(f"{path}: standard names appear twice: {', '.join(dupes)}")
    return out


def _standard_out(row: ReviewStandard) -> StandardOut:
    return StandardOut(
        name=row.name,
        description=row.description or "",
        items=[StandardItem.model_validate(i) for i in row.items or []],
        preset=row.preset,
        revision=row.revision,
        created_by=row.created_by or "",
        created_at=_iso(row.created_at) or "",
        updated_at=_iso(row.updated_at) or "",
    )


def ensure_presets(catalog: Catalog | None = None) -> None:
    """Add the presets that were never in the catalogue (a deleted preset stays deleted)."""
    cat = _catalog(catalog)
    with _sessions(cat)() as s:
        known = set(s.scalars(select(ReviewStandard.name)).all())
    missing = [p for p in load_presets() if p.name not in known]
    for p in missing:
        try:
            with _sessions(cat).begin() as s:
                s.add(
                    ReviewStandard(
                        name=p.name,
                        description=p.description,
                        items=[i.model_dump() for i in p.items],
                        preset=True,
                    )
                )
        except IntegrityError:
            pass  # another process loaded it first


def _live_standard(s: Session, name: str) -> ReviewStandard:
    row = s.scalar(select(ReviewStandard).where(ReviewStandard.name == name))
    if row is None or row.deleted_at is not None:
        raise ReviewNotFound(f"evaluation standard {name!r} does not exist (list them, or create it)")
    return row


def list_standards(catalog: Catalog | None = None) -> list[StandardOut]:
    cat = _catalog(catalog)
    ensure_presets(cat)
    with _sessions(cat)() as s:
        rows = s.scalars(
            select(ReviewStandard).where(ReviewStandard.deleted_at.is_(None)).order_by(ReviewStandard.name)
        ).all()
        return [_standard_out(r) for r in rows]


def get_standard(name: str, catalog: Catalog | None = None) -> StandardOut:
    cat = _catalog(catalog)
    ensure_presets(cat)
    with _sessions(cat)() as s:
        return _standard_out(_live_standard(s, name))


def create_standard(
    spec: StandardIn | dict[str, Any], created_by: str = "", catalog: Catalog | None = None
) -> StandardOut:
    """A new standard (e.g. a preset copied and edited). A name in use is refused."""
    spec = _validate(StandardIn, spec, "standard")
    cat = _catalog(catalog)
    ensure_presets(cat)
    try:
        with _sessions(cat).begin() as s:
            row = s.scalar(select(ReviewStandard).where(ReviewStandard.name == spec.name))
            if row is not None and row.deleted_at is None:
                raise ReviewConflict(
                    f"evaluation standard {spec.name!r} already exists; edit it or choose another name"
                )
            if row is None:
                row = ReviewStandard(name=spec.name, revision=1)
                s.add(row)
            else:  # a deleted standard's name is reused: the row comes back with the new content
                row.revision += 1
                row.deleted_at = None
            row.description = spec.description
            row.items = [i.model_dump() for i in spec.items]
            row.preset = False
            row.created_by = created_by
            row.created_at = row.updated_at = now()
            s.flush()
            return _standard_out(row)
    except IntegrityError as e:
        raise ReviewConflict(f"evaluation standard {spec.name!r} was just created by someone else") from e


def update_standard(
    name: str,
    *,
    description: str | None = None,
    items: list[StandardItem] | list[dict[str, Any]] | None = None,
    catalog: Catalog | None = None,
) -> StandardOut:
    """Edit a standard's description and/or replace its items. Running tasks keep their snapshot."""
    cat = _catalog(catalog)
    ensure_presets(cat)
    with _sessions(cat).begin() as s:
        row = _live_standard(s, name)
        merged = {
            "name": row.name,
            "description": row.description if description is None else description,
            "items": row.items if items is None else [_dump(i) for i in items],
        }
        spec = _validate(StandardIn, merged, f"standard {name!r}")
        row.description = spec.description
        row.items = [i.model_dump() for i in spec.items]
        row.revision += 1
        row.updated_at = now()
        s.flush()
        return _standard_out(row)


def delete_standard(name: str, catalog: Catalog | None = None) -> None:
    """Delete a standard. Tasks that used it keep their snapshot; a preset can be restored."""
    cat = _catalog(catalog)
    ensure_presets(cat)
    with _sessions(cat).begin() as s:
        row = _live_standard(s, name)
        row.deleted_at = now()


def restore_presets(names: list[str] | None = None, catalog: Catalog | None = None) -> list[StandardOut]:
    """Put presets (all, or the named ones) back as the file defines them, undeleting them if needed."""
    cat = _catalog(catalog)
    ensure_presets(cat)
    presets = {p.name: p for p in load_presets()}
    wanted = list(presets) if names is None else list(names)
    unknown = [n for n in wanted if n not in presets]
    if unknown:
        raise ReviewNotFound(f"no preset named {', '.join(unknown)}; presets: {', '.join(sorted(presets))}")
    out = []
    with _sessions(cat).begin() as s:
        for n in wanted:
            p = presets[n]
            row = s.scalar(select(ReviewStandard).where(ReviewStandard.name == n))
            if row is None:
                row = ReviewStandard(name=n, revision=0)
                s.add(row)
            content = {"description": p.description, "items": [i.model_dump() for i in p.items]}
            if row.deleted_at is not None or {"description": row.description, "items": row.items} != content:
                row.revision = (row.revision or 0) + 1
                row.updated_at = now()
            row.description, row.items = content["description"], content["items"]
            row.preset, row.deleted_at = True, None
            s.flush()
            out.append(_standard_out(row))
    return out


def _dump(i: Any) -> Any:
    return i.model_dump() if isinstance(i, BaseModel) else i


def _validate(model: type[BaseModel], value: Any, where: str) -> Any:
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise _pydantic_error(e, where) from e


# ---------------------------------------------------------------------------------------------- sampling
def sample_key(seed: int, record_id: Any) -> int:
    """The record's place in the seeded order: a 128-bit hash of (seed, id). Same inputs, same key."""
    digest = hashlib.blake2b(f"{seed}\x1f{record_id}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big")


def sample_records(
    data_uri: str, n: int, seed: int, lake: Lake | None = None, batch_size: int = READ_BATCH
) -> list[dict[str, Any]]:
    """The ``n`` records of a version's parquet files with the smallest keys ``sample_key(seed, id)``.

    A bottom-k reservoir: one streaming pass over the ``id`` column keeps at most ``n`` candidates
    (memory O(n), independent of the file order or split), a second pass reads just those records.
    Duplicate ids count once. Fewer than ``n`` distinct records: all of them. Returned in key order.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    lake = lake or Lake.from_settings()
    with lake.fetch(data_uri) as root:
        files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
        files = [f for f in files if not f.name.startswith((".", "_"))]
        if not files:
            raise ReviewError(f"{data_uri} holds no parquet files: nothing to sample")
        heap: list[tuple[int, str]] = []  # (-key, id): the root is the largest kept key
        chosen: dict[str, Any] = {}  # str(id) -> the id as stored
        id_type = None
        for f in files:
            pf = pq.ParquetFile(f)
            if "id" not in pf.schema_arrow.names:
                raise ReviewError(f"{f.name}: the version's records have no 'id' column; cannot sample")
            id_type = id_type or pf.schema_arrow.field("id").type
            row = 0
            for batch in pf.iter_batches(batch_size=batch_size, columns=["id"]):
                for value in batch.column(0).to_pylist():
                    if value is None:
                        raise ReviewError(f"{f.name}: record at row {row} has no id; cannot sample")
                    row += 1
                    sid = str(value)
                    if sid in chosen:
                        continue
                    key = sample_key(seed, sid)
                    if len(heap) < n:
                        heapq.heappush(heap, (-key, sid))
                        chosen[sid] = value
                    elif key < -heap[0][0]:
                        _, out = heapq.heapreplace(heap, (-key, sid))
                        del chosen[out]
                        chosen[sid] = value
        if not chosen:
            return []
        wanted = pa.array(list(chosen.values()), type=id_type)
        found: dict[str, dict[str, Any]] = {}
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                hits = batch.filter(pc.is_in(batch.column("id"), value_set=wanted))
                for rec in hits.to_pylist():
                    found.setdefault(str(rec["id"]), _json_safe(rec))
    order = sorted(((-k, sid) for k, sid in heap))
    return [found[sid] for _, sid in order]


def _json_safe(rec: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(rec, ensure_ascii=False, default=str))


def _weight(record: dict[str, Any]) -> int:
    """Reading effort of a record: characters of its content (id and meta excluded)."""
    body = {k: v for k, v in record.items() if k not in ("id", "meta")}
    return len(json.dumps(body, ensure_ascii=False))


def assign(records: list[dict[str, Any]], reviewers: list[str], how: str) -> list[str]:
    """The reviewer of each record: dealt in turn, or each to the least-loaded reviewer (by characters)."""
    if how == "round_robin":
        return [reviewers[i % len(reviewers)] for i in range(len(records))]
    if how != "balanced":
        raise ReviewError(f"assignment {how!r} is not one of {', '.join(ASSIGNMENTS)}")
    load = [(0, 0, i) for i in range(len(reviewers))]  # (characters, records, reviewer index)
    heapq.heapify(load)
    out = []
    for rec in records:
        chars, count, i = heapq.heappop(load)
        out.append(reviewers[i])
        heapq.heappush(load, (chars + _weight(rec), count + 1, i))
    return out


# ---------------------------------------------------------------------------------------------- tasks
def _task_out(t: ReviewTask) -> ReviewTaskOut:
    return ReviewTaskOut(
        id=t.id,
        name=t.name,
        version_ref=t.version_ref,
        version_uri=t.version_uri,
        standard=dict(t.standard),
        sample_size=t.sample_size,
        sampled=t.sampled,
        seed=t.seed,
        reviewers=list(t.reviewers),
        assignment=t.assignment,
        status=t.status,
        created_by=t.created_by,
        created_at=_iso(t.created_at) or "",
        completed_at=_iso(t.completed_at),
        report_uri=t.report_uri,
        run_key=t.run_key,
    )


def _item_out(i: ReviewItem) -> ReviewItemOut:
    return ReviewItemOut(
        id=i.id,
        task_id=i.task_id,
        position=i.position,
        record_id=i.record_id,
        record=dict(i.record),
        assignee=i.assignee,
        verdict=i.verdict,
        tags=list(i.tags or []),
        spans=[ProblemSpan.model_validate(x) for x in i.spans or []],
        note=i.note or "",
        reviewer=i.reviewer,
        decided_at=_iso(i.decided_at),
    )


def _task(s: Session, task_id: int, lock: bool = False) -> ReviewTask:
    q = select(ReviewTask).where(ReviewTask.id == task_id)
    if lock:
        q = q.with_for_update()  # PostgreSQL: one verdict at a time per task; SQLite serialises writes
    t = s.scalar(q)
    if t is None:
        raise ReviewNotFound(f"review task {task_id} does not exist")
    return t


def _version_row_id(s: Session, scene: str, dataset: str, number: int) -> int:
    vid = s.scalar(
        select(DatasetVersion.id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .join(Scene, Scene.id == Dataset.scene_id)
        .where(Scene.name == scene, Dataset.name == dataset, DatasetVersion.number == number)
    )
    if vid is None:
        raise ReviewNotFound(f"{scene}/{dataset}@V{number} disappeared from the catalogue")
    return vid


def create_task(
    spec: ReviewTaskIn | dict[str, Any],
    created_by: str,
    catalog: Catalog | None = None,
    lake: Lake | None = None,
) -> ReviewTaskOut:
    """Sample the version, snapshot the standard, assign the records; idempotent per ``run_key``."""
    spec = _validate(ReviewTaskIn, spec, "review task")
    if not created_by.strip():
        raise ReviewError("created_by is empty: a review task needs the user who creates it")
    cat = _catalog(catalog)
    if spec.run_key:
        with _sessions(cat)() as s:
            existing = s.scalar(select(ReviewTask).where(ReviewTask.run_key == spec.run_key))
            if existing is not None:
                return _task_out(existing)
    try:
        info = cat.get_version(spec.version)
    except CatalogError as e:
        raise ReviewNotFound(str(e)) from e
    standard = get_standard(spec.standard, cat)
    snapshot = {
        "name": standard.name,
        "revision": standard.revision,
        "description": standard.description,
        "items": [i.model_dump() for i in standard.items],
    }
    records = sample_records(f"{info.uri}/{DATA_DIR}", spec.sample_size, spec.seed, lake)
    if not records:
        raise ReviewError(f"{info.ref} has no records: nothing to review")
    assignees = assign(records, spec.reviewers, spec.assignment)
    try:
        with _sessions(cat).begin() as s:
            task = ReviewTask(
                name=spec.name.strip() or f"review-{info.dataset}-v{info.number}",
                run_key=spec.run_key,
                version_id=_version_row_id(s, info.scene, info.dataset, info.number),
                version_ref=info.ref,
                version_uri=info.uri,
                standard=snapshot,
                sample_size=spec.sample_size,
                sampled=len(records),
                seed=spec.seed,
                reviewers=spec.reviewers,
                assignment=spec.assignment,
                status="pending",
                created_by=created_by.strip(),
            )
            s.add(task)
            s.flush()
            s.add_all(
                ReviewItem(
                    task_id=task.id,
                    position=i,
                    record_id=str(rec["id"]),
                    record=rec,
                    assignee=who,
                    tags=[],
                    spans=[],
                    note="",
                )
                for i, (rec, who) in enumerate(zip(records, assignees, strict=True))
            )
            s.flush()
            return _task_out(task)
    except IntegrityError:
        if spec.run_key:  # a concurrent retry of the same run committed first
            with _sessions(cat)() as s:
                existing = s.scalar(select(ReviewTask).where(ReviewTask.run_key == spec.run_key))
                if existing is not None:
                    return _task_out(existing)
        raise


def get_task(task_id: int, catalog: Catalog | None = None) -> ReviewTaskOut:
    with _sessions(_catalog(catalog))() as s:
        return _task_out(_task(s, task_id))


def list_tasks(
    *,
    status: str | None = None,
    version: str | None = None,
    reviewer: str | None = None,
    catalog: Catalog | None = None,
) -> list[ReviewTaskOut]:
    """Tasks, newest first; filtered by status, version ref prefix (SCENE/NAME or SCENE/NAME@Vn), reviewer."""
    if status is not None and status not in STATUSES:
        raise ReviewError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    with _sessions(_catalog(catalog))() as s:
        q = select(ReviewTask).order_by(ReviewTask.id.desc())
        if status:
            q = q.where(ReviewTask.status == status)
        if version:
            q = q.where(
                (ReviewTask.version_ref == version)
                | ReviewTask.version_ref.startswith(version.rstrip("@") + "@")
            )
        rows = s.scalars(q).all()
        return [_task_out(t) for t in rows if reviewer is None or reviewer in (t.reviewers or [])]


def list_items(
    task_id: int,
    *,
    reviewer: str | None = None,
    decided: bool | None = None,
    catalog: Catalog | None = None,
) -> list[ReviewItemOut]:
    """A task's records in sample order; optionally one reviewer's, judged or open ones."""
    with _sessions(_catalog(catalog))() as s:
        _task(s, task_id)
        q = select(ReviewItem).where(ReviewItem.task_id == task_id).order_by(ReviewItem.position)
        if reviewer is not None:
            q = q.where(ReviewItem.assignee == reviewer)
        if decided is True:
            q = q.where(ReviewItem.verdict.is_not(None))
        elif decided is False:
            q = q.where(ReviewItem.verdict.is_(None))
        return [_item_out(i) for i in s.scalars(q).all()]


def get_item(task_id: int, item_id: int, catalog: Catalog | None = None) -> ReviewItemOut:
    with _sessions(_catalog(catalog))() as s:
        return _item_out(_item(s, task_id, item_id))


def _item(s: Session, task_id: int, item_id: int) -> ReviewItem:
    item = s.scalar(select(ReviewItem).where(ReviewItem.id == item_id, ReviewItem.task_id == task_id))
    if item is None:
        raise ReviewNotFound(f"review task {task_id} has no item {item_id}")
    return item


def next_item(task_id: int, reviewer: str, catalog: Catalog | None = None) -> ReviewItemOut | None:
    """The reviewer's first unjudged record in sample order; None when they have judged all of theirs."""
    with _sessions(_catalog(catalog))() as s:
        task = _task(s, task_id)
        if reviewer not in (task.reviewers or []):
            raise ReviewForbidden(
                f"{reviewer!r} is not a reviewer of review task {task_id} "
                f"(reviewers: {', '.join(task.reviewers)})"
            )
        item = s.scalar(
            select(ReviewItem)
            .where(
                ReviewItem.task_id == task_id, ReviewItem.assignee == reviewer, ReviewItem.verdict.is_(None)
            )
            .order_by(ReviewItem.position)
            .limit(1)
        )
        return _item_out(item) if item is not None else None


_PATH_PART = re.compile(r"(?:^|\.)([A-Za-z_]\w*)|\[(\d+)\]|\.(\d+)")
_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\]|\.\d+)*$")


def resolve_field(record: dict[str, Any], path: str) -> str:
    """The text at ``path`` in a record: ``text``, ``context[2]`` (or ``context.2``), ``answers[0].text``."""
    if not _PATH.match(path):
        raise ReviewError(f"span field {path!r} is not a field path like text, target or context[0]")
    cur: Any = record
    for m in _PATH_PART.finditer(path):
        name, index = m.group(1), m.group(2) or m.group(3)
        if name is not None:
            if not isinstance(cur, dict) or name not in cur:
                raise ReviewError(f"span field {path!r}: the record has no field {name!r}")
            cur = cur[name]
        else:
            if not isinstance(cur, list) or int(index) >= len(cur):
                raise ReviewError(f"span field {path!r}: no element {index} there")
            cur = cur[int(index)]
    if not isinstance(cur, str):
        raise ReviewError(f"span field {path!r} is not text (it holds {type(cur).__name__})")
    return cur


def submit_verdict(
    task_id: int,
    item_id: int,
    reviewer: str,
    verdict: VerdictIn | dict[str, Any],
    catalog: Catalog | None = None,
) -> ReviewItemOut:
    """Record (or replace, until the task is done) the assigned reviewer's verdict on one record."""
    v = _validate(VerdictIn, verdict, f"verdict on item {item_id}")
    cat = _catalog(catalog)
    with _sessions(cat).begin() as s:
        task = _task(s, task_id, lock=True)
        item = _item(s, task_id, item_id)
        if task.status == "done":
            raise ReviewConflict(
                f"review task {task_id} is done (100 %); verdicts are final once the report is due"
            )
        if item.assignee != reviewer:
            raise ReviewForbidden(
                f"item {item_id} (record {item.record_id}) of review task {task_id} is assigned to "
                f"{item.assignee!r}; {reviewer!r} cannot judge it"
            )
        known = [i["item"] for i in task.standard["items"]]
        tags: list[str] = []
        for t in [*v.tags, *(sp.tag for sp in v.spans if sp.tag)]:
            if t not in known:
                raise ReviewError(
                    f"tag {t!r} is not an item of standard {task.standard['name']!r} "
                    f"(revision {task.standard['revision']}); items: {', '.join(known)}"
                )
            if t not in tags:
                tags.append(t)
        for k, sp in enumerate(v.spans):
            text = resolve_field(item.record, sp.field)
            if sp.end > len(text):
                raise ReviewError(
                    f"spans[{k}]: end {sp.end} is past the end of {sp.field!r} ({len(text)} characters)"
                )
        if v.verdict == "fail" and not tags:
            raise ReviewError(
                f"a Fail of item {item_id} needs at least one problem tag from standard "
                f"{task.standard['name']!r}: {', '.join(known)}"
            )
        if v.verdict == "pass" and tags:
            raise ReviewError(
                f"a Pass carries no problem tags (got {', '.join(tags)}); remove them or submit Fail"
            )
        item.verdict = v.verdict
        item.tags = tags
        item.spans = [sp.model_dump() for sp in v.spans]
        item.note = v.note
        item.reviewer = reviewer
        item.decided_at = now()
        s.flush()
        open_items = s.scalar(
            select(func.count(ReviewItem.id)).where(
                ReviewItem.task_id == task_id, ReviewItem.verdict.is_(None)
            )
        )
        if open_items == 0:
            task.status, task.completed_at = "done", item.decided_at
        else:
            task.status = "in_progress"
        s.flush()
        return _item_out(item)


def _counts(items: list[ReviewItem], reviewers: list[str]) -> tuple[dict[str, ReviewerProgress], int, int]:
    per = {r: ReviewerProgress(assigned=0, decided=0, passed=0, failed=0) for r in reviewers}
    passed = failed = 0
    for i in items:
        p = per.setdefault(i.assignee, ReviewerProgress(assigned=0, decided=0, passed=0, failed=0))
        p.assigned += 1
        if i.verdict is not None:
            p.decided += 1
        if i.verdict == "pass":
            p.passed += 1
            passed += 1
        elif i.verdict == "fail":
            p.failed += 1
            failed += 1
    return per, passed, failed


def progress(task_id: int, catalog: Catalog | None = None) -> Progress:
    with _sessions(_catalog(catalog))() as s:
        task = _task(s, task_id)
        items = s.scalars(select(ReviewItem).where(ReviewItem.task_id == task_id)).all()
        per, passed, failed = _counts(list(items), list(task.reviewers))
        total, decided = len(items), passed + failed
        return Progress(
            task_id=task_id,
            status=task.status,
            total=total,
            decided=decided,
            passed=passed,
            failed=failed,
            percent=round(100.0 * decided / total, 1) if total else 100.0,
            per_reviewer=per,
        )


def report(task_id: int, partial: bool = False, catalog: Catalog | None = None) -> ReviewReport:
    """The quality report at 100 %; before that an error, or with ``partial`` a report flagged partial."""
    with _sessions(_catalog(catalog))() as s:
        task = _task(s, task_id)
        items = list(
            s.scalars(
                select(ReviewItem).where(ReviewItem.task_id == task_id).order_by(ReviewItem.position)
            ).all()
        )
        per, passed, failed = _counts(items, list(task.reviewers))
        decided = passed + failed
        complete = decided == len(items)
        if not complete and not partial:
            raise ReviewConflict(
                f"review task {task_id} is {100.0 * decided / len(items):.1f} % done ({decided} of "
                f"{len(items)} records judged); the report needs 100 % — wait, or ask for a partial report"
            )
        std_items = task.standard["items"]
        category_of = {i["item"]: i["category"] for i in std_items}
        tag_counts = {i["item"]: 0 for i in std_items}
        categories: dict[str, CategoryCount] = {}
        for c in dict.fromkeys(i["category"] for i in std_items):
            categories[c] = CategoryCount(records=0, tags=0)
        failed_records = []
        for i in items:
            if i.verdict != "fail":
                continue
            for t in i.tags:
                tag_counts[t] = tag_counts.get(t, 0) + 1
                categories.setdefault(category_of.get(t, "?"), CategoryCount(records=0, tags=0)).tags += 1
            for c in dict.fromkeys(category_of.get(t, "?") for t in i.tags):
                categories[c].records += 1
            failed_records.append(
                FailedRecord(
                    item_id=i.id,
                    position=i.position,
                    record_id=i.record_id,
                    tags=list(i.tags),
                    spans=[ProblemSpan.model_validate(x) for x in i.spans or []],
                    note=i.note or "",
                    reviewer=i.reviewer or i.assignee,
                )
            )
        return ReviewReport(
            task_id=task.id,
            name=task.name,
            version_ref=task.version_ref,
            standard=task.standard["name"],
            standard_revision=task.standard["revision"],
            sample_size=task.sample_size,
            sampled=task.sampled,
            seed=task.seed,
            partial=not complete,
            decided=decided,
            passed=passed,
            failed=failed,
            pass_rate=round(passed / decided, 4) if decided else None,
            per_reviewer={
                r: ReviewerReport(
                    **p.model_dump(), pass_rate=round(p.passed / p.decided, 4) if p.decided else None
                )
                for r, p in per.items()
            },
            tags=tag_counts,
            categories=categories,
            failed_records=failed_records,
            completed_at=_iso(task.completed_at) if complete else None,
        )


def report_uri(version_uri: str, version_ref: str, task_id: int, partial: bool = False) -> str:
    """Where a task's report lives: beside the version directory, under its dataset's ``_reviews``.

    The version directory itself stays as committed (versions are immutable)."""
    number = version_ref.rsplit("@", 1)[-1]
    parent = version_uri.rstrip("/").rsplit("/", 1)[0]
    name = "report.partial.json" if partial else "report.json"
    return f"{parent}/_reviews/{number}/task-{task_id}/{name}"


def write_report(
    task_id: int, partial: bool = False, catalog: Catalog | None = None, lake: Lake | None = None
) -> dict[str, Any]:
    """Write the report as JSON into the lake; the final one is recorded on the task. Rewriting is safe."""
    cat = _catalog(catalog)
    rep = report(task_id, partial=partial, catalog=cat)
    task = get_task(task_id, cat)
    uri = report_uri(task.version_uri, task.version_ref, task_id, partial=rep.partial)
    (lake or Lake.from_settings()).write_json(uri, rep.model_dump(mode="json"))
    if not rep.partial:
        with _sessions(cat).begin() as s:
            _task(s, task_id).report_uri = uri
    return {"uri": uri, "report": rep.model_dump(mode="json")}


# ---------------------------------------------------------------------------------------------- DAG gate
def poke(task_id: int, timeout_hours: float, catalog: Catalog | None = None) -> tuple[bool, dict[str, Any]]:
    """Is the review at 100 %? Raises ReviewTimeout once ``timeout_hours`` have passed since creation."""
    cat = _catalog(catalog)
    prog = progress(task_id, cat)
    if prog.status == "done":
        return True, prog.model_dump()
    created = datetime.fromisoformat(get_task(task_id, cat).created_at)
    deadline = created + timedelta(hours=timeout_hours)
    if now() >= deadline:
        raise ReviewTimeout(
            f"review task {task_id} is {prog.percent:.1f} % done ({prog.decided} of {prog.total}) after "
            f"{timeout_hours:g} h (deadline {deadline.isoformat()}); reviewers: "
            + ", ".join(f"{r} {p.decided}/{p.assigned}" for r, p in prog.per_reviewer.items())
        )
    return False, prog.model_dump()


def check_threshold(rep: dict[str, Any] | ReviewReport, threshold: float) -> dict[str, Any]:
    """Pass the gate when the pass rate reaches ``threshold`` (0–1); else ReviewGateFailed naming the rate."""
    r = rep if isinstance(rep, ReviewReport) else ReviewReport.model_validate(rep)
    if not 0.0 <= threshold <= 1.0:
        raise ReviewError(f"pass threshold {threshold} must lie between 0 and 1")
    rate = r.pass_rate or 0.0
    summary = (
        f"review task {r.task_id} of {r.version_ref}: pass rate {100 * rate:.1f} % "
        f"({r.passed} of {r.decided} records) against a threshold of {100 * threshold:.1f} %"
    )
    if r.partial:
        raise ReviewGateFailed(f"{summary}, but the review is not complete")
    if rate < threshold:
        top = sorted(((n, t) for t, n in r.tags.items() if n), reverse=True)[:3]
        problems = ", ".join(f"{t} ×{n}" for n, t in top)
        raise ReviewGateFailed(f"{summary}: below the threshold; most frequent problems: {problems}")
    return {"passed": True, "pass_rate": rate, "threshold": threshold, "message": summary}
