"""The catalogue: scenes → datasets → immutable versions, in SQLAlchemy 2 with Alembic migrations.

SQLite is the embedded default, PostgreSQL the production store (``FORGEFLOW_CATALOG_URL``). A version
becomes visible in one transaction that inserts its row; its data was written to its own lake directory
before, so readers never see half a version. ``run_key`` makes a retried writer find its earlier commit
instead of creating a second version.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from tasks.specs import check_name

REF_RE = re.compile(
    r"^(?P<scene>[a-z0-9-]+)/(?P<name>[a-z0-9-]+)(@(?P<version>V?\d+|latest|published))?$", re.I
)
USAGES = ("pretrain", "sft", "rl", "reward_model", "model_test")
# Which dataset usages each consumer may select (REQUIREMENTS §1: usage decides visibility).
ALLOWED_USAGE: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain",),
    "sft_full": ("sft",),
    "sft_lora": ("sft",),
    "prompt_tuning": ("sft",),
    "distill": ("sft",),
    "reward_model": ("reward_model",),
    "dpo": ("reward_model",),  # DPO needs ranked answers; rl records carry one target each
    "evaluate": ("model_test",),
}


# Modalities each consumer takes (text unless listed): the trainers and evaluators read text records.
CONSUMER_MODALITIES: dict[str, tuple[str, ...]] = {}
VERSION_ATTRS = ("note", "tags", "source", "language", "licence", "tokenizer", "visibility", "quality")
VISIBILITIES = ("private", "public")


class CatalogError(ValueError):
    """A catalogue request that cannot be satisfied; the message says what and how to fix it."""


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Scene(Base):
    __tablename__ = "scenes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("scene_id", "name", name="uq_dataset_scene_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scene_id: Mapped[int] = mapped_column(ForeignKey("scenes.id"))
    name: Mapped[str] = mapped_column(String(63))
    note: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    language: Mapped[str] = mapped_column(String(32), default="")
    licence: Mapped[str] = mapped_column(String(128), default="")
    source: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    scene: Mapped[Scene] = relationship()


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "number", name="uq_version_number"),
        UniqueConstraint("dataset_id", "run_key", name="uq_version_run_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    number: Mapped[int] = mapped_column(Integer)
    run_key: Mapped[str] = mapped_column(String(250))
    usage: Mapped[str] = mapped_column(String(32))
    modality: Mapped[str] = mapped_column(String(16), default="text")
    labelled: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="ready")
    uri: Mapped[str] = mapped_column(Text)
    record_count: Mapped[int] = mapped_column(Integer, default=0)
    token_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    char_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quarantined_count: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    parents: Mapped[list[Any]] = mapped_column(JSON, default=list)
    recipe: Mapped[list[Any]] = mapped_column(JSON, default=list)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    code_version: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # 0002: what the version is, how its tokens were counted, its quality gate and its publication
    note: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True, default=list)
    source: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str] = mapped_column(String(32), default="")
    licence: Mapped[str] = mapped_column(String(128), default="")
    tokenizer: Mapped[str] = mapped_column(String(256), default="")
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    publication: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    dataset: Mapped[Dataset] = relationship()


@dataclass(frozen=True)
class VersionInfo:
    """A committed dataset version, detached from any session."""

    ref: str
    scene: str
    dataset: str
    number: int
    usage: str
    status: str
    uri: str
    record_count: int
    quarantined_count: int
    token_count: int | None
    char_count: int | None
    size_bytes: int | None
    run_key: str
    parents: list[str] = field(default_factory=list)
    recipe: list[Any] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    created_at: str = ""
    published_at: str | None = None
    modality: str = "text"
    labelled: bool = True
    note: str = ""
    tags: list[str] = field(default_factory=list)
    source: str = ""
    language: str = ""
    licence: str = ""
    tokenizer: str = ""
    quality: dict[str, Any] | None = None
    visibility: str = "private"
    publication: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _info(v: DatasetVersion) -> VersionInfo:
    scene, name = v.dataset.scene.name, v.dataset.name
    return VersionInfo(
        ref=f"{scene}/{name}@V{v.number}",
        scene=scene,
        dataset=name,
        number=v.number,
        usage=v.usage,
        status=v.status,
        uri=v.uri,
        record_count=v.record_count,
        quarantined_count=v.quarantined_count,
        token_count=v.token_count,
        char_count=v.char_count,
        size_bytes=v.size_bytes,
        run_key=v.run_key,
        parents=list(v.parents or []),
        recipe=list(v.recipe or []),
        stats=dict(v.stats or {}),
        code_version=v.code_version,
        created_at=_iso(v.created_at) or "",
        published_at=_iso(v.published_at),
        modality=v.modality,
        labelled=v.labelled,
        note=v.note or "",
        tags=list(v.tags or []),
        source=v.source or "",
        language=v.language or "",
        licence=v.licence or "",
        tokenizer=v.tokenizer or "",
        quality=dict(v.quality) if v.quality else None,
        visibility=v.visibility or "private",
        publication=dict(v.publication) if v.publication else None,
    )


def _iso(t: datetime | None) -> str | None:
    """ISO time in UTC; SQLite hands back naive datetimes for what was stored as UTC."""
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()


def parse_ref(ref: str) -> tuple[str, str, str | None]:
    """``SCENE/NAME[@Vn|@latest|@published]`` → (scene, name, selector or None)."""
    m = REF_RE.match(ref.strip())
    if not m:
        raise CatalogError(
            f"dataset reference {ref!r} is invalid: expected SCENE/NAME@Vn (e.g. general/alpaca-zh@V1)"
        )
    return m["scene"].lower(), m["name"].lower(), m["version"]


class Catalog:
    """Access to the catalogue database. Cheap to construct; connects on first use."""

    def __init__(self, url: str):
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, migrate: bool = True) -> Catalog:
        from tasks.settings import get_settings

        s = get_settings()
        if s.catalog_url.startswith("sqlite:///"):
            s.home.mkdir(parents=True, exist_ok=True)
        cat = cls(s.catalog_url)
        if migrate:
            cat.migrate()
        return cat

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from tasks.migrations import upgrade

        upgrade(self.engine)

    # ------------------------------------------------------------------ scenes and datasets
    def ensure_dataset(self, scene: str, name: str, **attrs: Any) -> None:
        """Create the scene and the dataset when missing; existing ones keep their attributes."""
        check_name(scene, "scene")
        check_name(name, "dataset name")
        for attempt in range(5):
            try:
                with self._session.begin() as s:
                    sc = s.scalar(select(Scene).where(Scene.name == scene))
                    if sc is None:
                        sc = Scene(name=scene)
                        s.add(sc)
                        s.flush()
                    ds = s.scalar(select(Dataset).where(Dataset.scene_id == sc.id, Dataset.name == name))
                    if ds is None:
                        s.add(Dataset(scene_id=sc.id, name=name, **attrs))
                return
            except IntegrityError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def create_dataset(self, scene: str, name: str, **attrs: Any) -> None:
        if self.dataset_exists(scene, name):
            raise CatalogError(f"dataset {scene}/{name} already exists")
        self.ensure_dataset(scene, name, **attrs)

    def dataset_exists(self, scene: str, name: str) -> bool:
        with self._session() as s:
            return self._dataset(s, scene, name, required=False) is not None

    def get_dataset(self, scene: str, name: str) -> dict[str, Any]:
        """A dataset's attributes (the error names the dataset when it does not exist)."""
        with self._session() as s:
            ds = self._dataset(s, scene, name)
            assert ds is not None
            return {
                "scene": ds.scene.name,
                "name": ds.name,
                "ref": f"{ds.scene.name}/{ds.name}",
                "note": ds.note,
                "tags": list(ds.tags or []),
                "language": ds.language,
                "licence": ds.licence,
                "source": ds.source,
                "created_at": _iso(ds.created_at),
            }

    def find_version(self, scene: str, name: str, run_key: str) -> VersionInfo | None:
        """The version a writer run committed, if it did (retries look here before redoing work)."""
        with self._session() as s:
            ds = self._dataset(s, scene, name)
            assert ds is not None
            v = s.scalar(
                select(DatasetVersion).where(
                    DatasetVersion.dataset_id == ds.id, DatasetVersion.run_key == run_key
                )
            )
            return _info(v) if v is not None else None

    def list_datasets(self) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.execute(
                select(Scene.name, Dataset.name, Dataset.note, Dataset.tags, func.count(DatasetVersion.id))
                .join(Dataset, Dataset.scene_id == Scene.id)
                .outerjoin(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
                .group_by(Scene.name, Dataset.name, Dataset.note, Dataset.tags)
                .order_by(Scene.name, Dataset.name)
            ).all()
            return [{"scene": r[0], "name": r[1], "note": r[2], "tags": r[3], "versions": r[4]} for r in rows]

    @staticmethod
    def _dataset(s: Session, scene: str, name: str, required: bool = True) -> Dataset | None:
        ds = s.scalar(
            select(Dataset).join(Scene).where(Scene.name == scene.lower(), Dataset.name == name.lower())
        )
        if ds is None and required:
            raise CatalogError(f"dataset {scene}/{name} does not exist (create it or check the name)")
        return ds

    # ------------------------------------------------------------------ versions
    def commit_version(
        self,
        scene: str,
        name: str,
        *,
        run_key: str,
        uri: str,
        usage: str,
        record_count: int,
        quarantined_count: int = 0,
        token_count: int | None = None,
        char_count: int | None = None,
        size_bytes: int | None = None,
        parents: list[str] | None = None,
        recipe: list[Any] | None = None,
        stats: dict[str, Any] | None = None,
        code_version: str = "",
        modality: str = "text",
        labelled: bool = True,
        status: str = "ready",
        **attrs: Any,
    ) -> VersionInfo:
        """Make a written version visible as the next number; idempotent per ``run_key``.

        ``attrs``: the descriptive attributes of VERSION_ATTRS (note, tags, source, language, licence,
        tokenizer, visibility, quality)."""
        if usage not in USAGES:
            raise CatalogError(f"usage {usage!r} is not one of {', '.join(USAGES)}")
        unknown = set(attrs) - set(VERSION_ATTRS)
        if unknown:
            raise CatalogError(
                f"unknown version attributes {sorted(unknown)}; known: {', '.join(VERSION_ATTRS)}"
            )
        if attrs.get("visibility", "private") not in VISIBILITIES:
            raise CatalogError(f"visibility {attrs['visibility']!r} is not one of {', '.join(VISIBILITIES)}")
        for attempt in range(20):
            try:
                with self._session.begin() as s:
                    ds = self._dataset(s, scene, name)
                    existing = s.scalar(
                        select(DatasetVersion).where(
                            DatasetVersion.dataset_id == ds.id, DatasetVersion.run_key == run_key
                        )
                    )
                    if existing is not None:
                        return _info(existing)
                    number = (
                        s.scalar(
                            select(func.max(DatasetVersion.number)).where(DatasetVersion.dataset_id == ds.id)
                        )
                        or 0
                    ) + 1
                    v = DatasetVersion(
                        dataset_id=ds.id,
                        number=number,
                        run_key=run_key,
                        usage=usage,
                        modality=modality,
                        labelled=labelled,
                        status=status,
                        uri=uri,
                        record_count=record_count,
                        quarantined_count=quarantined_count,
                        token_count=token_count,
                        char_count=char_count,
                        size_bytes=size_bytes,
                        parents=parents or [],
                        recipe=recipe or [],
                        stats=stats or {},
                        code_version=code_version,
                        published_at=now() if status == "published" else None,
                        **attrs,
                    )
                    s.add(v)
                    s.flush()
                    s.refresh(v)
                    return _info(v)
            except (IntegrityError, OperationalError):
                # another writer took the number (or held the SQLite lock); take the next one
                if attempt == 19:
                    raise
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    def get_version(self, ref: str) -> VersionInfo:
        scene, name, sel = parse_ref(ref)
        with self._session() as s:
            ds = self._dataset(s, scene, name)
            q = select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
            if sel is None or sel.lower() == "latest":
                q = q.order_by(DatasetVersion.number.desc()).limit(1)
            elif sel.lower() == "published":
                q = (
                    q.where(DatasetVersion.status == "published")
                    .order_by(DatasetVersion.number.desc())
                    .limit(1)
                )
            else:
                q = q.where(DatasetVersion.number == int(sel.lstrip("Vv")))
            v = s.scalar(q)
            if v is None:
                raise CatalogError(f"{ref}: no such version of {scene}/{name}")
            return _info(v)

    def list_versions(self, scene: str, name: str) -> list[VersionInfo]:
        with self._session() as s:
            ds = self._dataset(s, scene, name)
            rows = s.scalars(
                select(DatasetVersion)
                .where(DatasetVersion.dataset_id == ds.id)
                .order_by(DatasetVersion.number)
            ).all()
            return [_info(v) for v in rows]

    def publish(
        self,
        ref: str,
        *,
        publication: dict[str, Any] | None = None,
        visibility: str | None = None,
    ) -> VersionInfo:
        """Mark a version published (selectable for training), in one transaction with what publishing
        produced (``publication``: export format, splits, files) and its visibility.

        Publishing a published version again is a no-op that returns it unchanged, so a retried task
        publishes exactly once; a different publication of a published version is refused (versions are
        immutable: publish the export as a new version instead)."""
        if visibility is not None and visibility not in VISIBILITIES:
            raise CatalogError(f"visibility {visibility!r} is not one of {', '.join(VISIBILITIES)}")
        info = self.get_version(ref)
        with self._session.begin() as s:
            v = s.scalar(
                select(DatasetVersion)
                .join(Dataset)
                .join(Scene)
                .where(
                    Scene.name == info.scene,
                    Dataset.name == info.dataset,
                    DatasetVersion.number == info.number,
                )
                .with_for_update()
            )
            assert v is not None
            if v.status == "published":
                same = (publication is None or publication == v.publication) and (
                    visibility is None or visibility == v.visibility
                )
                if not same:
                    raise CatalogError(
                        f"{info.ref} is already published ({(v.publication or {}).get('format', 'standard')}, "
                        f"{v.visibility}); a published version does not change"
                    )
                return _info(v)
            v.status = "published"
            v.published_at = now()
            if publication is not None:
                v.publication = publication
            if visibility is not None:
                v.visibility = visibility
            s.flush()
            return _info(v)

    def select_for(self, ref: str, consumer: str) -> VersionInfo:
        """The version a training method or evaluation may use; enforces usage and publication."""
        info = self.get_version(ref)
        allowed = ALLOWED_USAGE.get(consumer)
        if allowed is None:
            raise CatalogError(f"unknown consumer {consumer!r}; expected one of {', '.join(ALLOWED_USAGE)}")
        if info.usage not in allowed:
            raise CatalogError(
                f"{info.ref} has usage {info.usage!r}; {consumer} can only use {' or '.join(allowed)} data"
            )
        modalities = CONSUMER_MODALITIES.get(consumer, ("text",))
        if info.modality not in modalities:
            raise CatalogError(
                f"{info.ref} is {info.modality} data; {consumer} takes {' or '.join(modalities)} data only"
            )
        if info.status != "published":
            raise CatalogError(f"{info.ref} is not published; publish it before using it for {consumer}")
        return info


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
