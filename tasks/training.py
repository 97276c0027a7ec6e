"""Training-stage callables behind the model_train DAG: resolve data, check health, build the spec, report."""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tasks.catalog import Catalog, CatalogError
from tasks.runners import prepare, read_result
from tasks.settings import get_settings
from tasks.specs import (
    METHOD_DEFAULTS,
    DistillConfig,
    DistributedConfig,
    Endpoint,
    HyperParams,
    PodResources,
    ResumeSpec,
    TinyModelConfig,
    TrainSpec,
    slug,
)
from tasks.storage import Lake

HP_PREFIX = "hp_"
TINY_PREFIX = "tiny_"
POD_PREFIX = "pod_"  # Params of the spec's resources (each node's pod on Kubernetes), besides gpus
DIST_PREFIX = "dist_"  # Params of the spec's distributed section (processes, nodes, DeepSpeed)


def dataset_from_trigger(params: dict[str, Any], triggering_events: Any) -> str:
    """The dataset reference: the ``dataset`` Param, or the version whose publication triggered the run.

    Empty for a retrain (``retrain_of``): the data is the earlier run's.
    """
    if params.get("retrain_of"):
        return ""
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
    """Resolve the dataset (usage and publication enforced) and write the TrainSpec to the lake.

    With the ``retrain_of`` Param the spec is the earlier run's instead, with the ``overrides`` Param applied.
    """
    if params.get("retrain_of"):
        return build_retrain_spec(params["retrain_of"], params.get("overrides") or {}, run_key)
    if params.get("overrides"):
        raise RetrainError(
            "overrides apply to a retrain: set retrain_of to the run to retrain, or set the hp_* Params instead"
        )
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
        chat_template=params.get("chat_template") or None,
        resume=resume_spec(params),
        distributed=DistributedConfig(
            **{k: v for k, v in _strip(params, DIST_PREFIX).items() if v is not None}
        ),
        resources=PodResources(
            gpus=params.get("gpus") or 0,
            **{k: v for k, v in _strip(params, POD_PREFIX).items() if v is not None and k != "gpus"},
        ),
        **distill_fields(params, method),
    )
    return {"spec_uri": prepare(spec, "trainers.train"), "dataset_ref": version.ref}


def distill_fields(params: dict[str, Any], method: str) -> dict[str, Any]:
    """``teacher`` and ``distill`` of the spec from the teacher_* / distill_* Params (method distill only)."""
    if method != "distill":
        return {}
    if not params.get("teacher_base_url") or not params.get("teacher_model"):
        raise ValueError(
            "method distill needs the teacher: set the teacher_base_url (an OpenAI-compatible /v1 URL, e.g. a "
            "model_serve service) and teacher_model Params"
        )
    teacher = Endpoint(
        base_url=params["teacher_base_url"],
        model=params["teacher_model"],
        api_key_env=params.get("teacher_api_key_env") or None,
        api_key_conn_id=params.get("teacher_api_key_conn_id") or None,
    )
    distill = {k: v for k, v in _strip(params, "distill_").items() if v is not None}
    return {"teacher": teacher, "distill": DistillConfig(**distill)}


def distill_params(section: str = "Distillation (method distill)") -> dict[str, Any]:
    """Params for the teacher endpoint and the main distillation settings."""
    from airflow.sdk import Param

    from tasks.dagkit import endpoint_key_params

    fields = DistillConfig.model_fields
    return {
        "teacher_base_url": Param(
            None,
            type=["null", "string"],
            section=section,
            description="Teacher: OpenAI-compatible base URL (…/v1).",
        ),
        "teacher_model": Param(
            None, type=["null", "string"], section=section, description="Teacher: model name it serves."
        ),
        **endpoint_key_params("teacher_", section),
        "distill_student": Param(
            fields["student"].default,
            enum=["full", "lora"],
            section=section,
            description=fields["student"].description or "Student training.",
        ),
        "distill_min_accept_ratio": Param(
            fields["min_accept_ratio"].default,
            type="number",
            minimum=0,
            maximum=1,
            section=section,
            description=fields["min_accept_ratio"].description or "Least share of teacher answers that pass.",
        ),
        "distill_concurrency": Param(
            fields["concurrency"].default,
            type="integer",
            minimum=1,
            maximum=64,
            section=section,
            description=fields["concurrency"].description or "Teacher requests in flight.",
        ),
    }


