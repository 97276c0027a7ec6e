"""
### model_train — train or fine-tune a model on a published dataset version and register it in MLflow

One DAG for every method: pretrain (packed blocks), sft_full, sft_lora, prompt_tuning, reward_model
(pairwise loss on ranking data), dpo (TRL) and distill (SFT on a teacher's answers, checked by rules). Steps: resolve the dataset (its usage must fit the method and it must be
published) → health check → train (`python -m trainers.train SPEC`, a local process or a Kubernetes pod)
→ summary (MLflow run, registered model version, metrics).

Runs are triggered from the UI/REST API, or by the Asset `forgeflow://datasets/sft`: publishing an SFT
dataset version re-trains with the Param defaults below on that version (scheduled retraining).

Every run is a version of the task (run key `model_train/<run id>`). **Retrain**: set `retrain_of` to an
earlier run (its Airflow run id, run key or MLflow run id) and optionally `overrides` (TrainSpec fields,
e.g. `{"hyperparams": {"learning_rate": 1e-5}}`); the earlier run's resolved spec (its `spec.json` in
MLflow) trains again as a new version, tagged `forgeflow.retrain_of`. The data and the other Params are
then the earlier run's.

Monitoring: the MLflow run has the loss, learning rate, grad norm, throughput and eval loss/perplexity
curves, the configuration, system metrics (`system/*`: CPU, memory, disk, network; GPUs with
nvidia-ml-py) and `diagnosis.json` (loss spikes, overfitting, rising or noisy loss, too little warmup). A
NaN/inf loss stops the run; a failed run's task log ends with the recognised failures, the log line and
the remedy.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import get_args

from airflow.sdk import Asset, Param, dag, get_current_context, task

from tasks.assets import dataset_asset_name, dataset_asset_uri
from tasks.dagkit import DEFAULT_ARGS, engine_step, params_from_model, run_key
from tasks.specs import Method, PodResources, TinyModelConfig
from tasks.training import (
    POD_PREFIX,
    TINY_PREFIX,
    distill_params,
    distributed_params,
    hyperparam_params,
    resume_params,
)


@dag(
    dag_id="model_train",
    schedule=[Asset(name=dataset_asset_name("sft"), uri=dataset_asset_uri("sft"))],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["forgeflow", "training"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "method": Param(
            "sft_lora",
            enum=list(get_args(Method)),
            section="Task",
            description="Training method.",
        ),
        "base_model": Param(
            "models:/forgeflow-tiny-base/latest",
            type="string",
            section="Task",
            description="'tiny' (a Llama from config, tokenizer trained on the data), a Hugging "
            "Face model directory (local or s3://), or a registered version models:/NAME/VERSION.",
        ),
        "dataset": Param(
            None,
            type=["null", "string"],
            section="Data",
            description="Training data SCENE/NAME@Vn (published; usage must fit the method). "
            "Empty: the version whose publication triggered this run.",
        ),
        "validation_split": Param(
            0.05,
            type="number",
            minimum=0,
            maximum=0.5,
            section="Data",
            description="Share of the data held out for eval loss and perplexity.",
        ),
        "experiment": Param(
            "forgeflow-train", type="string", section="Task", description="MLflow experiment of the run."
        ),
        "register_as": Param(
            "forgeflow-tiny-chat",
            type="string",
            section="Task",
            description="Registered model name in MLflow; empty skips registration.",
        ),
        "merge_lora": Param(
            True,
            type="boolean",
            section="Task",
            description="Merge a LoRA adapter into its base before registering.",
        ),
        "retrain_of": Param(
            None,
            type=["null", "string"],
            section="Retrain",
            description="Retrain an earlier run: its Airflow run id (or run key model_train/<run id>, or MLflow "
            "run id). Its resolved spec trains again as a new version; method, data and the other Params are "
            "then ignored. Empty: a new training from the Params.",
        ),
        "overrides": Param(
            {},
            type="object",
            section="Retrain",
            description="With retrain_of: TrainSpec fields to change, nested or dotted, e.g. "
            '{"hyperparams": {"learning_rate": 1e-5, "epochs": 2}} or {"hyperparams.max_steps": 100}. '
            "Validated like any spec; the data cannot be changed.",
        ),
        "gpus": Param(
            0,
            type="integer",
            minimum=0,
            maximum=16,
            section="Resources",
            description="GPUs per node (one training process each); on Kubernetes each node's pod asks for "
            "them, and the health check fails when fewer are visible.",
        ),
        **{
            name: p
            for name, p in params_from_model(PodResources, prefix=POD_PREFIX, section="Resources").items()
            if name != POD_PREFIX + "gpus"
        },
        "chat_template": Param(
            None,
            type=["null", "string"],
            section="Task",
            description="Chat template: empty keeps the base tokenizer's own (ChatML when it has none); "
            "chatml, qwen2, llama3 (include/chat_templates/) or a .jinja path.",
        ),
        **hyperparam_params(),
        **resume_params(),
        **distributed_params(),
        **distill_params(),
        **params_from_model(TinyModelConfig, prefix=TINY_PREFIX, section="Tiny model (base_model = tiny)"),
    },
)
def model_train():
    @task
    def resolve_dataset() -> str:
        """The dataset version to train on: the Param, or the one that triggered this run."""
        from tasks.training import dataset_from_trigger

        ctx = get_current_context()
        return dataset_from_trigger(dict(ctx["params"]), ctx.get("triggering_asset_events"))

    @task
    def health_check() -> dict:
        """Disk space, a writable lake, CPU/memory, and the GPUs asked for (each allocates and multiplies)."""
        from tasks.training import health_check

        return health_check(gpus=get_current_context()["params"]["gpus"])

    @task
    def build_spec(dataset_ref: str) -> str:
        """Validate Params and dataset, write the TrainSpec to the lake."""
        from tasks.training import build_train_spec

        ctx = get_current_context()
        return build_train_spec(dict(ctx["params"]), run_key(ctx), dataset_ref)["spec_uri"]

    @task
    def summarize(spec_uri: str) -> dict:
        """The MLflow run, registered model version and metrics of the run."""
        from tasks.training import summarize

        return summarize(spec_uri)

    spec_uri = build_spec(resolve_dataset())
    health_check() >> spec_uri
    trained = engine_step("trainers.train", spec_uri, task_id="train", execution_timeout=timedelta(hours=24))
    summary = summarize(spec_uri)
    trained >> summary


model_train()
