"""The whole chain through Airflow, as `make demo` runs it: real Airflow, Spark, MLflow, training,
evaluation, serving (vLLM when its virtualenv exists, else the fallback server) and the HITL gate.

Then `forgeflow down` must leave no process of this installation behind.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import pytest

# ~11 minutes on an idle 2-core machine; the limit leaves room for a loaded one
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3000)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(home: Path) -> list[int]:
    """PIDs whose environment points at this Forgeflow home (servers, engines, Airflow, MLflow)."""
    marker = f"FORGEFLOW_HOME={home}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def stack_home(tmp_path_factory):
    from tasks import stack
    from tasks.settings import get_settings

    home = tmp_path_factory.mktemp("e2e") / "forgeflow"
    keys = ("FORGEFLOW_HOME", "FORGEFLOW_AIRFLOW_PORT", "FORGEFLOW_MLFLOW_PORT")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        {"FORGEFLOW_HOME": str(home), "FORGEFLOW_AIRFLOW_PORT": str(_free_port()),
         "FORGEFLOW_MLFLOW_PORT": str(_free_port())}
    )
    get_settings.cache_clear()
    s = get_settings()
    try:
        stack.start(s, timeout_s=600)
        yield s
    finally:
        stack.stop(s)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def test_chain_through_airflow(stack_home):
    from tasks import stack
    from tasks.airflow_api import AirflowApiError, AirflowClient
    from tasks.catalog import Catalog
    from tasks.demo import run_chain
    from tasks.registry import client

    s = stack_home
    creds = stack.credentials(s)
    api = AirflowClient(stack.airflow_url(s), "admin", creds["admin"])
    reviewer = AirflowClient(stack.airflow_url(s), "reviewer", creds["reviewer"])
    with pytest.raises(AirflowApiError, match="login as admin failed"):
        AirflowClient(stack.airflow_url(s), "admin", "wrong").run("model_serve", "x")

    out = run_chain(api, reviewer, max_eval_samples=12)

    # data: counts reconcile and versions are published in the catalogue
    cat = Catalog(s.catalog_url)
    assert out["evalset"]["record_count"] + out["evalset"]["quarantined_count"] == 1000
    assert out["sft"]["usage"] == "sft" and 900 <= out["sft"]["record_count"] <= 1000
    for key in ("corpus", "evalset", "sft"):
        v = cat.get_version(out[key]["ref"])
        assert v.status == "published" and v.quality and v.quality["validation"]["evaluated"] > 0
    # the evaluation set's PII expectations fail on example values; it was published with a recorded reason
    override = cat.get_version(out["evalset"]["ref"]).publication["quality_override"]
    assert override["reason"].startswith("PII matches are example values") and override["user"] == "admin"
    assert cat.get_version(out["sft"]["ref"]).quality["validation"]["success"] is True

    # training: the SFT run came from the Asset event and registered a model version on the base
    assert api.run("model_train", out["train_run"])["run_type"] == "asset_triggered"
    mlflow = client()
    base_run = mlflow.get_run(out["base"]["mlflow_run_id"])
    assert [m.step for m in mlflow.get_metric_history(base_run.info.run_id, "loss")]  # per-step curve
    chat = mlflow.get_model_version("forgeflow-tiny-chat", out["chat"]["model_ref"].rsplit("/", 1)[-1])
    assert chat.run_id == out["chat"]["mlflow_run_id"]

    # evaluation: real metrics in MLflow for that model version
    ev = out["evaluation"]
    assert ev["n"] == 12 and {"rouge_l", "bleu_4"} <= set(ev["metrics"])
    assert 0 <= ev["metrics"]["rouge_l"] <= 1
    assert mlflow.get_run(ev["mlflow_run_id"]).data.tags["model_ref"] == out["chat"]["model_ref"]

    # serving: approved through the API, then a live OpenAI-style endpoint
    detail = api.hitl_detail("model_serve", out["serve_run"], "approve_deployment")
    assert detail["chosen_options"] == ["Approve"] and detail["responded_by_user"]["name"] == "reviewer"
    served = out["served"]
    r = httpx.post(
        f"{served['url']}/chat/completions",
        json={"model": served["model"], "messages": [{"role": "user", "content": "你好"}], "max_tokens": 8},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


def test_stop_leaves_nothing_behind(stack_home):
    from tasks import stack

    stack.stop(stack_home)
    deadline = time.monotonic() + 30
    while (left := _processes_of(stack_home.home)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], f"processes left after stop: {left}"