def resume_params(section: str = "Checkpoints and resume") -> dict[str, Any]:
    """Params read by resume_spec: where the run starts."""
    from airflow.sdk import Param

    return {
        "resume_from": Param(
            None,
            type=["null", "string"],
            section=section,
            description="Empty: a retried task continues from this run's newest checkpoint (if any). Otherwise a "
            "checkpoint URI (<output_uri>/checkpoints/checkpoint-<step>) or another run's output_uri.",
        ),
        "resume_mode": Param(
            "continue",
            enum=["weights_only", "continue", "continue_skip"],
            section=section,
            description="weights_only: new training from the checkpoint's weights; continue: weights, optimizer, "
            "scheduler and data position; continue_skip: continue, skipping resume_skip_samples samples.",
        ),
        "resume_skip_samples": Param(
            0, type="integer", minimum=0, section=section, description="continue_skip: samples to skip."
        ),
    }


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


# ---------------------------------------------------------------- retrain

RUN_KEY_TAG = "forgeflow.run_key"  # = trainers.train.RUN_KEY_TAG (kept in step by a test)
SPEC_ARTIFACT = "spec.json"
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# Fields a retrain does not take from overrides: the platform fills in the first three, and the data stays
# the earlier run's (training on other data is a new run with the 'dataset' Param).
RETRAIN_FIXED = ("run_key", "output_uri", "retrain_of", "train_uri", "eval_uri", "dataset_ref")


class RetrainError(ValueError):
    """A retrain that cannot start: the earlier run is not found, or the overrides do not validate."""


def find_training_run(ref: str) -> Any:
    """The MLflow run of an earlier training: by MLflow run id, or by run key (``model_train/<run_id>``, the
    Airflow run id alone, or a CLI run key); the latest such run when a key was retried."""
    from mlflow.exceptions import MlflowException

    from tasks.registry import client

    c, ref = client(), ref.strip()
    if RUN_ID_RE.match(ref):
        try:
            return c.get_run(ref)
        except MlflowException as e:
            raise RetrainError(f"retrain_of: no MLflow run with id {ref} ({e.message})") from None
    if "'" in ref:
        raise RetrainError(f"retrain_of: {ref!r} is not a run key or an MLflow run id (it contains a quote)")
    experiment_ids = [e.experiment_id for e in c.search_experiments()]
    keys = [ref] if ref.startswith("model_train/") else [ref, f"model_train/{ref}"]
    for key in keys:
        runs = c.search_runs(
            experiment_ids,
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            return runs[0]
    raise RetrainError(
        f"retrain_of: no training run with run key {' or '.join(repr(k) for k in keys)} in MLflow; give the "
        "Airflow run id of an earlier model_train run, its run key (model_train/<run id>) or its MLflow run id"
    )


def _source_spec(run: Any) -> dict[str, Any]:
    import json

    import mlflow

    from tasks.registry import client

    client()  # points mlflow at the configured tracking server
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=SPEC_ARTIFACT)
    except Exception as e:
        raise RetrainError(
            f"retrain_of: run {run.info.run_id} has no {SPEC_ARTIFACT} artifact, so its spec is unknown (it was "
            f"not made by trainers.train, or failed before training started): {e}"
        ) from None
    return json.loads(Path(path).read_text())


