"""Deploy engine without real models: command lines, backend choice, health wait and failure handling.

The "servers" here are small stdlib HTTP scripts, so each test runs in about a second.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from serving import deploy as dp
from serving import services
from tasks.settings import get_settings
from tasks.specs import ServeSpec

# A stand-in for a model server: answers GET /v1/models with the name given in argv[1] on port argv[2].
FAKE_SERVER = r"""
import http.server, json, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": name}]}).encode()
        self.send_response(200); self.send_header("content-type", "application/json"); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
print("fake server up", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return d


def spec_for(model_dir: Path, **kw: object) -> ServeSpec:
    return ServeSpec(run_key="r", service_name=kw.pop("service_name", "svc"), model=str(model_dir), **kw)


def test_vllm_plan_command_and_env(forgeflow_home: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VLLM_CACHE_ROOT", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(var, raising=False)
    settings = get_settings()
    spec = spec_for(model_dir, max_model_len=256, extra_args=["--enable-lora", "--lora-modules", "a=/x"])
    plan = dp.vllm_plan(spec, settings, model_dir, "served", 8123, pin=["taskset", "-c", "1"])
    argv = plan.argv
    assert argv[:3] == ["taskset", "-c", "1"]
    assert argv[3:6] == [str(settings.vllm_python), "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(argv[6::2], argv[7::2], strict=False))
    assert flags["--model"] == str(model_dir) and flags["--served-model-name"] == "served"
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8123" and flags["--max-model-len"] == "256"
    assert flags["--dtype"] in ("bfloat16", "float32")
    assert argv[-3:] == ["--enable-lora", "--lora-modules", "a=/x"]
    assert plan.env["HF_HUB_OFFLINE"] == "1"
    assert plan.env["VLLM_CACHE_ROOT"] == str(forgeflow_home / "cache" / "vllm")
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and plan.env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"


def test_vllm_plan_respects_dtype_in_extra_args(forgeflow_home: Path, model_dir: Path) -> None:
    spec = spec_for(model_dir, extra_args=["--dtype=float16"])
    argv = dp.vllm_plan(spec, get_settings(), model_dir, "s", 1, pin=[]).argv
    assert argv.count("--dtype") == 0 and "--dtype=float16" in argv
    assert argv[0] == str(get_settings().vllm_python)  # no pinning prefix when pin=[]


def test_fallback_plan_and_env(forgeflow_home: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    plan = dp.fallback_plan(spec_for(model_dir), get_settings(), model_dir, "s", 9000)
    assert plan.argv[:3] == [sys.executable, "-m", "serving.fallback_server"]
    env = dp.server_env(plan)
    assert env["PYTHONPATH"].endswith(os.pathsep + "/elsewhere") and env["HF_HUB_OFFLINE"] == "1"
    vllm_env = dp.server_env(dp.LaunchPlan("vllm", ["x"], {}))
    assert "PYTHONPATH" not in vllm_env  # never mix the platform's packages into .venv-vllm


def test_cpu_pinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dp.shutil, "which", lambda _: "/usr/bin/taskset")
    monkeypatch.setattr(dp.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    assert dp.cpu_pinning() == ["/usr/bin/taskset", "-c", "3"]
    monkeypatch.setattr(dp.os, "sched_getaffinity", lambda _: {0})
    assert dp.cpu_pinning() == []
    monkeypatch.setattr(dp.os, "sched_getaffinity", lambda _: {0, 1})
    monkeypatch.setattr(dp.shutil, "which", lambda _: None)
    assert dp.cpu_pinning() == []


def test_base_url_and_port_choice(model_dir: Path) -> None:
    assert dp.base_url("0.0.0.0", 80) == "http://127.0.0.1:80/v1"
    assert dp.base_url("127.0.0.1", 81) == "http://127.0.0.1:81/v1"
    assert dp.choose_port(spec_for(model_dir), "127.0.0.1") > 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(dp.DeployError, match=f"port {taken} on 127.0.0.1 is already in use"):
            dp.choose_port(spec_for(model_dir, port=taken), "127.0.0.1")


def test_resolve_model_dir_errors(tmp_path: Path, forgeflow_home: Path) -> None:
    with pytest.raises(dp.DeployError, match="cannot be resolved"):
        dp.resolve_model_dir(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(dp.DeployError, match="no config.json"):
        dp.resolve_model_dir(str(tmp_path / "empty"))


def fake_plan(backend: str, code: str, *args: str) -> dp.LaunchPlan:
    return dp.LaunchPlan(backend, [sys.executable, "-c", code, *args], {})


def test_start_and_wait_records_a_healthy_server(forgeflow_home: Path, model_dir: Path) -> None:
    spec = spec_for(model_dir, ttl_minutes=5)
    port = services.free_port()
    record = dp.start_and_wait(
        fake_plan("fallback", FAKE_SERVER, "svc", str(port)), spec, get_settings(), model_dir, "svc", port
    )
    try:
        assert record.state == "running" and record.url == f"http://127.0.0.1:{port}/v1"
        assert record.pgid == record.pid  # its own process group: survives the launching task
        assert record.pgid != os.getpgid(0)
        assert record.expires_at is not None
        assert services.read_record("svc") == record
        assert "fake server up" in Path(record.log_path).read_text()
    finally:
        services.stop_service("svc")


def test_start_and_wait_reports_an_exiting_server(forgeflow_home: Path, model_dir: Path) -> None:
    code = "import sys; print('ValueError: head size 16 is not supported'); sys.exit(3)"
    with pytest.raises(dp.ServerStartError, match=r"exited with code 3[\s\S]*head size 16 is not supported"):
        dp.start_and_wait(fake_plan("vllm", code), spec_for(model_dir), get_settings(), model_dir, "svc", 1)
    assert services.read_record("svc") is None


def test_start_and_wait_times_out(forgeflow_home: Path, model_dir: Path) -> None:
    # model_construct: the spec's own minimum (10 s) would make this test slow.
    spec = ServeSpec.model_construct(**{**spec_for(model_dir).model_dump(), "startup_timeout_s": 1})
    plan = fake_plan("vllm", "import time; print('loading', flush=True); time.sleep(600)")
    with pytest.raises(dp.ServerStartError, match="within startup_timeout_s=1s"):
        dp.start_and_wait(plan, spec, get_settings(), model_dir, "svc", services.free_port())
    assert services.list_services() == []


def test_auto_falls_back_with_the_vllm_log_tail(
    forgeflow_home: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_vllm = forgeflow_home / "vllm-python"
    forgeflow_home.mkdir(parents=True, exist_ok=True)
    fake_vllm.write_text("")
    monkeypatch.setenv("FORGEFLOW_VLLM_PYTHON", str(fake_vllm))
    get_settings.cache_clear()
    monkeypatch.setattr(
        dp, "vllm_plan",
        lambda *a, **k: fake_plan("vllm", "import sys; print('RuntimeError: no AVX512'); sys.exit(1)"),
    )
    monkeypatch.setattr(
        dp, "fallback_plan",
        lambda spec, settings, model_dir, served, port: fake_plan("fallback", FAKE_SERVER, served, str(port)),
    )
    result = dp.deploy(spec_for(model_dir))
    assert result["backend"] == "fallback" and "no AVX512" in result["fallback_reason"]
    assert "no AVX512" in (forgeflow_home / "services" / "svc" / "vllm-failed.log").read_text()
    assert services.read_record("svc").fallback_reason == result["fallback_reason"]  # type: ignore[union-attr]
    services.stop_service("svc")


def test_explicit_vllm_without_venv_is_an_error(
    forgeflow_home: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGEFLOW_VLLM_PYTHON", str(forgeflow_home / "absent" / "python"))
    get_settings.cache_clear()
    with pytest.raises(dp.DeployError, match="scripts/setup_vllm.sh"):
        dp.deploy(spec_for(model_dir, backend="vllm"))


def test_installation_setting_decides_auto(
    forgeflow_home: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGEFLOW_SERVE_BACKEND", "fallback")
    get_settings.cache_clear()
    monkeypatch.setattr(dp, "vllm_plan", lambda *a, **k: pytest.fail("auto must defer to the setting"))
    monkeypatch.setattr(
        dp, "fallback_plan",
        lambda spec, settings, model_dir, served, port: fake_plan("fallback", FAKE_SERVER, served, str(port)),
    )
    result = dp.deploy(spec_for(model_dir))
    assert result["backend"] == "fallback" and "fallback_reason" not in result
    services.stop_service("svc")
