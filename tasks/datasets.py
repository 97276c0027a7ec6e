"""The dataset lifecycle behind ``forgeflow dataset ...`` and the data DAGs: create, import, show, preview,
lineage. Plain functions returning JSON-ready dicts; the command line prints them, the DAG tasks return them.

An import runs the Spark engine (``spark_ops.run``) in this process on the file, writing a version
directory of its own in the lake, then commits it to the catalogue in one transaction: the version
number is only taken at the commit, so concurrent importers into one dataset never collide and a failed
import leaves no version behind (only its directory, which no catalogue row points at).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.catalog import Catalog, CatalogError, VersionInfo, parse_ref
from tasks.records import DATA_DIR, MANIFEST
from tasks.specs import InputSource, ProcessSpec, check_name
from tasks.storage import Lake, local_path, to_uri
from tasks.version import code_version

if TYPE_CHECKING:
    from tasks.specs import MixSpec, PublishSpec

DEFAULT_IMPORT_RECIPE = "import-only"
PREVIEW_LIMIT = 100


def dataset_ref(ref: str) -> tuple[str, str]:
    """``SCENE/NAME`` (no version) → (scene, name), with the naming rule checked."""
    scene, name, sel = parse_ref(ref)
    if sel is not None:
        raise CatalogError(f"{ref!r} names a version; give the dataset as SCENE/NAME")
    check_name(scene, "scene")
    check_name(name, "dataset name")
    return scene, name


def create(
    ref: str,
    *,
    note: str = "",
    tags: list[str] | None = None,
    language: str = "",
    licence: str = "",
    source: str = "",
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """Create a dataset (and its scene when new); an existing dataset is an error."""
    scene, name = dataset_ref(ref)
    cat = catalog or Catalog.from_settings()
    cat.create_dataset(
        scene, name, note=note, tags=list(tags or []), language=language, licence=licence, source=source
    )
    return cat.get_dataset(scene, name)


def _char_count(manifest: dict[str, Any]) -> int | None:
    per_column = manifest.get("chars") or {}
    sums = [
        c.get("sum")
        for k, c in per_column.items()
        if k != "record" and isinstance(c, dict) and c.get("sum") is not None
    ]
    return int(sum(sums)) if sums else None


def _dir_size(lake: Lake, uri: str) -> int | None:
    if not uri.startswith("file:"):
        return None
    root = local_path(uri)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else None


QUALITY_DIR = "quality"


def assess(
    output_uri: str, usage: str, run_key: str, *, tokenizer: str | None = None, suite_parameters=None
) -> dict[str, Any]:
    """Quality report + expectation suite of a finished engine output (before it is committed), in this
    process; what the catalogue keeps as the version's ``quality``."""
    from spark_ops.quality import run

    spec = quality_spec(run_key, output_uri, usage, tokenizer=tokenizer, suite_parameters=suite_parameters)
    return {k: v for k, v in run(spec).items() if k != "status"}


def quality_spec(run_key: str, output_uri: str, usage: str, **options: Any):
    """The QualitySpec of an engine output: report and suite result under ``<output>/quality``."""
    from tasks.specs import QualitySpec

    options = {k: v for k, v in options.items() if v is not None}
    return QualitySpec(
        run_key=f"{run_key}-quality",
        version_uri=output_uri,
        usage=usage,
        out_uri=f"{output_uri}/{QUALITY_DIR}",
        **options,
    )


def quality_attrs(quality: dict[str, Any] | None) -> dict[str, Any]:
    """Catalogue attributes that come from a quality result: the result, tokens, tokenizer, main language."""
    if not quality:
        return {}
    summary = quality.get("summary") or {}
    languages = summary.get("languages") or {}
    attrs: dict[str, Any] = {"quality": quality, "tokenizer": str(summary.get("tokenizer") or "")}
    if summary.get("tokens") is not None:
        attrs["token_count"] = int(summary["tokens"])
    if languages:
        attrs["language"] = max(languages, key=languages.get)
    return attrs


