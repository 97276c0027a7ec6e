"""MLflow as the model registry: configuration, registering a model directory, fetching a version.

A registered version's source is a plain Hugging Face model directory logged as a run artefact, so any
engine (trainer, vLLM, the fallback server) can use it after ``fetch_model``.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.settings import get_settings
from tasks.storage import Lake, local_path

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MODEL_REF = re.compile(r"^models:/(?P<name>[^/]+)/(?P<version>\d+|latest)$")


def client() -> MlflowClient:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = get_settings().mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str) -> str:
    """The experiment id, creating it with an artefact location under the configured root."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = get_settings().mlflow_artifact_root.rstrip("/")
    try:
        return c.create_experiment(name, artifact_location=f"{root}/{name}")
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def register_model_dir(
    run_id: str, artifact_path: str, name: str, description: str = "", tags: dict[str, str] | None = None
) -> str:
    """Register ``runs:/<run_id>/<artifact_path>`` (a logged model directory) as a new version of ``name``."""
    c = client()
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description=description or None)
    run = c.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = c.create_model_version(name, source=source, run_id=run_id, tags=tags or {}, description=description)
    for _ in range(120):
        mv = c.get_model_version(name, mv.version)
        if mv.status == "READY":
            break
        time.sleep(0.5)
    return str(mv.version)


def resolve_version(name: str, version: str) -> str:
    if version != "latest":
        return version
    versions = client().search_model_versions(f"name='{name}'")
    if not versions:
        raise LookupError(f"registered model {name!r} has no versions")
    return str(max(int(v.version) for v in versions))


def fetch_model(ref: str, cache_dir: Path | None = None) -> Path:
    """A local directory for ``models:/name/version``, a lake URI or a path. Downloads are cached."""
    m = MODEL_REF.match(ref)
    cache_root = cache_dir or get_settings().path("cache", "models")
    if m:
        name = m["name"]
        version = resolve_version(name, m["version"])
        target = cache_root / name / version
        if (target / ".complete").exists():
            return target
        mv = client().get_model_version(name, version)
        return _download(mv.source, target)
    if ref.startswith("s3://"):
        target = cache_root / "lake" / re.sub(r"[^A-Za-z0-9._-]+", "_", ref)
        if (target / ".complete").exists():
            return target
        return _download(ref, target)
    path = local_path(ref)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {ref} does not exist")
    return path


def _download(source: str, target: Path) -> Path:
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if source.startswith("s3://"):
        Lake(source, get_settings().s3_endpoint_url).get_dir(source, tmp)
    elif source.startswith("file://") or "://" not in source:
        shutil.copytree(local_path(source), tmp, dirs_exist_ok=True)
    else:
        import mlflow

        client()
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp))
        # download_artifacts nests the last path component; flatten it
        inner = tmp / Path(source.rstrip("/")).name
        if inner.is_dir() and len(list(tmp.iterdir())) == 1:
            for p in inner.iterdir():
                p.rename(tmp / p.name)
            inner.rmdir()
    (tmp / ".complete").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
