"""Training-stage callables behind the model_train DAG: resolve data, check health, build the spec, report."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

from tasks.catalog import Catalog, CatalogError
from tasks.runners import prepare, read_result
from tasks.settings import get_settings
from tasks.specs import METHOD_DEFAULTS, HyperParams, TinyModelConfig, TrainSpec, slug
from tasks.storage import Lake

HP_PREFIX = "hp_"
TINY_PREFIX = "tiny_"


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


class HealthCheckFailed(RuntimeError):
    """The node cannot run the training as asked; the message lists every problem found and what to do."""


def health_check(min_free_gb: float = 2.0, gpus: int = 0, min_free_memory_gb: float = 1.0) -> dict[str, Any]:
    """Before training: disk space, a writable lake, host CPU/memory, and the GPUs asked for, each usable.

    Every check runs, so one error lists all the problems; the report (what was found) goes to XCom.
    """
    s = get_settings()
    lake = Lake.from_settings()
    report: dict[str, Any] = {"lake": lake.root, "gpus_requested": gpus}
    problems = (
        _disk(s.path(), min_free_gb, report)
        + _lake_writable(lake, report)
        + _host(min_free_memory_gb, report)
    )
    if gpus:
        problems += _gpus(gpus, report)
    if problems:
        raise HealthCheckFailed(
            f"health check failed on {platform.node()} ({len(problems)} problem(s)):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return report


def _disk(home: Path, min_free_gb: float, report: dict[str, Any]) -> list[str]:
    free_gb = shutil.disk_usage(home).free / 2**30
    report.update(free_gb=round(free_gb, 1), disk_path=str(home))
    if free_gb < min_free_gb:
        return [
            f"only {free_gb:.1f} GB free under {home}; training needs at least {min_free_gb} GB for checkpoints "
            "and the model (free space, or point FORGEFLOW_HOME at a larger disk)"
        ]
    return []


def _lake_writable(lake: Lake, report: dict[str, Any]) -> list[str]:
    probe = lake.uri("_health", f"probe-{platform.node()}-{os.getpid()}.txt")
    try:
        lake.write_text(probe, "ok")
        readback = lake.read_text(probe)
        lake.delete(probe)
    except Exception as e:
        report["lake_writable"] = False
        return [
            f"the lake at {lake.root} is not writable: {type(e).__name__}: {e} (check FORGEFLOW_LAKE_URI and its credentials)"
        ]
    report["lake_writable"] = readback == "ok"
    if readback != "ok":
        return [f"the lake at {lake.root} did not read back what was written"]
    return []


def _host(min_free_memory_gb: float, report: dict[str, Any]) -> list[str]:
    import psutil

    mem = psutil.virtual_memory()
    report["cpu"] = {
        "logical_cores": psutil.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    report["memory"] = {
        "total_gb": round(mem.total / 2**30, 1),
        "available_gb": round(mem.available / 2**30, 1),
    }
    if mem.available / 2**30 < min_free_memory_gb:
        return [
            f"only {mem.available / 2**30:.1f} GB of {mem.total / 2**30:.1f} GB memory available; training needs "
            f"at least {min_free_memory_gb} GB (stop other work on the node or give the pod more memory)"
        ]
    return []


def _gpus(requested: int, report: dict[str, Any]) -> list[str]:
    """Each requested GPU visible, and usable: an allocation and a matmul checked against the CPU."""
    import torch  # only when GPUs are requested: the check must load CUDA to mean anything

    report["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        why = (
            f"this PyTorch ({torch.__version__}) is built without CUDA"
            if torch.version.cuda is None
            else "no NVIDIA driver or device is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}; check nvidia-smi on the node "
            "and the pod's nvidia.com/gpu limit)"
        )
        return [f"{requested} GPU(s) requested but CUDA is not available: {why}"]
    found = torch.cuda.device_count()
    if found < requested:
        return [
            f"{requested} GPU(s) requested but {found} visible (check the node, its drivers and CUDA_VISIBLE_DEVICES)"
        ]
    report["gpus"], problems = [], []
    for i in range(requested):
        info: dict[str, Any] = {"index": i}
        report["gpus"].append(info)
        try:
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            info.update(
                name=props.name,
                capability=f"{props.major}.{props.minor}",
                total_gb=round(total / 2**30, 1),
                free_gb=round(free / 2**30, 1),
            )
            info["matmul_max_error"] = _matmul_probe(torch, i)
        except Exception as e:
            problems.append(
                f"GPU {i} ({info.get('name', 'unknown')}) is visible but not usable: {type(e).__name__}: {e}"
            )
            continue
        if not info["matmul_max_error"] < 0.05:
            problems.append(
                f"GPU {i} ({info['name']}) computes wrong results: a 256x256 matmul differs from the CPU by "
                f"{info['matmul_max_error']} (faulty device or driver; drain the node)"
            )
    return problems


def _matmul_probe(torch: Any, index: int) -> float:
    """Largest relative error of a GPU matmul against the CPU (TF32 allows ~1e-3)."""
    g = torch.Generator().manual_seed(index)
    a = torch.randn(256, 256, generator=g)
    expected = a @ a
    got = (a.to(f"cuda:{index}") @ a.to(f"cuda:{index}")).cpu()
    torch.cuda.synchronize(index)
    err = ((got - expected).abs().max() / expected.abs().max()).item()
    return float(err) if err == err else float("inf")  # NaN counts as wrong


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
    )
    return {"spec_uri": prepare(spec, "trainers.train"), "dataset_ref": version.ref}


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