def commit_from_manifest(
    cat: Catalog,
    scene: str,
    name: str,
    *,
    run_key: str,
    output_uri: str,
    usage: str,
    recipe: list[Any],
    parents: list[str] | None = None,
    lake: Lake | None = None,
    **attrs: Any,
) -> VersionInfo:
    """Register a finished engine output (its manifest.json is the completion marker) as the next version."""
    lake = lake or Lake.from_settings()
    manifest_uri = f"{output_uri}/{MANIFEST}"
    if not lake.exists(manifest_uri):
        raise CatalogError(f"{output_uri} has no {MANIFEST}: the engine did not finish; nothing to commit")
    manifest = lake.read_json(manifest_uri)
    if manifest.get("run_key") != run_key:
        raise CatalogError(f"{output_uri} was written by run {manifest.get('run_key')!r}, not {run_key!r}")
    return cat.commit_version(
        scene,
        name,
        run_key=run_key,
        uri=output_uri,
        usage=usage,
        modality=manifest.get("modality", "text"),
        labelled=manifest.get("labelled", True),
        record_count=int(manifest["records_out"]),
        quarantined_count=int(manifest.get("quarantined", 0)),
        char_count=_char_count(manifest),
        size_bytes=_dir_size(lake, f"{output_uri}/{DATA_DIR}"),
        parents=parents or [],
        recipe=recipe,
        stats={
            "records_in": manifest.get("records_in"),
            "accepted": manifest.get("accepted"),
            "quarantined": manifest.get("quarantined"),
            "dropped": manifest.get("dropped"),
            "inputs": manifest.get("inputs", []),
            "operators": manifest.get("operators", []),
            "quarantine_file": (manifest.get("files") or {}).get("quarantine"),
            **({"mix": manifest["mix"]} if "mix" in manifest else {}),
        },
        code_version=manifest.get("code_version") or code_version(),
        **attrs,
    )


def import_file(
    ref: str,
    path: str,
    *,
    usage: str,
    fmt: str = "auto",
    recipe: str = DEFAULT_IMPORT_RECIPE,
    source_label: str | None = None,
    field_map: dict[str, str] | None = None,
    max_reject_ratio: float = 0.1,
    note: str = "",
    tags: list[str] | None = None,
    run_key: str | None = None,
    modality: str = "text",
    labelled: bool = True,
    encoding: str = "utf-8",
    quality: bool = True,
    tokenizer: str | None = None,
    catalog: Catalog | None = None,
) -> dict[str, Any]:
    """Import a file or directory as the next version of an existing dataset; returns the version.

    ``quality``: also write the version's quality report and run its expectation suite (the result is
    kept with the version and gates publication); ``tokenizer`` counts its tokens (a tokenizer.json or
    a Hugging Face tokenizer directory; default: CJK characters + other words).

    ``run_key`` makes a retry idempotent (same key: the committed version is returned, nothing re-run)."""
    from spark_ops.run import run
    from tasks.data import version_uri
    from tasks.recipes import load_recipe

    scene, name = dataset_ref(ref)
    cat = catalog or Catalog.from_settings()
    if not cat.dataset_exists(scene, name):
        raise CatalogError(
            f"dataset {scene}/{name} does not exist; create it with: forgeflow dataset create {scene}/{name}"
        )
    src = Path(path)
    if "://" not in path and not src.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    run_key = run_key or f"import-{uuid.uuid4().hex[:16]}"
    existing = cat.find_version(scene, name, run_key)
    if existing is not None:
        return _version_summary(existing)
    lake = Lake.from_settings()
    steps = load_recipe(recipe)  # a bad recipe fails before Spark starts
    spec = ProcessSpec(
        run_key=run_key,
        inputs=[
            InputSource(
                uri=path if "://" in path else to_uri(src.resolve()),
                format=fmt,
                source=source_label,
                field_map=field_map or {},
                encoding=encoding,
            )
        ],
        usage=usage,
        modality=modality,
        labelled=labelled,
        operators=steps,
        output_uri=version_uri(scene, name, run_key, lake),
        max_reject_ratio=max_reject_ratio,
    )
    run(spec)
    q = assess(spec.output_uri, usage, run_key, tokenizer=tokenizer) if quality else None
    info = commit_from_manifest(
        cat,
        scene,
        name,
        run_key=run_key,
        output_uri=spec.output_uri,
        usage=usage,
        recipe=[s.model_dump() for s in steps],
        lake=lake,
        note=note,
        tags=list(tags or []),
        source=path,
        **quality_attrs(q),
    )
    return _version_summary(info)


