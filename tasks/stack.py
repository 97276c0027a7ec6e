"""The embedded stack: Airflow 3 as `airflow standalone` runs it (SQLite, LocalExecutor) and an MLflow server, on 127.0.0.1.

Each component runs in its own process group, recorded under ``<home>/run/``; ``stop`` ends whole
groups (Airflow standalone leaves children behind on a plain SIGTERM), the engines the runner started,
and every model service.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tasks.settings import PROJECT_ROOT, Settings, get_settings

USERS = {"admin": "admin", "reviewer": "op"}


@dataclass
class Component:
    name: str
    cmd: list[str]
    health_url: str


def venv_bin(name: str) -> str:
    """An executable of the running interpreter's virtualenv (airflow, mlflow)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed in {sys.prefix}; run `make install`")
    return found


def credentials(s: Settings) -> dict[str, str]:
    """Passwords of the Airflow users, generated once per installation and kept in its home."""
    path = s.path("airflow") / "passwords.json"
    if path.exists():
        return json.loads(path.read_text())
    pw = {user: secrets.token_urlsafe(12) for user in USERS}
    path.write_text(json.dumps(pw))
    path.chmod(0o600)
    return pw


def _secret(s: Settings, name: str) -> str:
    path = s.path("airflow") / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def mlflow_url(s: Settings) -> str:
    return f"http://127.0.0.1:{s.mlflow_port}"


def airflow_url(s: Settings) -> str:
    return f"http://127.0.0.1:{s.airflow_port}"


def stack_env(s: Settings | None = None) -> dict[str, str]:
    """Environment of every stack process: Airflow configuration plus the Forgeflow settings."""
    s = s or get_settings()
    credentials(s)
    airflow_home = s.path("airflow")
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow_url(s)}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__BASE_URL": airflow_url(s),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": _secret(s, "api_secret"),
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(s, "jwt_secret"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "FORGEFLOW_HOME": str(s.home),
            "FORGEFLOW_MLFLOW_TRACKING_URI": mlflow_url(s),
            "FORGEFLOW_MLFLOW_ARTIFACT_ROOT": s.mlflow_artifact_root,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "NO_PROXY": "127.0.0.1,localhost",
            # MLflow's server otherwise starts ~8 huey job consumers (250 MB each) for features
            # Forgeflow does not use (server-side GenAI jobs)
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # airflow standalone starts its components as `airflow ...` from PATH
            "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),
        }
    )
    return env


def components(s: Settings) -> list[Component]:
    """MLflow, and Airflow's four components as ``airflow standalone`` runs them, but with the log
    servers off: standalone's scheduler and triggerer serve logs on every interface, and on one machine
    the API server reads task logs from disk anyway."""
    mlflow_dir = s.path("mlflow")
    airflow = venv_bin("airflow")
    health = f"{airflow_url(s)}/api/v2/monitor/health"
    return [
        Component(
            "mlflow",
            [
                venv_bin("mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                "--default-artifact-root",
                s.mlflow_artifact_root,
                "--host",
                "127.0.0.1",
                "--port",
                str(s.mlflow_port),
                "--workers",
                "1",
            ],
            f"{mlflow_url(s)}/health",
        ),
        Component("airflow-api-server", [airflow, "api-server"], ""),
        Component("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], ""),
        Component("airflow-dag-processor", [airflow, "dag-processor"], ""),
        Component("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"], health),
    ]


def _check_ports_free(s: Settings) -> None:
    """Fail early and clearly when another program holds a port this stack needs (and it is not ours)."""
    import socket

    for name, port, setting in (
        ("mlflow", s.mlflow_port, "FORGEFLOW_MLFLOW_PORT"),
        ("airflow-api-server", s.airflow_port, "FORGEFLOW_AIRFLOW_PORT"),
    ):
        pidfile = _pidfile(s, name)
        if pidfile.exists() and _alive(json.loads(pidfile.read_text())["pid"]):
            continue
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(
                    f"port {port} on 127.0.0.1 is in use by another program; {name} needs it. "
                    f"Stop that program or choose another port with {setting}=<port>."
                )


def migrate_airflow(env: dict[str, str], s: Settings) -> None:
    """Create or upgrade Airflow's metadata database (idempotent; quick when already current)."""
    log = s.path("logs") / "airflow-db-migrate.log"
    with open(log, "ab") as out:
        rc = subprocess.run(
            [venv_bin("airflow"), "db", "migrate"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc:
        raise RuntimeError(f"airflow db migrate failed (exit {rc}); see {log}")


def _pidfile(s: Settings, name: str) -> Path:
    return s.path("run") / f"{name}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start(s: Settings | None = None, timeout_s: float = 300, echo=print) -> None:
    """Start the components not yet running and wait until all answer their health checks."""
    s = s or get_settings()
    env = stack_env(s)
    _check_ports_free(s)
    migrate_airflow(env, s)
    for c in components(s):
        pidfile = _pidfile(s, c.name)
        if pidfile.exists() and _alive(json.loads(pidfile.read_text())["pid"]):
            echo(f"{c.name} already running")
            continue
        log = s.path("logs") / f"{c.name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                c.cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        pidfile.write_text(json.dumps({"pid": proc.pid, "pgid": proc.pid, "cmd": c.cmd, "log": str(log)}))
        echo(f"started {c.name} (pid {proc.pid}, log {log})")
    for c in components(s):
        if c.health_url:
            wait_healthy(c, s, timeout_s)
    echo(f"healthy: MLflow at {mlflow_url(s)}, Airflow at {airflow_url(s)}")


def wait_healthy(c: Component, s: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pid = json.loads(_pidfile(s, c.name).read_text())["pid"]
    last = ""
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise RuntimeError(f"{c.name} exited during start-up; see {s.home / 'logs' / (c.name + '.log')}")
        try:
            r = httpx.get(c.health_url, timeout=5)
            if r.status_code == 200 and (not c.name.startswith("airflow") or _airflow_healthy(r.json())):
                return
            last = r.text[:300]
        except httpx.HTTPError as e:
            last = str(e)
        time.sleep(2)
    raise TimeoutError(f"{c.name} not healthy after {timeout_s}s ({last}); see {s.home / 'logs'}")


def _airflow_healthy(doc: dict) -> bool:
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((doc.get(p) or {}).get("status") == "healthy" for p in parts)


def stop(s: Settings | None = None, echo=print) -> None:
    """End every model service, every engine the runner started, and the stack's process groups."""
    s = s or get_settings()
    from serving.services import stop_all

    for name in stop_all():
        echo(f"stopped service {name}")
    run_dir = s.home / "run"
    for pidfile in sorted(run_dir.glob("engines/*.json")) + sorted(run_dir.glob("*.json")):
        info = json.loads(pidfile.read_text())
        if _kill_group(info["pgid"]):
            echo(f"stopped {pidfile.stem} (process group {info['pgid']})")
        pidfile.unlink(missing_ok=True)


def _kill_group(pgid: int, grace_s: float = 20) -> bool:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    from tasks.procs import kill_tree

    kill_tree(pgid)  # the group and any children that left it (torchrun's ranks)
    return True


def status(s: Settings | None = None) -> dict[str, bool]:
    s = s or get_settings()
    out = {}
    for c in components(s):
        if not c.health_url:
            continue
        try:
            out[c.name] = httpx.get(c.health_url, timeout=3).status_code == 200
        except httpx.HTTPError:
            out[c.name] = False
    return out
