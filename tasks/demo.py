"""The demo: the whole chain on the bundled data, driven through Airflow's REST API as a user would.

raw Tang poems → pretraining corpus version → tiny Llama pretrained (tokenizer trained locally) →
Chinese Alpaca pairs → SFT version, whose publication triggers model_train (LoRA on the base) →
BELLE test set → model_evaluate (ROUGE-L, BLEU-4 in MLflow) → model_serve behind a human approval,
approved through the API by the reviewer → a chat completion from the served model.
"""

from __future__ import annotations

import time
from typing import Any

from tasks import stack
from tasks.airflow_api import AirflowClient
from tasks.settings import get_settings

DAGS = ("dataset_process", "model_train", "model_evaluate", "model_serve")

TANG = [f"shared://corpus/tang_poems/poet.tang.{n}.json" for n in (0, 1000, 2000, 3000, 4000)]
CORPUS = {
    "scene": "general",
    "dataset": "zh-corpus",
    "usage": "pretrain",
    # two raw sources of different shapes: Tang poems (traditional) and Alpaca answers (simplified)
    "source": [
        *(
            {"uri": uri, "format": "json", "field_map": {"text": "paragraphs"}, "source": "tang-poems"}
            for uri in TANG
        ),
        {
            "uri": "shared://sft/alpaca_zh_demo.json",
            "format": "json",
            "field_map": {"text": "output"},
            "source": "alpaca-zh-answers",
        },
    ],
    "format": "json",
    "recipe": "standard-clean",
    "note": "Chinese pretraining corpus: Tang poems and Alpaca answers",
}
EVALSET = {
    "scene": "general",
    "dataset": "belle-eval",
    "usage": "model_test",
    "source": "shared://eval/belle_eval_set.jsonl",
    "format": "jsonl",
    "field_map": {"context": "question", "target": "std_answer"},
    "source_label": "belle",
    "recipe": "import-only",
    "note": "BELLE Chinese evaluation set",
    # 369 of the 1,000 questions have no reference answer: they cannot be scored and go to quarantine
    "max_reject_ratio": 0.4,
    # Its "no PII left" expectations fail on purpose-made example values inside the test questions
    # (13812345678, example@example.com, ...): masking them would change what is being tested.
    "override_reason": "PII matches are example values inside test questions (13812345678, "
    "example@example.com); kept verbatim so the questions stay as published",
}
SFT = {
    "scene": "general",
    "dataset": "alpaca-zh",
    "usage": "sft",
    "source": "shared://sft/alpaca_zh_demo.json",
    "format": "alpaca",
    "source_label": "alpaca-zh",
    "recipe": "standard-clean",
    "note": "Chinese Alpaca instruction pairs",
}
PRETRAIN = {
    "method": "pretrain",
    "base_model": "tiny",
    "dataset": "general/zh-corpus@published",
    "register_as": "forgeflow-tiny-base",
    "hp_epochs": 1,
    "hp_batch_size": 16,
    "hp_learning_rate": 5e-4,
    "hp_warmup_ratio": 0.05,
    "hp_max_seq_length": 256,
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_asset_run(api: AirflowClient, dag_id: str, after: str, timeout_s: float = 300) -> str:
    """The run of ``dag_id`` an Asset event started after ``after`` (an ISO timestamp)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for run in api.runs(dag_id):
            if run["run_type"] == "asset_triggered" and (run.get("run_after") or "") >= after:
                return run["dag_run_id"]
        time.sleep(3)
    raise TimeoutError(f"no asset-triggered run of {dag_id} within {timeout_s}s")


def run_chain(api: AirflowClient, reviewer: AirflowClient, max_eval_samples: int = 40) -> dict[str, Any]:
    """Drive the chain through the REST API; returns what each stage produced."""
    for dag_id in DAGS:
        api.wait_for_dag(dag_id)
        api.unpause(dag_id)
    say("DAGs parsed and unpaused: " + ", ".join(DAGS))

    say("dataset_process: Tang poems (pretrain) and BELLE test set (model_test) ...")
    corpus_run = api.trigger("dataset_process", CORPUS)
    eval_run = api.trigger("dataset_process", EVALSET)
    corpus = finish(api, "dataset_process", corpus_run, "publish_version")
    evalset = finish(api, "dataset_process", eval_run, "publish_version")
    for v in (corpus, evalset):
        say(f"  {v['ref']}: {v['record_count']} records ({v['quarantined_count']} quarantined), {v['usage']}")

    say("model_train: pretrain a tiny Llama from config on the corpus ...")
    base = finish(api, "model_train", api.trigger("model_train", PRETRAIN), "summarize")
    say(f"  {base['model_ref']} (MLflow run {base['mlflow_run_id']}), metrics {fmt(base['metrics'])}")

    say("dataset_process: Chinese Alpaca pairs (sft); publishing triggers model_train through the Asset ...")
    sft_run = api.run("dataset_process", api.trigger("dataset_process", SFT))
    sft = finish(api, "dataset_process", sft_run["dag_run_id"], "publish_version")
    say(f"  {sft['ref']}: {sft['record_count']} records ({sft['quarantined_count']} quarantined)")
    train_run = wait_asset_run(api, "model_train", sft_run["run_after"])
    say(f"  model_train run {train_run} started by the Asset event; LoRA fine-tuning on the base ...")
    chat = finish(api, "model_train", train_run, "summarize")
    say(f"  {chat['model_ref']} (MLflow run {chat['mlflow_run_id']}), metrics {fmt(chat['metrics'])}")

    say(f"model_evaluate: {chat['model_ref']} on {evalset['ref']} ({max_eval_samples} questions) ...")
    conf = {"model": chat["model_ref"], "dataset": evalset["ref"], "max_samples": max_eval_samples}
    ev = finish(api, "model_evaluate", api.trigger("model_evaluate", conf), "summarize")
    say(f"  metrics {fmt(ev['metrics'])} over {ev['n']} answers (MLflow run {ev['mlflow_run_id']})")

    say("model_serve: waiting for the approval gate ...")
    serve_run = api.trigger("model_serve", {"model": chat["model_ref"], "service_name": "tiny-chat"})
    detail = api.wait_for_hitl("model_serve", serve_run, "approve_deployment")
    say(f"  the gate asks: {detail.get('subject')}")
    say(f"  approving as '{reviewer.username}' through the REST API ...")
    reviewer.approve("model_serve", serve_run, "approve_deployment", ["Approve"])
    served = api.xcom("model_serve", serve_run, "smoke_test")
    return {
        "corpus": corpus,
        "evalset": evalset,
        "sft": sft,
        "base": base,
        "chat": chat,
        "evaluation": ev,
        "served": served,
        "train_run": train_run,
        "serve_run": serve_run,
    }


def run_demo(max_eval_samples: int = 40, keep_running: bool = True) -> int:
    s = get_settings()
    started = time.monotonic()
    say("starting Airflow (SQLite, LocalExecutor) and MLflow on 127.0.0.1 ...")
    stack.start(s, echo=say)
    creds = stack.credentials(s)
    api = AirflowClient(stack.airflow_url(s), "admin", creds["admin"])
    reviewer = AirflowClient(stack.airflow_url(s), "reviewer", creds["reviewer"])
    out = run_chain(api, reviewer, max_eval_samples)
    print_summary(s, out, (time.monotonic() - started) / 60)
    if not keep_running:
        stack.stop(s, echo=say)
    return 0


def finish(api: AirflowClient, dag_id: str, run_id: str, task_id: str) -> Any:
    api.wait(dag_id, run_id, timeout_s=1800)
    return api.xcom(dag_id, run_id, task_id)


def fmt(metrics: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in (metrics or {}).items() if isinstance(v, int | float))


def print_summary(s, out: dict[str, Any], minutes: float) -> None:
    corpus, evalset, sft, base, chat = out["corpus"], out["evalset"], out["sft"], out["base"], out["chat"]
    ev, served = out["evaluation"], out["served"]
    creds = stack.credentials(s)
    url = served["url"]
    print(
        f"""
================================ Forgeflow demo: done in {minutes:.1f} min ================================
Datasets      {corpus["ref"]} pretrain, {corpus["record_count"]} records | {sft["ref"]} sft, {sft["record_count"]} records
              | {evalset["ref"]} model_test, {evalset["record_count"]} records (catalogue: {s.catalog_url})
Models        {base["model_ref"]} (pretrain, MLflow run {base["mlflow_run_id"]})
              {chat["model_ref"]} (sft_lora, MLflow run {chat["mlflow_run_id"]})
Evaluation    {fmt(ev["metrics"])} on {ev["n"]} BELLE questions (MLflow run {ev["mlflow_run_id"]})
Service       {served["service"]} at {url} (backend: {served["backend"]}, model "{served["model"]}")
              Q: {served["prompt"]}
              A: {served["answer"]!r}
              curl {url}/chat/completions -H 'Content-Type: application/json' \\
                -d '{{"model": "{served["model"]}", "messages": [{{"role": "user", "content": "你好"}}]}}'
Airflow       {stack.airflow_url(s)}  user admin / {creds["admin"]}   (reviewer / {creds["reviewer"]})
MLflow        {stack.mlflow_url(s)}  (no login; bound to 127.0.0.1)
Stop          make stop
==========================================================================================================="""
    )