def _normalize_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested objects ({"hyperparams": {"learning_rate": 1e-5}}) and dotted keys ("hyperparams.epochs")."""
    if not isinstance(overrides, dict):
        raise RetrainError(
            f"overrides: expected a JSON object of TrainSpec fields, got {type(overrides).__name__}"
        )
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, last = str(key).split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = _merge(node[last], value)
        else:
            node[last] = value
    fixed = sorted(set(nested) & set(RETRAIN_FIXED))
    if fixed:
        raise RetrainError(
            f"overrides: {', '.join(fixed)} cannot be overridden in a retrain (the platform sets the run key and "
            "output; the data stays the earlier run's: train on other data with a new run and the 'dataset' Param)"
        )
    misplaced = sorted(k for k in nested if k in HyperParams.model_fields and k not in TrainSpec.model_fields)
    if misplaced:
        raise RetrainError(
            f"overrides: {', '.join(misplaced)} are hyperparameters; write them under 'hyperparams', e.g. "
            f'{{"hyperparams": {{"{misplaced[0]}": ...}}}} or "hyperparams.{misplaced[0]}"'
        )
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _pinned_base(base_model: str, run: Any) -> str:
    """``models:/NAME/latest`` as the version the earlier run used: its pinned base_model tag, else the
    newest version registered before that run started."""
    from tasks.registry import MODEL_REF, client

    m = MODEL_REF.match(base_model)
    if not m or m["version"] != "latest":
        return base_model
    tagged = MODEL_REF.match(run.data.tags.get("base_model", ""))
    if tagged and tagged["name"] == m["name"] and tagged["version"] != "latest":
        return tagged.string
    versions = [
        int(v.version)
        for v in client().search_model_versions(f"name='{m['name']}'")
        if v.creation_timestamp <= run.info.start_time
    ]
    return f"models:/{m['name']}/{max(versions)}" if versions else base_model


def _overridden(loc: list[str], changes: dict[str, Any]) -> bool:
    """Whether the field at ``loc`` (or an object above it) was set by the overrides."""
    node: Any = changes
    for part in loc:
        if not isinstance(node, dict):
            return True
        if part not in node:
            return False
        node = node[part]
    return bool(loc)


def build_retrain_spec(retrain_of: str, overrides: dict[str, Any], run_key: str) -> dict[str, Any]:
    """A new version of an earlier training: its resolved spec (spec.json in MLflow) with ``overrides``.

    The new run gets its own run key and output and records the run it retrains (TrainSpec.retrain_of, an
    MLflow tag of the new run). Overrides are TrainSpec fields, validated like any spec.
    """
    run = find_training_run(retrain_of)
    changes = _normalize_overrides(overrides or {})
    doc = _merge(_source_spec(run), changes)
    if "base_model" not in changes:
        doc["base_model"] = _pinned_base(str(doc.get("base_model", "")), run)
    teacher = doc.get("teacher") or {}
    if teacher.get("api_key") == "***" and not (teacher.get("api_key_env") or teacher.get("api_key_conn_id")):
        raise RetrainError(
            f"retrain of {run.info.run_id}: its teacher needed a key, which spec.json never held; say where it "
            'is with the override {"teacher.api_key_conn_id": CONN_ID} (an Airflow Connection) or '
            '{"teacher.api_key_env": VAR} (an environment variable of the engine)'
        )
    doc.update(
        run_key=run_key,
        output_uri=Lake.from_settings().uri("models", slug(run_key)),
        retrain_of=run.info.run_id,
    )
    try:
        spec = TrainSpec.model_validate(doc)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = [str(p) for p in err["loc"]]
            if not loc:  # a rule across fields
                where = "the spec with the overrides"
            else:
                where = "overrides" if _overridden(loc, changes) else f"the spec of run {run.info.run_id}"
            lines.append(f"  - {where}: {'.'.join(loc) or '(top level)'}: {err['msg']}")
        raise RetrainError(
            f"retrain of {run.info.run_id}: {len(lines)} invalid field(s)\n"
            + "\n".join(lines)
            + "\n(fix the overrides; a field of the earlier spec that no longer validates can be overridden too)"
        ) from None
    return {
        "spec_uri": prepare(spec, "trainers.train"),
        "dataset_ref": spec.dataset_ref,
        "retrain_of": run.info.run_id,
    }


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
        "diagnosis",
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
