"""Service state files, liveness, stop and TTL reaping, with throwaway processes instead of servers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from serving import services
from serving.services import ServiceRecord


def make_record(name: str, pid: int, *, ttl_s: float | None = None, proc_start: int | None = None) -> ServiceRecord:
    now = services.utcnow()
    return ServiceRecord(
        name=name, backend="fallback", url="http://127.0.0.1:1/v1", pid=pid, pgid=pid, port=1,
        model="/m", model_dir="/m", served_model_name=name, log_path="/dev/null",
        started_at=now.isoformat(),
        expires_at=(now + timedelta(seconds=ttl_s)).isoformat() if ttl_s is not None else None,
        proc_start=services.process_start_time(pid) if proc_start is None else proc_start,
    )


def wait_dead(pid: int, timeout_s: float = 5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not services.pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_record_round_trip_ignores_unknown_fields(tmp_path: Path) -> None:
    record = make_record("svc", 123, ttl_s=60, proc_start=5)
    path = services.write_record(record, tmp_path)
    data = json.loads(path.read_text())
    data["added_by_a_newer_version"] = True
    path.write_text(json.dumps(data))
    assert services.read_record("svc", tmp_path) == record
    assert not list(tmp_path.glob("svc/*.tmp"))  # written atomically through a temp file


def test_unreadable_state_is_treated_as_absent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / services.STATE_FILE).write_text("{ half a file")
    assert services.read_record("broken", tmp_path) is None
    assert services.list_services(tmp_path) == []
    assert "ignoring unreadable state file" in capsys.readouterr().err


def test_liveness_detects_exit_and_pid_reuse(tmp_path: Path, spawn) -> None:
    proc = spawn()
    record = make_record("live", proc.pid)
    services.write_record(record, tmp_path)
    (status,) = services.list_services(tmp_path)
    assert status.alive and not status.expired

    # Same PID but a different start time: an unrelated process, never to be signalled.
    assert not services.pid_alive(proc.pid, (record.proc_start or 0) + 1)

    proc.kill()
    proc.wait()
    (status,) = services.list_services(tmp_path)
    assert not status.alive


def test_stop_terminates_the_whole_process_group(tmp_path: Path, spawn) -> None:
    # A leader that forks a worker into its group, as vLLM does with its engine processes.
    leader = spawn(
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
    )
    time.sleep(0.5)
    members = [
        int(p.name) for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid(int(p.name)) == leader.pid
    ]
    assert len(members) == 2
    services.write_record(make_record("grp", leader.pid), tmp_path)

    assert services.stop_service("grp", tmp_path) is True
    assert all(wait_dead(pid) for pid in members)
    assert services.read_record("grp", tmp_path) is None


def test_stop_escalates_to_sigkill(tmp_path: Path, spawn) -> None:
    stubborn = spawn("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
    time.sleep(0.3)  # let it install the handler
    services.write_record(make_record("stubborn", stubborn.pid), tmp_path)
    t0 = time.monotonic()
    assert services.stop_service("stubborn", tmp_path, grace_s=0.5) is True
    # stop_service may collect the exit status itself (the process is our child), so check liveness.
    assert wait_dead(stubborn.pid)
    assert time.monotonic() - t0 < 5


def test_stop_of_stale_record_signals_nothing(tmp_path: Path, spawn) -> None:
    bystander = spawn()
    # The record names the bystander's PID with another start time: it must survive.
    services.write_record(make_record("stale", bystander.pid, proc_start=1), tmp_path)
    assert services.stop_service("stale", tmp_path) is False
    assert bystander.poll() is None
    assert services.read_record("stale", tmp_path) is None
    assert services.stop_service("never-existed", tmp_path) is False


def test_reap_stops_expired_and_drops_stale(tmp_path: Path, spawn) -> None:
    expired, keeper, dead = spawn(), spawn(), spawn()
    services.write_record(make_record("expired", expired.pid, ttl_s=-1), tmp_path)
    services.write_record(make_record("keeper", keeper.pid, ttl_s=3600), tmp_path)
    services.write_record(make_record("dead", dead.pid), tmp_path)
    dead.kill()
    dead.wait()

    assert services.reap(tmp_path) == {"expired": ["expired"], "stale": ["dead"]}
    assert expired.wait(timeout=5) is not None
    assert keeper.poll() is None
    assert [s.record.name for s in services.list_services(tmp_path)] == ["keeper"]


def test_stop_all(tmp_path: Path, spawn) -> None:
    a, b = spawn(), spawn()
    services.write_record(make_record("a", a.pid), tmp_path)
    services.write_record(make_record("b", b.pid), tmp_path)
    assert services.stop_all(tmp_path) == ["a", "b"]
    assert a.wait(timeout=5) is not None and b.wait(timeout=5) is not None


def test_ports() -> None:
    port = services.free_port()
    assert 0 < port < 65536 and services.port_free(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert not services.port_free(port)


def test_cli_list_stop_reap(forgeflow_home: Path, spawn) -> None:
    proc = spawn()
    root = forgeflow_home / "services"
    services.write_record(make_record("cli-svc", proc.pid), root)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "serving.services", *args], capture_output=True, text=True, timeout=60
        )

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == "cli-svc" and entry["alive"] is True
    assert "cli-svc" in cli("list").stdout
    missing = cli("stop", "nope")
    assert missing.returncode == 1 and "no service named 'nope'" in missing.stderr
    assert cli("stop").returncode == 2  # neither NAME nor --all
    assert "stopped" in cli("stop", "cli-svc").stdout
    assert proc.wait(timeout=5) is not None
    assert "none" in cli("reap").stdout


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except OSError:
        return None
