"""
### model_evaluate — test a registered model on a published test set, tracked in MLflow

Pins the model version, selects the test set (usage `model_test`, published), starts a temporary service
for the model (vLLM, or the fallback server where vLLM cannot start) unless an endpoint is given, sends
every question through the OpenAI-compatible API, scores the answers (ROUGE-L and BLEU-4 on
character-tokenised Chinese) and logs metrics and per-record predictions to MLflow. The temporary
service is stopped whatever happens (and has a TTL as a backstop).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, TriggerRule, dag, get_current_context, task

from tasks.dagkit import DEFAULT_ARGS, endpoint_key_params, engine_step, params_from_model, run_key
from tasks.evaluation import GEN_PREFIX
from tasks.specs import GenerationParams


@dag(
    dag_id="model_evaluate",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=2,
    tags=["forgeflow", "evaluation"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "model": Param(
            "models:/forgeflow-tiny-chat/latest",
            type="string",
            section="Model",
            description="Model under test: models:/NAME/VERSION (latest is pinned at start).",
        ),
        "endpoint_url": Param(
            None,
            type=["null", "string"],
            section="Model",
            description="Existing OpenAI-compatible base URL to test instead of starting a "
            "temporary service (e.g. an external API).",
        ),
        "endpoint_model": Param(
            None,
            type=["null", "string"],
            section="Model",
            description="Model name at that endpoint (default: the registered name).",
        ),
        **endpoint_key_params("endpoint_", section="Model"),
        "backend": Param(
            "auto",
            enum=["auto", "vllm", "fallback"],
            section="Model",
            description="Server of the temporary service: auto tries vLLM, then the fallback.",
        ),
        "service_ttl_minutes": Param(
            60,
            type="integer",
            minimum=1,
            section="Model",
            description="The temporary service stops after this long at the latest.",
        ),
        "dataset": Param(
            "general/belle-eval@published",
            type="string",
            section="Data",
            description="Test set SCENE/NAME@Vn (usage model_test, published).",
        ),
        "max_samples": Param(
            50,
            type=["integer", "null"],
            minimum=1,
            section="Data",
            description="Evaluate at most this many records (empty: all).",
        ),
        "concurrency": Param(
            2, type="integer", minimum=1, maximum=64, section="Data", description="Requests in flight."
        ),
        "experiment": Param(
            "forgeflow-evaluate",
            type="string",
            section="Data",
            description="MLflow experiment of the evaluation run.",
        ),
        **params_from_model(GenerationParams, prefix=GEN_PREFIX, section="Inference"),
    },
)
def model_evaluate():
    @task
    def resolve() -> dict:
        """Pin the model version and select the test set."""
        from tasks.evaluation import resolve

        return resolve(dict(get_current_context()["params"]))

    @task
    def build_service_spec(resolved: dict) -> str:
        """A temporary service for the model, unless an endpoint was given."""
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.evaluation import build_temp_serve_spec

        ctx = get_current_context()
        if ctx["params"]["endpoint_url"]:
            raise AirflowSkipException("testing the given endpoint; no temporary service")
        return build_temp_serve_spec(dict(ctx["params"]), run_key(ctx), resolved["model_ref"])

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def build_eval_spec(resolved: dict, serve_spec_uri: str | None) -> str:
        """The evaluation spec, pointed at the temporary service or the given endpoint."""
        from tasks.evaluation import build_eval_spec
        from tasks.runners import read_result

        ctx = get_current_context()
        service = read_result(serve_spec_uri) if serve_spec_uri else None
        return build_eval_spec(dict(ctx["params"]), run_key(ctx), resolved, service)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def stop_service(serve_spec_uri: str | None) -> None:
        """Stop the temporary service, whatever happened to the evaluation."""
        from tasks.evaluation import stop_temp_service

        stop_temp_service(serve_spec_uri)

    @task
    def summarize(eval_spec_uri: str) -> dict:
        """Metrics and the MLflow run of the evaluation."""
        from tasks.evaluation import summarize

        return summarize(eval_spec_uri)

    resolved = resolve()
    serve_spec = build_service_spec(resolved)
    served = engine_step(
        "serving.deploy", serve_spec, task_id="start_service", execution_timeout=timedelta(minutes=20)
    )
    eval_spec = build_eval_spec(resolved, serve_spec)
    served >> eval_spec
    evaluated = engine_step(
        "trainers.evaluate", eval_spec, task_id="evaluate", execution_timeout=timedelta(hours=6)
    )
    evaluated >> stop_service(serve_spec)
    evaluated >> summarize(eval_spec)


model_evaluate()