def _part(text: str) -> dict[str, Any]:
    """``ref=general/a@V1,ratio=6`` / ``tags=lang:zh+len:short,count=500`` / ``ref=...,role=industry``."""
    part: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("ref", "tags", "ratio", "count", "role", "name"):
            raise ValueError(
                f"mix part {text!r}: expected comma-separated key=value with keys ref, tags, ratio, count, "
                "role, name (e.g. ref=general/web@V2,ratio=6 or tags=lang:zh+domain:law,count=500)"
            )
        if key == "tags":
            part["tags"] = [t for t in value.split("+") if t]
        elif key == "ratio":
            part["ratio"] = float(value)
        elif key == "count":
            part["count"] = int(value)
        else:
            part[key] = value.strip()
    return part


def mix_spec(
    target: str,
    parts: list[str | dict[str, Any]],
    *,
    run_key: str,
    by: str = "dataset",
    inputs: list[str] | None = None,
    preset: str | None = None,
    total: int | None = None,
    baseline: str | None = None,
    seed: int = 0,
    sampling: str | None = None,
    catalog: Catalog | None = None,
    lake: Lake | None = None,
) -> MixSpec:
    """The engine spec of a mix into ``target``: part references resolved to exact versions and URIs."""
    from tasks.data import version_uri
    from tasks.specs import MixSpec

    scene, name = dataset_ref(target)
    cat = catalog or Catalog.from_settings()

    def resolve(ref: str) -> dict[str, str]:
        info = cat.get_version(ref)  # @latest / @published become the exact @Vn mixed
        return {"ref": info.ref, "uri": info.uri}

    spec_parts = []
    for p in parts:
        part = _part(p) if isinstance(p, str) else dict(p)
        if "ref" in part:
            part.update(resolve(part["ref"]))
        spec_parts.append(part)
    return MixSpec(
        run_key=run_key,
        by=by,
        inputs=[resolve(r) for r in inputs or []],
        parts=spec_parts,
        preset=preset,
        total=total,
        baseline=baseline,
        seed=seed,
        sampling=sampling,
        output_uri=version_uri(scene, name, run_key, lake),
    )


def commit_mix(
    target: str,
    spec: MixSpec,
    *,
    note: str = "",
    quality: bool | dict[str, Any] = True,
    catalog: Catalog | None = None,
    lake: Lake | None = None,
) -> dict[str, Any]:
    """Register a finished mix as the next version of ``target`` (created when new); parents = the inputs."""
    scene, name = dataset_ref(target)
    cat = catalog or Catalog.from_settings()
    lake = lake or Lake.from_settings()
    manifest = lake.read_json(f"{spec.output_uri}/{MANIFEST}")
    cat.ensure_dataset(scene, name, note=note)
    existing = cat.find_version(scene, name, spec.run_key)
    # quality: True assesses here, a dict is the result of the quality engine (the DAG), False skips
    q = quality if isinstance(quality, dict) else None
    if quality is True and existing is None:
        q = assess(spec.output_uri, manifest["usage"], spec.run_key)
    info = existing or commit_from_manifest(
        cat,
        scene,
        name,
        run_key=spec.run_key,
        output_uri=spec.output_uri,
        usage=manifest["usage"],
        recipe=[],
        parents=manifest["parents"],
        lake=lake,
        note=note,
        source="mix of " + ", ".join(manifest["parents"]),
        **quality_attrs(q),
    )
    out = _version_summary(info)
    out["mix"] = {"parts": manifest["mix"]["parts"], "warnings": manifest["mix"]["warnings"]}
    return out


