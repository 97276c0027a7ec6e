"""The serving engine: start (or replace) a model service with an OpenAI-compatible API on this machine.

    python -m serving.deploy SPEC_URI        # spec: tasks.specs.ServeSpec; writes result.json beside it

Backends: ``vllm`` (the CPU build in ``.venv-vllm``, see scripts/setup_vllm.sh), ``fallback``
(serving.fallback_server, transformers in this virtualenv) and ``auto`` (vLLM when its virtualenv exists
and the server becomes healthy, otherwise the fallback, with the reason in the log and the result).
A spec's ``backend: auto`` defers to the installation's ``FORGEFLOW_SERVE_BACKEND``, so CI can force the
fallback everywhere while an explicit ``vllm`` or ``fallback`` in a spec always wins.

The server is started detached (its own session and process group, output to
``<home>/services/<name>/server.log``) so it outlives the Airflow task that launched it; manage it with
``python -m serving.services``. The engine returns once ``GET /v1/models`` lists the served name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from serving import services
from serving.services import ServiceRecord
from tasks.settings import PROJECT_ROOT, Settings, get_settings
from tasks.specs import ServeSpec

log = logging.getLogger("forgeflow.serving.deploy")

LOG_TAIL_LINES = 40
FAILED_VLLM_LOG = "vllm-failed.log"  # kept beside server.log when auto falls back
HEALTH_POLL_S = 1.0
# Servers must never reach a model hub: weights come from the registry or the lake.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


class DeployError(RuntimeError):
    """The service could not be started; the message says why and what to do."""


class ServerStartError(DeployError):
    """A launched server exited or did not become healthy in time."""


@dataclass
class LaunchPlan:
    """Everything needed to start one server process."""

    backend: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def cpu_pinning() -> list[str]:
    """``taskset -c CORE`` for the vLLM server on hosts with two or more usable cores, else nothing.

    vLLM's CPU worker binds OpenMP threads to cores and busy-waits; sharing every core with Airflow, Spark
    and the client made its throughput erratic on small hosts, while one dedicated core kept it stable.
    The last core of this process's affinity set is used. This is deliberately not a setting: anyone who
    wants a different layout passes vLLM's own options (or a different FORGEFLOW_HOME host) instead.
    """
    taskset = shutil.which("taskset")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not taskset or len(cores) < 2:
        return []
    return [taskset, "-c", str(cores[-1])]


def cpu_dtype() -> str:
    """bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), else float32.

    vLLM's CPU attention supports float32, float16 and bfloat16; bfloat16 halves memory and is fast with
    those instructions, while emulated bfloat16 is slower than float32 on older CPUs.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def _has_option(args: list[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in args)


def vllm_plan(
    spec: ServeSpec, settings: Settings, model_dir: Path, served: str, port: int, pin: list[str] | None = None
) -> LaunchPlan:
    """The vLLM OpenAI server command line and environment for ``spec``."""
    # `python -m vllm.entrypoints.openai.api_server`: the `vllm` console script fails in the CPU build.
    argv = [
        *(cpu_pinning() if pin is None else pin),
        str(settings.vllm_python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", served,
        "--host", settings.serve_host,
        "--port", str(port),
        "--max-model-len", str(spec.max_model_len),
    ]
    if not _has_option(spec.extra_args, "--dtype"):
        argv += ["--dtype", cpu_dtype()]
    argv += spec.extra_args
    env = {
        # 1 GiB of KV cache is plenty for small models and leaves memory for the rest of the platform.
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        # Compiled graphs are cached here; a second start of the same model skips compilation.
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(settings.home / "cache" / "vllm")),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        **OFFLINE_ENV,
    }
    return LaunchPlan("vllm", argv, env)


def fallback_plan(spec: ServeSpec, settings: Settings, model_dir: Path, served: str, port: int) -> LaunchPlan:
    """The fallback server command line (this interpreter, so the platform's transformers) and environment."""
    argv = [
        sys.executable, "-m", "serving.fallback_server",
        "--model", str(model_dir),
        "--served-model-name", served,
        "--host", settings.serve_host,
        "--port", str(port),
        "--max-model-len", str(spec.max_model_len),
    ]
    pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return LaunchPlan("fallback", argv, {"PYTHONPATH": pythonpath, **OFFLINE_ENV})


def server_env(plan: LaunchPlan) -> dict[str, str]:
    env = {**os.environ, **plan.env}
    if plan.backend == "vllm":
        # .venv-vllm has its own packages; a PYTHONPATH into this repo's venv would mix two torch stacks.
        env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


def base_url(host: str, port: int) -> str:
    # A server bound to all interfaces is still reached through loopback from this machine.
    reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{reach}:{port}/v1"


def served_models(url: str, timeout_s: float = 3.0) -> list[str]:
    """Model ids listed by ``GET {url}/models``; empty when the server does not answer (yet)."""
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=timeout_s) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return [str(m.get("id")) for m in body.get("data", []) if isinstance(m, dict)]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def launch(plan: LaunchPlan, log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``plan`` detached: a new session (so also a new process group) that survives our exit."""
    with log_path.open("wb") as out:
        out.write(f"# forgeflow: {plan.backend} server\n# {' '.join(plan.argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=server_env(plan),
            start_new_session=True,
            close_fds=True,
        )


def start_and_wait(
    plan: LaunchPlan, spec: ServeSpec, settings: Settings, model_dir: Path, served: str, port: int
) -> ServiceRecord:
    """Launch ``plan``, record it in ``service.json`` at once, and wait until it serves ``served``.

    On failure the process group is stopped, the state removed and ServerStartError raised with the log tail.
    """
    directory = services.service_dir(spec.service_name)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / services.LOG_FILE
    started = services.utcnow()
    t0 = time.monotonic()
    proc = launch(plan, log_path, directory)
    expires = started + timedelta(minutes=spec.ttl_minutes) if spec.ttl_minutes else None
    record = ServiceRecord(
        name=spec.service_name,
        backend=plan.backend,
        url=base_url(settings.serve_host, port),
        pid=proc.pid,
        pgid=os.getpgid(proc.pid),
        port=port,
        model=spec.model,
        model_dir=str(model_dir),
        served_model_name=served,
        log_path=str(log_path),
        started_at=started.isoformat(),
        expires_at=expires.isoformat() if expires else None,
        proc_start=services.process_start_time(proc.pid),
    )
    # Written before the wait, so a deploy killed mid-start still leaves a service that `stop` can find.
    services.write_record(record)
    log.info("%s server for %r started (pid %d, port %d); log: %s", plan.backend, served, proc.pid, port, log_path)

    deadline = t0 + spec.startup_timeout_s
    next_note = t0 + 30
    while True:
        code = proc.poll()
        if code is not None:
            services.stop_service(spec.service_name)
            raise ServerStartError(
                f"the {plan.backend} server exited with code {code} before it was healthy "
                f"(log {log_path}); last lines:\n{log_tail(log_path)}"
            )
        if served in served_models(record.url):
            break
        now = time.monotonic()
        if now > deadline:
            services.stop_service(spec.service_name)
            raise ServerStartError(
                f"the {plan.backend} server did not list {served!r} at {record.url}/models within "
                f"startup_timeout_s={spec.startup_timeout_s}s (log {log_path}); raise startup_timeout_s if the "
                f"host is slow. Last lines:\n{log_tail(log_path)}"
            )
        if now > next_note:
            log.info("still waiting for the %s server (%.0f s so far)", plan.backend, now - t0)
            next_note = now + 30
        time.sleep(HEALTH_POLL_S)

    record.state = "running"
    services.write_record(record)
    log.info("%s server healthy after %.1f s at %s", plan.backend, time.monotonic() - t0, record.url)
    return record


def choose_port(spec: ServeSpec, host: str) -> int:
    if spec.port == 0:
        return services.free_port(host if host not in ("", "0.0.0.0") else "127.0.0.1")
    if not services.port_free(spec.port, host):
        raise DeployError(
            f"port {spec.port} on {host} is already in use; choose another port, or 0 for a free one "
            "(running services: python -m serving.services list)"
        )
    return spec.port


def resolve_model_dir(ref: str) -> Path:
    from tasks.registry import fetch_model

    try:
        model_dir = fetch_model(ref)
    except (FileNotFoundError, LookupError) as e:
        raise DeployError(f"model {ref!r} cannot be resolved: {e}") from e
    if not (model_dir / "config.json").is_file():
        raise DeployError(
            f"model {ref!r} resolved to {model_dir}, which is not a Hugging Face model directory "
            "(no config.json); deploy a registered version or a saved model directory"
        )
    return model_dir


def deploy(spec: ServeSpec, settings: Settings | None = None) -> dict[str, Any]:
    """Start ``spec``'s service (replacing a running one of the same name); returns the service record."""
    settings = settings or get_settings()
    backend = spec.backend if spec.backend != "auto" else settings.serve_backend
    served = spec.served_model_name or spec.service_name
    model_dir = resolve_model_dir(spec.model)
    if services.stop_service(spec.service_name):
        log.info("stopped the running service %r to replace it", spec.service_name)
    stale_failure = services.service_dir(spec.service_name) / FAILED_VLLM_LOG
    stale_failure.unlink(missing_ok=True)  # from an earlier deploy; would mislead whoever reads this one
    t0 = time.monotonic()

    fallback_reason: str | None = None
    if backend in ("vllm", "auto"):
        if not Path(settings.vllm_python).is_file():
            fallback_reason = (
                f"the vLLM virtualenv is missing ({settings.vllm_python} does not exist); "
                "create it with scripts/setup_vllm.sh"
            )
            if backend == "vllm":
                raise DeployError(f"backend 'vllm' requested but {fallback_reason}")
        else:
            port = choose_port(spec, settings.serve_host)
            try:
                record = start_and_wait(
                    vllm_plan(spec, settings, model_dir, served, port), spec, settings, model_dir, served, port
                )
                return _result(record, t0)
            except ServerStartError as e:
                if backend == "vllm":
                    raise
                fallback_reason = str(e)
                # Keep vLLM's log for diagnosis; the fallback writes a fresh server.log.
                failed = services.service_dir(spec.service_name) / services.LOG_FILE
                if failed.exists():
                    failed.replace(stale_failure)
        log.warning(
            "\n%s\nvLLM WILL NOT SERVE %r: %s\nStarting the FALLBACK server (transformers, one request at a "
            "time) instead.\n%s",
            "=" * 100, spec.service_name, fallback_reason, "=" * 100,
        )

    port = choose_port(spec, settings.serve_host)
    record = start_and_wait(
        fallback_plan(spec, settings, model_dir, served, port), spec, settings, model_dir, served, port
    )
    if fallback_reason:
        record.fallback_reason = fallback_reason
        services.write_record(record)
    return _result(record, t0)


def _result(record: ServiceRecord, t0: float) -> dict[str, Any]:
    out = record.to_dict()
    out["startup_s"] = round(time.monotonic() - t0, 1)
    if out.get("fallback_reason") is None:
        out.pop("fallback_reason", None)
    return out


def run(spec: ServeSpec) -> dict[str, Any]:
    """Engine entry point for ``tasks.engine.engine_main``."""
    return deploy(spec)


def main(argv: list[str] | None = None) -> int:
    from tasks.engine import engine_main

    return engine_main(ServeSpec, run, argv)


if __name__ == "__main__":
    sys.exit(main())
