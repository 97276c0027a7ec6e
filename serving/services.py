"""Model services on this machine: their state files, liveness, stopping and TTL reaping.

Each service started by ``serving.deploy`` has a directory ``<home>/services/<name>/`` with
``service.json`` (a :class:`ServiceRecord`) and ``server.log``. The server runs in its own session and
process group, so it outlives the Airflow task that launched it; stopping signals the whole group
(vLLM forks engine workers into it).

State files can go stale (a server crashed, the machine rebooted, a PID was reused); every function here
checks the recorded process is still the one that was started before it signals anything.

This module is imported by DAG files, so it uses the standard library only (settings load lazily).

CLI::

    python -m serving.services list [--json]
    python -m serving.services stop NAME
    python -m serving.services stop --all
    python -m serving.services reap
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATE_FILE = "service.json"
LOG_FILE = "server.log"
STOP_GRACE_S = 15.0


@dataclass
class ServiceRecord:
    """What ``service.json`` holds about one running (or starting) service."""

    name: str
    backend: str  # "vllm" or "fallback"
    url: str  # OpenAI-compatible base URL, http://127.0.0.1:PORT/v1
    pid: int
    pgid: int
    port: int
    model: str  # the reference the service was deployed from (models:/name/version, URI or path)
    model_dir: str  # local model directory the server loaded
    served_model_name: str
    log_path: str
    started_at: str  # ISO 8601, UTC
    expires_at: str | None = None  # ISO 8601, UTC; None: no TTL
    # Not "status": the engine result already uses that key for success|failed.
    state: str = "starting"  # "starting" until healthy, then "running"
    proc_start: int | None = None  # start time of pid in clock ticks (Linux), guards against PID reuse
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServiceRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def expired(self, now: datetime | None = None) -> bool:
        if not self.expires_at:
            return False
        return (now or utcnow()) >= datetime.fromisoformat(self.expires_at)


@dataclass
class ServiceStatus:
    """A record plus what is true right now."""

    record: ServiceRecord
    alive: bool
    expired: bool


def utcnow() -> datetime:
    return datetime.now(UTC)


def services_root(root: Path | None = None) -> Path:
    """``<home>/services`` unless ``root`` is given (tests)."""
    if root is not None:
        return root
    from tasks.settings import get_settings  # lazy: keeps this module stdlib-only at import time

    return get_settings().home / "services"


def service_dir(name: str, root: Path | None = None) -> Path:
    return services_root(root) / name


def read_record(name: str, root: Path | None = None) -> ServiceRecord | None:
    """The record of ``name``, or None when there is none or it cannot be read."""
    path = service_dir(name, root) / STATE_FILE
    try:
        return ServiceRecord.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        # A half-written or hand-edited file must not block stop/deploy; say so and treat it as absent.
        print(f"serving.services: ignoring unreadable state file {path}: {e}", file=sys.stderr)
        return None


def write_record(record: ServiceRecord, root: Path | None = None) -> Path:
    """Write ``service.json`` atomically (a reader never sees half a file)."""
    directory = service_dir(record.name, root)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=2))
    os.replace(tmp, path)
    return path


def remove_record(name: str, root: Path | None = None) -> None:
    """Forget a service. The log stays for post-mortems until the name is deployed again."""
    with contextlib.suppress(FileNotFoundError):
        (service_dir(name, root) / STATE_FILE).unlink()


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux /proc), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after the last ')' are fixed.
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[19])  # field 22 overall


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _reap_child(pid: int) -> None:
    """Collect the exit status when ``pid`` is our own child (deploy, tests), so it is not left a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int, proc_start: int | None = None) -> bool:
    """Whether ``pid`` runs and, when ``proc_start`` is known, is still the process we started."""
    if pid <= 0:
        return False
    _reap_child(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if _is_zombie(pid):
        return False
    if proc_start is not None:
        current = process_start_time(pid)
        if current is not None and current != proc_start:
            return False  # the PID was reused by an unrelated process
    return True


def record_alive(record: ServiceRecord) -> bool:
    return pid_alive(record.pid, record.proc_start)


def list_services(root: Path | None = None) -> list[ServiceStatus]:
    """All services with a state file, sorted by name, with liveness and TTL state."""
    base = services_root(root)
    if not base.is_dir():
        return []
    now = utcnow()
    out = []
    for directory in sorted(p for p in base.iterdir() if p.is_dir()):
        record = read_record(directory.name, root)
        if record is not None:
            out.append(ServiceStatus(record, record_alive(record), record.expired(now)))
    return out


def _group_has_live_members(pgid: int) -> bool:
    """Whether a non-zombie process of group ``pgid`` exists (zombies still answer ``killpg(pgid, 0)``)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[2]) == pgid and rest[0] != "Z":
            return True
    return False


def terminate_group(pid: int, pgid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group, wait up to ``grace_s`` for all of it to exit, then SIGKILL what is left.

    The whole group is awaited, not just the leader: vLLM's engine workers can outlive the API process.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap_child(pid)
            if not _group_has_live_members(pgid):
                return
            time.sleep(0.1)


def stop_service(name: str, root: Path | None = None, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop ``name`` and remove its state. Returns whether a live process was stopped.

    A stale record (process gone or PID reused) is removed without signalling anything.
    """
    record = read_record(name, root)
    if record is None:
        return False
    was_alive = record_alive(record)
    if was_alive:
        terminate_group(record.pid, record.pgid, grace_s)
    remove_record(name, root)
    return was_alive


def stop_all(root: Path | None = None, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop every service; returns the names that had a live process."""
    return [s.record.name for s in list_services(root) if stop_service(s.record.name, root, grace_s)]


def reap(root: Path | None = None, now: datetime | None = None) -> dict[str, list[str]]:
    """Stop services whose TTL has passed and drop state files of services whose process is gone."""
    now = now or utcnow()
    expired, stale = [], []
    for status in list_services(root):
        name = status.record.name
        if status.record.expired(now):
            stop_service(name, root)
            expired.append(name)
        elif not status.alive:
            remove_record(name, root)
            stale.append(name)
    return {"expired": expired, "stale": stale}


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers (uvicorn, vLLM) bind with SO_REUSEADDR; without it here, TIME_WAIT left by a just-stopped
        # server would make a free port look taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free on ``host``. Another process could take it before the server binds;
    deploy detects that as a failed start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.services", description="Manage model services.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list services with liveness and expiry")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_stop = sub.add_parser("stop", help="stop a service (or all)")
    p_stop.add_argument("name", nargs="?", help="service name")
    p_stop.add_argument("--all", action="store_true", help="stop every service")
    sub.add_parser("reap", help="stop expired services, drop state of dead ones")
    args = parser.parse_args(argv)

    if args.command == "list":
        statuses = list_services()
        if args.json:
            print(json.dumps([{**s.record.to_dict(), "alive": s.alive, "expired": s.expired} for s in statuses]))
            return 0
        if not statuses:
            print(f"no services under {services_root()}")
            return 0
        print(f"{'NAME':<24} {'BACKEND':<9} {'STATE':<8} {'URL':<30} {'PID':>7}  EXPIRES")
        for s in statuses:
            r = s.record
            state = ("expired" if s.expired else r.state) if s.alive else "dead"
            print(f"{r.name:<24} {r.backend:<9} {state:<8} {r.url:<30} {r.pid:>7}  {r.expires_at or '-'}")
        return 0
    if args.command == "stop":
        if args.all == bool(args.name):
            parser.error("stop takes a service NAME or --all (not both)")
        if args.all:
            stopped = stop_all()
            print(f"stopped: {', '.join(stopped) or 'none running'}")
            return 0
        if read_record(args.name) is None:
            print(f"no service named {args.name!r} under {services_root()}", file=sys.stderr)
            return 1
        print(f"{args.name}: {'stopped' if stop_service(args.name) else 'was not running; state removed'}")
        return 0
    result = reap()
    print(f"expired and stopped: {', '.join(result['expired']) or 'none'}; "
          f"stale state removed: {', '.join(result['stale']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