def mix(
    target: str,
    parts: list[str | dict[str, Any]],
    *,
    note: str = "",
    run_key: str | None = None,
    quality: bool = True,
    catalog: Catalog | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Mix two or more versions (by dataset or by tag) into the next version of ``target`` in this process.
    ``options``: by, inputs, preset, total, baseline, seed, sampling (see MixSpec)."""
    from spark_ops.mix import run

    scene, name = dataset_ref(target)
    cat = catalog or Catalog.from_settings()
    run_key = run_key or f"mix-{uuid.uuid4().hex[:16]}"
    if cat.dataset_exists(scene, name) and (done := cat.find_version(scene, name, run_key)) is not None:
        return _version_summary(done)
    lake = Lake.from_settings()
    spec = mix_spec(target, parts, run_key=run_key, catalog=cat, lake=lake, **options)
    run(spec)
    return commit_mix(target, spec, note=note, quality=quality, catalog=cat, lake=lake)


def publish_spec(
    info: VersionInfo,
    *,
    fmt: str = "standard",
    visibility: str = "private",
    validation_ratio: float | None = None,
    validation_count: int | None = None,
    seed: int = 0,
    run_key: str | None = None,
    lake: Lake | None = None,
) -> PublishSpec:
    """The export spec of a version. Its directory derives from the version, so a retry (or a run killed
    mid-way and started again) writes the same place and finds the one complete export."""
    from tasks.specs import PublishSpec

    lake = lake or Lake.from_settings()
    if (
        info.status == "published"
        and info.publication
        and (info.publication.get("format") != fmt or info.visibility != visibility)
    ):
        raise CatalogError(
            f"{info.ref} is already published as {info.publication.get('format')} ({info.visibility}); "
            "a published version does not change"
        )
    return PublishSpec(
        run_key=run_key or f"publish-{info.scene}-{info.dataset}-v{info.number}",
        version_uri=info.uri,
        ref=info.ref,
        format=fmt,
        visibility=visibility,
        validation_ratio=validation_ratio,
        validation_count=validation_count,
        seed=seed,
        output_uri=lake.uri("published", info.scene, info.dataset, f"v{info.number}"),
    )


def record_publication(
    info: VersionInfo, result: dict[str, Any], decision: dict[str, Any], catalog: Catalog | None = None
) -> dict[str, Any]:
    """Mark the version published with what the export engine wrote (one transaction)."""
    cat = catalog or Catalog.from_settings()
    publication = {k: v for k, v in result.items() if k not in ("already_published", "status")}
    publication["quality_gate"] = {k: decision.get(k) for k in ("reason", "failed")}
    if decision.get("override"):
        publication["quality_override"] = decision["override"]
    out = cat.publish(info.ref, publication=publication, visibility=result["visibility"])
    return {**_version_summary(out), "export": result}


def publish(
    ref: str,
    *,
    override_reason: str | None = None,
    user: str | None = None,
    catalog: Catalog | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Export a version atomically (``options``: fmt, visibility, validation_ratio, validation_count,
    seed, run_key) and mark it published; a failed quality suite needs an override reason."""
    from spark_ops.publish import run

    cat = catalog or Catalog.from_settings()
    info = cat.get_version(ref)
    decision = quality_gate(info, override_reason, user)
    result = run(publish_spec(info, **options))
    return record_publication(info, result, decision, cat)


def quality_gate(info: VersionInfo, override_reason: str | None, user: str | None) -> dict[str, Any]:
    """The publication decision of tasks.quality.gate; raises QualityBlocked (naming the failed
    expectations) when the suite failed or never ran and no override reason was given."""
    from tasks.quality import require_publishable

    return require_publishable(info.quality, override_reason, user)


def _version_summary(info: VersionInfo) -> dict[str, Any]:
    out = info.to_dict()
    qfile = (info.stats or {}).get("quarantine_file")
    out["accepted"] = (info.stats or {}).get("accepted", info.record_count)
    out["quarantine_uri"] = f"{info.uri}/{qfile}" if qfile else None
    return out


def show(ref: str, catalog: Catalog | None = None) -> dict[str, Any]:
    """A dataset (``SCENE/NAME``: attributes and its versions) or one version (``SCENE/NAME@Vn``)."""
    cat = catalog or Catalog.from_settings()
    scene, name, sel = parse_ref(ref)
    if sel is None:
        ds = cat.get_dataset(scene, name)
        ds["versions"] = [_version_summary(v) for v in cat.list_versions(scene, name)]
        return ds
    return _version_summary(cat.get_version(ref))


def list_datasets(scene: str | None = None, catalog: Catalog | None = None) -> list[dict[str, Any]]:
    cat = catalog or Catalog.from_settings()
    rows = cat.list_datasets()
    return [r for r in rows if scene is None or r["scene"] == scene.lower()]


def preview(ref: str, limit: int = 5, catalog: Catalog | None = None) -> dict[str, Any]:
    """The first ``limit`` records of a version (input order), read straight from its Parquet files."""
    import pyarrow.parquet as pq

    if not 1 <= limit <= PREVIEW_LIMIT:
        raise ValueError(f"limit must be between 1 and {PREVIEW_LIMIT}; got {limit}")
    cat = catalog or Catalog.from_settings()
    info = cat.get_version(ref)
    lake = Lake.from_settings()
    records: list[dict[str, Any]] = []
    for uri in sorted(lake.list(f"{info.uri}/{DATA_DIR}")):
        if not uri.endswith(".parquet"):
            continue
        with lake.fetch(uri) as local:
            table = pq.read_table(local)
        records.extend(table.slice(0, limit - len(records)).to_pylist())
        if len(records) >= limit:
            break
    quarantined: list[dict[str, Any]] = []
    qfile = (info.stats or {}).get("quarantine_file")
    if qfile and lake.exists(f"{info.uri}/{qfile}"):
        import json

        lines = lake.read_text(f"{info.uri}/{qfile}").splitlines()
        quarantined = [json.loads(line) for line in lines[:limit] if line.strip()]
    return {
        "ref": info.ref,
        "record_count": info.record_count,
        "records": records,
        "quarantined": quarantined,
    }


def lineage(ref: str, catalog: Catalog | None = None) -> dict[str, Any]:
    """The chain of a version: itself, then its parents recursively (each with recipe, operator counts and
    code version). Cycles cannot exist (a parent is committed before its child) but are guarded anyway."""
    cat = catalog or Catalog.from_settings()
    seen: set[str] = set()

    def node(r: str) -> dict[str, Any]:
        info = cat.get_version(r)
        entry: dict[str, Any] = {
            "ref": info.ref,
            "usage": info.usage,
            "status": info.status,
            "records": info.record_count,
            "quarantined": info.quarantined_count,
            "source": info.source,
            "recipe": [s.get("name") for s in info.recipe],
            "operators": [
                {k: op.get(k) for k in ("name", "kept", "dropped", "modified")}
                for op in (info.stats or {}).get("operators", [])
            ],
            "mix": (info.stats or {}).get("mix"),
            "code_version": info.code_version,
            "created_at": info.created_at,
            "parents": [],
        }
        if info.ref in seen:
            entry["cycle"] = True
            return entry
        seen.add(info.ref)
        entry["parents"] = [node(p) for p in info.parents]
        return entry

    return node(ref)


def models_trained_on(ref: str) -> list[dict[str, Any]]:
    """Registered model versions whose training run used ``ref`` (their ``dataset_ref`` tag, which the
    trainer sets beside the MLflow dataset input)."""
    from tasks.registry import client

    versions = client().search_model_versions(f"tags.dataset_ref = '{ref}'")
    return [
        {
            "model": f"models:/{mv.name}/{mv.version}",
            "run_id": mv.run_id,
            "method": (mv.tags or {}).get("method"),
        }
        for mv in sorted(versions, key=lambda m: (m.name, int(m.version)))
    ]


def format_lineage(tree: dict[str, Any]) -> str:
    """The lineage as an indented chain, newest first."""
    lines: list[str] = []

    def walk(n: dict[str, Any], depth: int) -> None:
        pad = "  " * depth + ("<- " if depth else "")
        recipe = " > ".join(n["recipe"]) or "(import only)"
        if n.get("mix"):
            m = n["mix"]
            shares = ", ".join(
                f"{p['part']} {p['taken']}/{p['available']} = {p['achieved_proportion']}" for p in m["parts"]
            )
            recipe = f"mix by {m['by']}, seed {m['seed']}: {shares}"
        lines.append(
            f"{pad}{n['ref']}  [{n['usage']}, {n['status']}]  {n['records']} records"
            + (f", {n['quarantined']} quarantined" if n["quarantined"] else "")
        )
        lines.append(f"{'  ' * depth}   recipe: {recipe}   code {n['code_version']}   {n['created_at']}")
        if n.get("source"):
            lines.append(f"{'  ' * depth}   source: {n['source']}")
        for op in n["operators"]:
            if op.get("dropped") or op.get("modified"):
                lines.append(
                    f"{'  ' * depth}     {op['name']}: kept {op['kept']}, dropped {op['dropped']}, "
                    f"modified {op['modified']}"
                )
        for p in n["parents"]:
            walk(p, depth + 1)

    walk(tree, 0)
    for m in tree.get("models") or []:
        lines.append(f"-> {m['model']}  ({m['method']}, MLflow run {m['run_id']})")
    return "\n".join(lines)


__all__ = [
    "commit_from_manifest",
    "create",
    "dataset_ref",
    "format_lineage",
    "import_file",
    "lineage",
    "list_datasets",
    "commit_mix",
    "mix",
    "mix_spec",
    "models_trained_on",
    "publish",
    "publish_spec",
    "quality_attrs",
    "assess",
    "quality_gate",
    "record_publication",
    "preview",
    "show",
]
