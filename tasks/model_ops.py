"""Operations on registered models: describe a version's lineage, merge a LoRA adapter into its base.

A model version registered by the training engine is a Hugging Face directory with ``forgeflow.json`` (the
resolved spec, the pinned base model, the MLflow run, the format: full | merged | peft_adapter | ...). An
unmerged LoRA adapter (``merge_lora: false``) is small and keeps the base swappable; merging on request makes
a standalone model a server can load without PEFT, registered as a new version linked to the adapter's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tasks.registry import (
    MODEL_REF,
    client,
    ensure_experiment,
    fetch_model,
    register_model_dir,
    resolve_version,
)
from tasks.version import code_version

FORGEFLOW_FILE = "forgeflow.json"


class ModelOpError(ValueError):
    """A model operation that cannot be done; the message says why and what to do."""


def _version(ref: str) -> tuple[str, str]:
    m = MODEL_REF.match(ref)
    if not m:
        raise ModelOpError(f"{ref!r} is not a registered model reference; expected models:/NAME/VERSION")
    return m["name"], resolve_version(m["name"], m["version"])


def model_info(ref: str) -> dict[str, Any]:
    """A registered version's lineage: its run, method, dataset, base model, format and code version."""
    name, version = _version(ref)
    c = client()
    mv = c.get_model_version(name, version)
    path = fetch_model(f"models:/{name}/{version}")
    meta = json.loads((path / FORGEFLOW_FILE).read_text()) if (path / FORGEFLOW_FILE).exists() else {}
    spec = meta.get("spec") or {}
    return {
        "ref": f"models:/{name}/{version}",
        "description": mv.description,
        "run_id": mv.run_id,
        "format": meta.get("format") or mv.tags.get("format"),
        "method": spec.get("method") or mv.tags.get("method"),
        "dataset_ref": spec.get("dataset_ref") or mv.tags.get("dataset_ref"),
        "base_model": meta.get("base_model") or spec.get("base_model"),
        "code_version": meta.get("code_version") or mv.tags.get("code_version"),
        "tags": dict(mv.tags),
        "source": mv.source,
    }


def merge_adapter(
    ref: str, register_as: str | None = None, experiment: str = "forgeflow-train"
) -> dict[str, Any]:
    """Merge the LoRA adapter of ``ref`` into the base it was trained on; register the result.

    The merged model is registered as a new version of ``register_as`` (default: the adapter's own name),
    tagged with the adapter version it came from, from an MLflow run of its own.
    """
    import mlflow
    from peft import PeftModel

    from trainers.modeling import load_base, save_model_dir

    name, version = _version(ref)
    adapter_dir = fetch_model(f"models:/{name}/{version}")
    meta = (
        json.loads((adapter_dir / FORGEFLOW_FILE).read_text())
        if (adapter_dir / FORGEFLOW_FILE).exists()
        else {}
    )
    if meta.get("format") != "peft_adapter":
        raise ModelOpError(
            f"models:/{name}/{version} is a {meta.get('format', 'model without forgeflow.json')}, not a LoRA "
            "adapter: only versions trained with method sft_lora and merge_lora false can be merged"
        )
    base_ref = meta.get("base_model")
    if not base_ref or base_ref == "tiny":
        raise ModelOpError(
            f"models:/{name}/{version}: its forgeflow.json names no stored base model to merge into"
        )
    base_dir = fetch_model(base_ref)
    base, tokenizer = load_base(base_dir)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    target_name = register_as or name
    tags = {
        "method": "merge_lora",
        "adapter": f"models:/{name}/{version}",
        "base_model": base_ref,
        "dataset_ref": (meta.get("spec") or {}).get("dataset_ref") or "",
        "code_version": code_version(),
    }
    with mlflow.start_run(
        experiment_id=ensure_experiment(experiment), run_name=f"merge-{name}-{version}", tags=tags
    ) as run:
        with tempfile.TemporaryDirectory(prefix="forgeflow-merge-") as tmp:
            out = Path(tmp) / "model"
            save_model_dir(
                merged,
                tokenizer,
                out,
                {
                    **meta,
                    "format": "merged",
                    "merged_from": f"models:/{name}/{version}",
                    "mlflow_run_id": run.info.run_id,
                },
            )
            mlflow.log_artifacts(str(out), "model")
        new_version = register_model_dir(
            run.info.run_id,
            "model",
            target_name,
            description=f"models:/{name}/{version} merged into {base_ref}",
            tags={**tags, "format": "merged"},
        )
    return {
        "model_ref": f"models:/{target_name}/{new_version}",
        "registered_model": target_name,
        "model_version": new_version,
        "mlflow_run_id": run.info.run_id,
        "merged_from": f"models:/{name}/{version}",
        "base_model": base_ref,
    }
