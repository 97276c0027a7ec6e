"""Training recipes: a TrainSpec as YAML, with the data named the way a user names it.

``forgeflow train SPEC.yaml`` and the bundled ``include/recipes/train/*.yaml`` use this format: every field of
:class:`~tasks.specs.TrainSpec` except the ones the platform fills in (``run_key``, ``train_uri``,
``eval_uri``, ``dataset_ref``, ``output_uri``; each may still be given), plus a ``data`` section::

    method: sft_lora
    data:
      train: ../shared/data/sft/alpaca_en_demo.json   # a catalogue ref SCENE/NAME@Vn, a lake URI or a path
      format: alpaca        # raw files: imported onto the canonical schema first (quarantine as usual)
      max_records: 200      # use the first N records (debug runs)
      eval: null            # optional test set, same forms
    hyperparams: {max_steps: 20}

Relative paths are looked up from the current directory, then from the project root (so the bundled recipes
run from anywhere). Catalogue references must be published and their usage must fit the method, as in the
model_train DAG. A raw file is imported once per content and format into the cache (``FORGEFLOW_HOME/cache``).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.catalog import ALLOWED_USAGE, REF_RE, Catalog
from tasks.settings import PROJECT_ROOT, get_settings
from tasks.specs import InputFormat, InputSource, ProcessSpec, TrainSpec, slug
from tasks.storage import Lake

TRAIN_RECIPES_DIR = PROJECT_ROOT / "include" / "recipes" / "train"
FILLED_IN = ("run_key", "train_uri", "eval_uri", "dataset_ref", "output_uri")


class TrainRecipeError(ValueError):
    """A training recipe that cannot be used; the message names the file and the field."""


class DataSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: str = Field(
        description="Training data: a catalogue ref SCENE/NAME@Vn, a lake URI or a local path."
    )
    eval: str | None = Field(default=None, description="Optional evaluation data, same forms as train.")
    format: InputFormat | None = Field(
        default=None,
        description="Format of a raw file (alpaca, sharegpt, preference, txt, ...): it is imported onto the "
        "canonical schema first. Empty: the data is already canonical (a dataset version, Parquet or JSONL).",
    )
    max_records: int | None = Field(default=None, ge=1, description="Use the first N training records.")


def recipe_path(name_or_path: str) -> Path:
    """A recipe by path, or by name from include/recipes/train/ (``debug-sft-lora``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = TRAIN_RECIPES_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in TRAIN_RECIPES_DIR.glob("*.yaml")))
    raise TrainRecipeError(f"training recipe {name_or_path!r} not found (a path, or one of: {names})")


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key path in a YAML document, for error messages."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (str(i),)] = v.start_mark.line + 1
                walk(v, path + (str(i),))

    walk(yaml.compose(text), ())
    return lines


def _validation_message(path: Path, text: str, err: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    lines = _key_lines(text)
    out = []
    for e in err.errors():
        loc = prefix + tuple(str(p) for p in e["loc"])
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = f"{path}:{line}" if line else str(path)
        out.append(f"{where}: {'.'.join(loc) or '(top level)'}: {e['msg']}")
    return "\n".join(out)


def local_file(value: str) -> Path | None:
    """An existing path for ``value``: as given (absolute or from the current directory), else from the
    project root; None when neither exists."""
    p = Path(value).expanduser()
    for candidate in (p, PROJECT_ROOT / p) if not p.is_absolute() else (p,):
        if candidate.exists():
            return candidate.resolve()
    return None


def import_raw(path: Path, fmt: str, usage: str) -> str:
    """Import a raw file onto the canonical schema with the Spark engine, once per content + format."""
    from spark_ops.run import run as spark_run

    digest = hashlib.sha256()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
    key = f"{slug(path.stem)}-{fmt}-{usage}-{digest.hexdigest()[:16]}"
    target = get_settings().path("cache", "train-data") / key
    if (target / "manifest.json").exists():
        return str(target)
    spec = ProcessSpec(
        run_key=f"train-import-{key}",
        inputs=[InputSource(uri=str(path), format=fmt)],
        usage=usage,
        operators=[],
        output_uri=str(target),
    )
    spark_run(spec)
    return str(target)


def resolve_data(value: str, fmt: str | None, method: str, field: str) -> tuple[str, str | None]:
    """(uri, dataset_ref) of one data source; the catalogue enforces usage and publication."""
    m = REF_RE.match(value)
    if m and m["version"] and not local_file(value):
        version = Catalog.from_settings().select_for(value, "evaluate" if field == "eval" else method)
        return version.uri, version.ref
    if "://" in value:
        if fmt:
            raise TrainRecipeError(f"data.{field}: format applies to local raw files, not to {value}")
        return value, None
    path = local_file(value)
    if path is None:
        raise TrainRecipeError(
            f"data.{field}: {value} is neither a catalogue reference SCENE/NAME@Vn nor an existing path "
            f"(looked in {Path.cwd()} and {PROJECT_ROOT})"
        )
    if fmt:
        usage = "model_test" if field == "eval" else ALLOWED_USAGE[method][0]
        return import_raw(path, fmt, usage), None
    return str(path), None


def load_train_recipe(name_or_path: str, overrides: dict[str, Any] | None = None) -> TrainSpec:
    """The TrainSpec of a recipe file, data resolved, platform fields filled in, ``overrides`` applied
    (dotted keys, e.g. ``{"hyperparams.max_steps": 5}``)."""
    path = recipe_path(name_or_path)
    text = path.read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise TrainRecipeError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise TrainRecipeError(f"{path}: expected a mapping of TrainSpec fields")
    for dotted, value in (overrides or {}).items():
        node = doc
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    if "method" not in doc:
        raise TrainRecipeError(f"{path}: 'method' is required (one of {', '.join(ALLOWED_USAGE)})")
    data_doc = doc.pop("data", None)
    if data_doc is not None:
        try:
            data = DataSource.model_validate(data_doc)
        except ValidationError as e:
            raise TrainRecipeError(_validation_message(path, text, e, ("data",))) from None
        method = str(doc["method"])
        if method not in ALLOWED_USAGE:
            raise TrainRecipeError(f"{path}: method {method!r} is not one of {', '.join(ALLOWED_USAGE)}")
        doc["train_uri"], ref = resolve_data(data.train, data.format, method, "train")
        doc.setdefault("dataset_ref", ref)
        if data.eval:
            doc["eval_uri"], _ = resolve_data(data.eval, data.format, method, "eval")
        if data.max_records:
            doc.setdefault("max_records", data.max_records)
    elif "train_uri" not in doc:
        raise TrainRecipeError(f"{path}: give the training data as data.train (or train_uri)")
    run_key = doc.setdefault(
        "run_key", f"cli-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    doc.setdefault("output_uri", Lake.from_settings().uri("models", slug(run_key)))
    try:
        return TrainSpec.model_validate(doc)
    except ValidationError as e:
        raise TrainRecipeError(_validation_message(path, text, e)) from None
