"""Real servers: the deploy engine starts the fallback server (and vLLM when .venv-vllm exists), a client
chats with it over HTTP, and the services CLI stops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving import services
from tasks.settings import PROJECT_ROOT, get_settings
from tasks.specs import ServeSpec

pytestmark = pytest.mark.slow


def chat(url: str, model: str, **extra: object) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, **extra}
    resp = httpx.post(f"{url}/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in group ``pgid`` (vLLM runs an API, an engine and a worker)."""
    total_kb = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(rest[2]) != pgid:
                continue
            status = (entry / "status").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kb / 1024


def run_engine(spec: ServeSpec, spec_path: Path) -> dict:
    """``python -m serving.deploy SPEC`` in a subprocess, as the local runner does; returns result.json."""
    spec_path.write_text(spec.model_dump_json())
    proc = subprocess.run(
        [sys.executable, "-m", "serving.deploy", str(spec_path)],
        cwd=PROJECT_ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=spec.startup_timeout_s + 60,
    )
    result = json.loads((spec_path.parent / "result.json").read_text())
    assert proc.returncode == 0, f"{result}\n{proc.stderr[-3000:]}"
    return result


def test_fallback_engine_serves_chat_and_outlives_the_engine(forgeflow_home: Path, tiny_model_dir: Path) -> None:
    spec = ServeSpec(
        run_key="t1", service_name="tiny-fb", model=str(tiny_model_dir), backend="fallback",
        served_model_name="tiny", ttl_minutes=30,
    )
    result = run_engine(spec, forgeflow_home.parent / "spec.json")
    print(f"\nfallback startup: {result['startup_s']} s")

    assert result["status"] == "success" and result["backend"] == "fallback"
    assert result["url"] == f"http://127.0.0.1:{result['port']}/v1"
    assert "fallback_reason" not in result
    # The engine process has exited; the server it started must still answer.
    listed = httpx.get(f"{result['url']}/models", timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["tiny"]
    body = chat(result["url"], "tiny", temperature=0.3, seed=7)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Same seed, same answer.
    again = chat(result["url"], "tiny", temperature=0.3, seed=7)
    assert again["choices"][0]["message"]["content"] == body["choices"][0]["message"]["content"]
    bad = httpx.post(
        f"{result['url']}/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2},
        timeout=30,
    )
    assert bad.status_code == 400 and "n=2" in bad.json()["error"]["message"]
    assert "FALLBACK SERVER" in Path(result["log_path"]).read_text()

    (status,) = services.list_services()
    assert status.alive and status.record.state == "running" and not status.expired

    stop = subprocess.run(
        [sys.executable, "-m", "serving.services", "stop", "tiny-fb"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert stop.returncode == 0, stop.stderr
    assert not services.pid_alive(result["pid"], result["proc_start"])
    assert services.list_services() == []


def test_auto_without_vllm_falls_back_and_replaces(
    forgeflow_home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.deploy import deploy

    monkeypatch.setenv("FORGEFLOW_VLLM_PYTHON", str(forgeflow_home / "no-such-venv" / "bin" / "python"))
    get_settings.cache_clear()
    spec = ServeSpec(run_key="t2", service_name="tiny-auto", model=str(tiny_model_dir), startup_timeout_s=300)
    first = deploy(spec)
    second = deploy(spec)  # same name: the first server is stopped and replaced

    assert second["backend"] == "fallback"
    assert "vLLM virtualenv is missing" in second["fallback_reason"]
    assert not services.pid_alive(first["pid"], first["proc_start"])
    assert services.pid_alive(second["pid"], second["proc_start"])
    assert chat(second["url"], "tiny-auto")["choices"][0]["finish_reason"] in ("stop", "length")
    record = services.read_record("tiny-auto")
    assert record is not None and record.fallback_reason == second["fallback_reason"]


@pytest.mark.vllm
def test_vllm_engine_serves_chat(forgeflow_home: Path, tiny_model_dir: Path) -> None:
    vllm_python = get_settings().vllm_python
    if not Path(vllm_python).is_file():
        pytest.skip(f"{vllm_python} does not exist; create .venv-vllm with scripts/setup_vllm.sh")
    spec = ServeSpec(
        run_key="t3", service_name="tiny-vllm", model=str(tiny_model_dir), backend="vllm",
        served_model_name="tiny", startup_timeout_s=600,
    )
    result = run_engine(spec, forgeflow_home.parent / "spec.json")
    assert result["backend"] == "vllm", result

    t0 = time.monotonic()
    body = chat(result["url"], "tiny", temperature=0)
    first_request_s = time.monotonic() - t0
    rss = group_rss_mb(result["pgid"])
    print(f"\nvLLM startup: {result['startup_s']} s; RSS of the process group: {rss:.0f} MB; "
          f"first chat request: {first_request_s:.2f} s")
    assert body["model"] == "tiny"
    assert body["usage"]["completion_tokens"] > 0

    assert services.stop_service("tiny-vllm")
    assert not services.pid_alive(result["pid"], result["proc_start"])
