"""Serving-stage callables behind the model_serve DAG: pin the model, brief the reviewer, deploy, smoke-test."""

from __future__ import annotations

from typing import Any

from tasks.evaluation import latest_metrics
from tasks.models import pin_model_ref, service_model_name
from tasks.runners import prepare, read_result
from tasks.specs import ServeSpec


def review_brief(params: dict[str, Any]) -> dict[str, Any]:
    """The pinned model and its latest evaluation, as the approval gate shows them to the reviewer."""
    model_ref = pin_model_ref(params["model"])
    evaluation = latest_metrics(model_ref)
    lines = [f"**Model**: `{model_ref}`", f"**Service**: `{params['service_name']}` ({params['backend']})"]
    if evaluation:
        metrics = ", ".join(f"{k} = {v:.4f}" for k, v in sorted(evaluation["metrics"].items()))
        lines.append(
            f"**Latest evaluation** (MLflow run `{evaluation['run_id']}` on {evaluation['dataset_ref']}): {metrics}"
        )
    else:
        lines.append("**This model version has not been evaluated.** Run model_evaluate first, or reject.")
    return {"model_ref": model_ref, "evaluation": evaluation, "brief_md": "\n\n".join(lines)}


def build_serve_spec(params: dict[str, Any], run_key: str, model_ref: str) -> str:
    spec = ServeSpec(
        run_key=run_key,
        service_name=params["service_name"],
        model=model_ref,
        backend=params["backend"],
        served_model_name=params.get("served_model_name") or service_model_name(model_ref),
        max_model_len=params["max_model_len"],
        ttl_minutes=params.get("ttl_minutes"),
    )
    return prepare(spec, "serving.deploy")


def smoke_test(spec_uri: str, prompt: str = "你好，请介绍一下你自己。") -> dict[str, Any]:
    """One real chat completion through the new service; fails the task if it does not answer."""
    import httpx

    service = read_result(spec_uri)
    resp = httpx.post(
        f"{service['url']}/chat/completions",
        json={
            "model": service["served_model_name"],
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 48,
            "temperature": 0.3,
        },
        timeout=120,
    )
    resp.raise_for_status()
    answer = resp.json()["choices"][0]["message"]["content"]
    return {
        "service": service["name"] if "name" in service else service.get("service_name"),
        "url": service["url"],
        "backend": service["backend"],
        "model": service["served_model_name"],
        "prompt": prompt,
        "answer": answer,
    }


def stop(service_name: str) -> bool:
    from serving.services import stop_service

    return stop_service(service_name)
