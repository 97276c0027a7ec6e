"""Evaluation-stage callables behind the model_evaluate DAG."""

from __future__ import annotations

from typing import Any

from tasks.catalog import Catalog
from tasks.models import pin_model_ref, service_model_name
from tasks.runners import prepare, read_result
from tasks.specs import Endpoint, EvalSpec, GenerationParams, ServeSpec, slug
from tasks.storage import Lake

GEN_PREFIX = "gen_"


def resolve(params: dict[str, Any]) -> dict[str, Any]:
    """Pin the model version and select the test set (usage model_test, published)."""
    version = Catalog.from_settings().select_for(params["dataset"], "evaluate")
    return {
        "model_ref": pin_model_ref(params["model"]),
        "dataset_ref": version.ref,
        "dataset_uri": version.uri,
    }


def build_temp_serve_spec(params: dict[str, Any], run_key: str, model_ref: str) -> str:
    """A short-lived service for the model under test (stopped by the DAG, and by TTL as a backstop)."""
    spec = ServeSpec(
        run_key=run_key,
        service_name=f"eval-{slug(run_key)}"[:63].rstrip("-"),
        model=model_ref,
        backend=params["backend"],
        served_model_name=service_model_name(model_ref),
        ttl_minutes=params["service_ttl_minutes"],
    )
    return prepare(spec, "serving.deploy")


def build_eval_spec(
    params: dict[str, Any], run_key: str, resolved: dict[str, Any], service: dict[str, Any] | None
) -> str:
    if service:
        endpoint = Endpoint(base_url=service["url"], model=service["served_model_name"])
    else:
        if not params.get("endpoint_url"):
            raise ValueError("no endpoint: set 'endpoint_url' or let the DAG start a temporary service")
        endpoint = Endpoint(
            base_url=params["endpoint_url"],
            model=params.get("endpoint_model") or service_model_name(resolved["model_ref"]),
            api_key_env=params.get("endpoint_api_key_env") or None,
            api_key_conn_id=params.get("endpoint_api_key_conn_id") or None,
        )
    gen = {k[len(GEN_PREFIX) :]: v for k, v in params.items() if k.startswith(GEN_PREFIX)}
    spec = EvalSpec(
        run_key=run_key,
        endpoint=endpoint,
        dataset_uri=resolved["dataset_uri"],
        dataset_ref=resolved["dataset_ref"],
        max_samples=params["max_samples"],
        concurrency=params["concurrency"],
        generation=GenerationParams(**gen),
        experiment=params["experiment"],
        model_ref=resolved["model_ref"],
        output_uri=Lake.from_settings().uri("evaluations", slug(run_key)),
    )
    return prepare(spec, "trainers.evaluate")


def summarize(spec_uri: str) -> dict[str, Any]:
    r = read_result(spec_uri)
    return {k: r.get(k) for k in ("mlflow_run_id", "metrics", "n", "failed", "predictions_uri")}


def latest_metrics(model_ref: str, experiment: str = "forgeflow-evaluate") -> dict[str, Any] | None:
    """The newest evaluation of ``model_ref`` in MLflow, or None when it was never evaluated."""
    from tasks.registry import client

    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.model_ref = '{model_ref}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    return {
        "run_id": run.info.run_id,
        "metrics": dict(run.data.metrics),
        "dataset_ref": run.data.tags.get("dataset_ref"),
    }


def stop_temp_service(serve_spec_uri: str | None) -> None:
    """Stop the temporary service of an evaluation run (nothing to do when none was started)."""
    if not serve_spec_uri:
        return
    from serving.services import stop_service

    spec = ServeSpec.model_validate(Lake.from_settings().read_json(serve_spec_uri))
    stop_service(spec.service_name)
