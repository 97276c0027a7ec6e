"""Training-stage callables behind the model_train DAG: resolve data, check health, build the spec, report."""

from __future__ import annotations

import shutil
from typing import Any

from tasks.catalog import Catalog, CatalogError
from tasks.runners import prepare, read_result
from tasks.settings import get_settings
from tasks.specs import (
    METHOD_DEFAULTS,
    DistributedConfig,
    HyperParams,
    ResumeSpec,
    TinyModelConfig,
    TrainSpec,
    slug,
)
from tasks.storage import Lake

HP_PREFIX = "hp_"
TINY_PREFIX = "tiny_"
DIST_PREFIX = "dist_"  # Params of the spec's distributed section (processes, nodes, DeepSpeed)


def dataset_from_trigger(params: dict[str, Any], triggering_events: Any) -> str:
    """The dataset reference: the ``dataset`` Param, or the version whose publication triggered the run."""
    if params.get("dataset"):
        return params["dataset"]
    for events in (triggering_events or {}).values():
        for event in reversed(list(events)):
            ref = (event.extra or {}).get("ref")
            if ref:
                return ref
    raise CatalogError(
        "no dataset given: set the 'dataset' Param (SCENE/NAME@Vn) or trigger the DAG by publishing a dataset"
    )


def health_check(min_free_gb: float = 2.0, gpus: int = 0) -> dict[str, Any]:
    """Before training: enough disk for checkpoints, a writable lake, and the GPUs asked for."""
    s = get_settings()
    free_gb = shutil.disk_usage(s.path()).free / 2**30
    if free_gb < min_free_gb:
        raise RuntimeError(
            f"only {free_gb:.1f} GB free under {s.home}; training needs at least {min_free_gb} GB"
        )
    lake = Lake.from_settings()
    probe = lake.uri("_health", "probe.txt")
    lake.write_text(probe, "ok")
    if lake.read_text(probe) != "ok":
        raise RuntimeError(f"the lake at {lake.root} did not read back what was written")
    lake.delete(probe)
    report: dict[str, Any] = {"free_gb": round(free_gb, 1), "lake": lake.root, "gpus_requested": gpus}
    if gpus:
        import torch  # only when GPUs are requested: the check must load CUDA to mean anything

        found = torch.cuda.device_count()
        if found < gpus:
            raise RuntimeError(f"{gpus} GPU(s) requested but {found} visible (check the node and drivers)")
        report["gpus"] = [torch.cuda.get_device_name(i) for i in range(found)]
    return report


def build_train_spec(params: dict[str, Any], run_key: str, dataset_ref: str) -> dict[str, Any]:
    """Resolve the dataset (usage and publication enforced) and write the TrainSpec to the lake."""
    method = params["method"]
    version = Catalog.from_settings().select_for(dataset_ref, method)
    overrides = {
        k: v for k, v in _strip(params, HP_PREFIX).items() if v is not None and k in HyperParams.model_fields
    }
    hyper = HyperParams(**{**METHOD_DEFAULTS.get(method, {}), **overrides})
    spec = TrainSpec(
        run_key=run_key,
        method=method,
        base_model=params["base_model"],
        tiny=TinyModelConfig(**_strip(params, TINY_PREFIX)),
        train_uri=version.uri,
        dataset_ref=version.ref,
        validation_split=params["validation_split"],
        hyperparams=hyper,
        output_uri=Lake.from_settings().uri("models", slug(run_key)),
        experiment=params["experiment"],
        register_as=params["register_as"] or None,
        merge_lora=params["merge_lora"],
        resume=resume_spec(params),
        distributed=DistributedConfig(
            **{k: v for k, v in _strip(params, DIST_PREFIX).items() if v is not None}
        ),
    )
    return {"spec_uri": prepare(spec, "trainers.train"), "dataset_ref": version.ref}


def resume_spec(params: dict[str, Any]) -> ResumeSpec:
    """Where the run starts: the ``resume_from`` Param (a checkpoint, or another run's output) with
    ``resume_mode`` and ``resume_skip_samples``; empty, this run's own newest checkpoint when there is one,
    so a retried task goes on from where a killed or stopped attempt saved last."""
    uri = (params.get("resume_from") or "").strip()
    if not uri:
        return ResumeSpec(from_uri="latest", if_missing="start")
    mode = params.get("resume_mode") or "continue"
    skip = int(params.get("resume_skip_samples") or 0) if mode == "continue_skip" else 0
    return ResumeSpec(from_uri=uri, mode=mode, skip_samples=skip)


def summarize(spec_uri: str) -> dict[str, Any]:
    """What the run produced, for XCom and the next DAG: MLflow run, model version, metrics."""
    r = read_result(spec_uri)
    keys = (
        "mlflow_run_id",
        "experiment_id",
        "model_uri",
        "registered_model",
        "model_version",
        "steps",
        "metrics",
    )
    out = {k: r.get(k) for k in keys}
    if r.get("registered_model") and r.get("model_version"):
        out["model_ref"] = f"models:/{r['registered_model']}/{r['model_version']}"
    return out


def _strip(params: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def hyperparam_params(section: str = "Hyperparameters") -> dict[str, Any]:
    """Params for every hyperparameter. Those whose seed default depends on the method default to empty
    (= the method's seed default) and list the defaults by method in their description."""
    from airflow.sdk import Param

    from tasks.dagkit import params_from_model

    params = params_from_model(HyperParams, prefix=HP_PREFIX, section=section)
    varying = {k for d in METHOD_DEFAULTS.values() for k in d}
    for name in sorted(varying):
        p = params[HP_PREFIX + name]
        by_method = ", ".join(
            f"{m} {METHOD_DEFAULTS[m].get(name, HyperParams.model_fields[name].default)}"
            for m in METHOD_DEFAULTS
        )
        schema = dict(p.schema)
        schema["type"] = [schema["type"], "null"] if isinstance(schema["type"], str) else schema["type"]
        schema["description"] = (
            f"{schema.get('description', name)} Empty: the method's seed default ({by_method})."
        )
        params[HP_PREFIX + name] = Param(None, **schema)
    return params


def distributed_params(section: str = "Distributed") -> dict[str, Any]:
    """Params for the spec's ``distributed`` section: DeepSpeed preset or config, processes, nodes."""
    from tasks.dagkit import params_from_model

    return params_from_model(DistributedConfig, prefix=DIST_PREFIX, section=section)
