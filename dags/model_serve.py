"""
### model_serve — deploy a registered model as an OpenAI-compatible service, after human approval

Pins the model version and briefs the reviewer with its latest evaluation (MLflow); a human approves
or rejects in the Airflow UI (Required actions) or through the REST API (HITL). On approval the model is
served by vLLM (CPU build here, CUDA with tensor parallelism in production) on 127.0.0.1 — or by the
fallback server where vLLM cannot start, which the result says — and answered a smoke-test chat
completion before the run succeeds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, get_current_context, task

from tasks.dagkit import DEFAULT_ARGS, engine_step, run_key

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"


@dag(
    dag_id="model_serve",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=2,
    tags=["forgeflow", "serving"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "model": Param(
            "models:/forgeflow-tiny-chat/latest",
            type="string",
            description="Model to serve: models:/NAME/VERSION (latest is pinned before approval).",
        ),
        "service_name": Param(
            "tiny-chat",
            type="string",
            pattern=NAME_PATTERN,
            description="Service name; an existing service of that name is replaced.",
        ),
        "served_model_name": Param(
            None, type=["null", "string"], description="Model name in the API (default: the registered name)."
        ),
        "backend": Param(
            "auto",
            enum=["auto", "vllm", "fallback"],
            description="auto: vLLM, or the fallback server where vLLM cannot start.",
        ),
        "max_model_len": Param(512, type="integer", minimum=16, description="Longest context accepted."),
        "ttl_minutes": Param(
            None,
            type=["integer", "null"],
            minimum=1,
            description="Stop the service after this many minutes (empty: keep running).",
        ),
    },
)
def model_serve():
    @task
    def brief() -> dict:
        """Pin the model version and gather its latest evaluation for the reviewer."""
        from tasks.serving import review_brief

        return review_brief(dict(get_current_context()["params"]))

    approve = ApprovalOperator(
        task_id="approve_deployment",
        subject="Deploy {{ ti.xcom_pull(task_ids='brief')['model_ref'] }} as {{ params.service_name }}?",
        body="{{ ti.xcom_pull(task_ids='brief')['brief_md'] }}",
        response_timeout=timedelta(days=3),
    )

    @task
    def build_spec(briefing: dict) -> str:
        """The serving spec for the approved model version."""
        from tasks.serving import build_serve_spec

        ctx = get_current_context()
        return build_serve_spec(dict(ctx["params"]), run_key(ctx), briefing["model_ref"])

    @task
    def smoke_test(spec_uri: str) -> dict:
        """A real chat completion through the new service."""
        from tasks.serving import smoke_test

        return smoke_test(spec_uri)

    briefing = brief()
    spec_uri = build_spec(briefing)
    briefing >> approve >> spec_uri
    deployed = engine_step(
        "serving.deploy", spec_uri, task_id="deploy", execution_timeout=timedelta(minutes=20)
    )
    deployed >> smoke_test(spec_uri)


model_serve()
