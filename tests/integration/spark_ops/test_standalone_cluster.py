"""The engine on a real Spark standalone cluster through spark-submit (spark_ops/submit.py).

A master and one small worker (1 core, 1 GiB) start on 127.0.0.1 from PySpark's own distribution, each in
its own session so that teardown can end every process they started (executors, Python workers) and check
that none is left. The recipe include/recipes/pretrain_clean.yaml then runs on generated records with
exact duplicates, near-duplicates and personal data, submitted exactly as README.md documents it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyspark
import pytest

from spark_ops.submit import build_pyfiles
from tasks.recipes import load_recipe
from tasks.specs import slug

pytestmark = pytest.mark.slow

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SUBMIT_ENTRY = Path(__file__).resolve().parents[3] / "spark_ops" / "submit.py"
RESOURCES = {  # the spec's (seed-constrained) resources; spark-submit's flags below win over them
    "num_executors": 1,
    "executor_cores": 1,
    "executor_memory_gb": 4,
    "driver_cores": 1,
    "driver_memory_gb": 2,
}
START_TIMEOUT = 90
JOB_TIMEOUT = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_pids(sessions: list[int]) -> list[int]:
    """Live processes in any of these sessions (PySpark's Python daemons leave the process group, not the
    session, so the session is what holds everything a daemon started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) in sessions:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":  # a zombie is already dead
                        found.append(pid)
        except (ProcessLookupError, PermissionError, FileNotFoundError, IndexError):
            continue
    return found


def end_sessions(sessions: list[int], grace: float = 20.0) -> list[int]:
    """SIGTERM every process of the sessions, SIGKILL what is left after ``grace``; returns survivors."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in session_pids(sessions):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while session_pids(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
    return session_pids(sessions)


@dataclass
class Cluster:
    url: str
    webui: str
    root: Path
    work_dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.webui}/json/", timeout=5) as r:
            return json.loads(r.read())

    def start(self, name: str, *args: str) -> None:
        log = (self.root / "logs" / f"{name}.log").open("wb")
        cmd = [str(SPARK_HOME / "bin" / "spark-class"), *args]
        self.procs.append(
            subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
        log.close()

    def wait_for(self, what: str, ready: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    pytest.fail(f"a Spark daemon exited ({proc.returncode}) before {what}:\n{self.logs()}")
            try:
                if ready(self.state()):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"no {what} after {START_TIMEOUT}s:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
            for p in sorted((self.root / "logs").glob("*.log"))
        )

    def stop(self) -> list[int]:
        """End both daemons' sessions (executors and their Python workers included); returns survivors."""
        left = end_sessions([p.pid for p in self.procs])
        for proc in self.procs:
            proc.wait(timeout=5)
        return left


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java (java on PATH or JAVA_HOME): a Spark standalone cluster needs a JVM")
    root = tmp_path / "cluster"
    for d in ("conf", "logs", "work", "local"):
        (root / d).mkdir(parents=True)
    daemon_conf = root / "daemon.conf"
    daemon_conf.write_text("spark.master.rest.enabled false\n")  # else a REST server takes port 6066
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_", "FORGEFLOW_"))}
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_CONF_DIR=str(root / "conf"),  # empty: no spark-defaults.conf or log4j config from elsewhere
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_MASTER_HOST="127.0.0.1",
        SPARK_LOCAL_DIRS=str(root / "local"),
        SPARK_WORKER_DIR=str(root / "work"),
        SPARK_LOG_DIR=str(root / "logs"),
        SPARK_PID_DIR=str(root),
        SPARK_DAEMON_MEMORY="512m",
    )
    port, ui, worker_ui = free_port(), free_port(), free_port()
    c = Cluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}", root, root / "work", env)
    try:
        c.start(
            "master",
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)),
            *("--properties-file", str(daemon_conf)),
        )
        c.wait_for("master", lambda s: s.get("status") == "ALIVE")
        c.start(
            "worker",
            "org.apache.spark.deploy.worker.Worker",
            *("--host", "127.0.0.1", "--webui-port", str(worker_ui), "--cores", "1", "--memory", "1g"),
            *("--work-dir", str(c.work_dir), "--properties-file", str(daemon_conf), c.url),
        )
        c.wait_for("registered worker", lambda s: s.get("aliveworkers") == 1)
        yield c
    finally:
        assert c.stop() == [], "Spark processes survived the cluster's teardown"


# ------------------------------------------------------------------------------------------------ input


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(n)]


def make_input(path: Path) -> dict[str, Any]:
    """240 distinct documents (20 with a phone number and an e-mail address), then 30 exact copies and 20
    one-word edits of documents without personal data: 290 records, 240 of them to keep."""
    rng = random.Random(7)
    vocab = _words(rng, 3000)
    docs = [" ".join(rng.choices(vocab, k=40)) + "." for _ in range(240)]
    pii = []
    for i in range(220, 240):
        digits = f"1{rng.choice('3456789')}{rng.randint(0, 9)}{rng.randint(0, 99_999_999):08d}"
        phone = f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
        email = f"{rng.choice(vocab)}.{i}@example.com"
        docs[i] += f" Call {phone} or write to {email} today."
        pii.append({"index": i, "phone": phone, "email": email})
    exact = [docs[i] for i in range(30)]
    near = []
    for i in range(30, 50):
        words = docs[i].split(" ")
        words[17] = "replaced"
        near.append(" ".join(words))
    records = [{"text": t} for t in docs + exact + near]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return {"docs": docs, "pii": pii, "records": len(records), "exact": len(exact), "near": len(near)}


# ------------------------------------------------------------------------------------------------- test


def test_pretrain_clean_runs_on_a_standalone_cluster(cluster: Cluster, tmp_path: Path) -> None:
    data = make_input(tmp_path / "raw.jsonl")
    run_key = "cluster__pretrain_clean"
    spec = {
        "run_key": run_key,
        "inputs": [{"uri": str(tmp_path / "raw.jsonl"), "source": "cluster-test"}],
        "usage": "pretrain",
        "operators": [s.model_dump() for s in load_recipe("pretrain_clean")],
        "spark": RESOURCES,
        "output_uri": str(tmp_path / "out"),
    }
    spec_path = tmp_path / "run" / "spec.json"
    spec_path.parent.mkdir()
    spec_path.write_text(json.dumps(spec))
    pyfiles = build_pyfiles(tmp_path / "pyfiles.zip")

    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        *("--master", cluster.url, "--deploy-mode", "client"),
        *("--conf", f"spark.pyspark.python={sys.executable}"),
        *("--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1"),
        *("--driver-memory", "2g", "--executor-memory", "1g"),
        *("--executor-cores", "1", "--total-executor-cores", "1"),
        *("--py-files", str(pyfiles)),
        str(SUBMIT_ENTRY),
        str(spec_path),
    ]
    env = {
        **cluster.env,
        "FORGEFLOW_HOME": str(tmp_path / "home"),
        # Deliberately wrong: spark-submit's --master must win over the platform setting.
        "FORGEFLOW_SPARK_MASTER": "local[1]",
    }
    log_path = cluster.root / "logs" / "spark-submit.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        driver = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = driver.wait(timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            left = end_sessions([driver.pid], grace=10)
    elapsed = time.monotonic() - started
    tail = log_path.read_text(errors="replace")[-4000:]
    assert code is not None, f"spark-submit did not finish in {JOB_TIMEOUT}s:\n{tail}\n{cluster.logs()}"
    result = json.loads((spec_path.parent / "result.json").read_text())
    assert code == 0 and result["status"] == "success", f"{result.get('error', '')[:2000]}\n{tail}"
    assert left == [], "the driver left processes behind"

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["spark"]["master"] == cluster.url
    ops = {op["name"]: op for op in manifest["operators"]}
    assert list(ops) == [s.name for s in load_recipe("pretrain_clean")]
    assert manifest["records_in"] == manifest["accepted"] == data["records"] == 290
    assert manifest["quarantined"] == 0
    assert ops["desensitize"]["modified"] == len(data["pii"]) == 20
    assert ops["exact_dedupe"]["dropped"] == data["exact"] == 30
    assert ops["near_dedupe"]["dropped"] == data["near"] == 20
    assert sum(op["dropped"] for op in manifest["operators"]) == 50
    assert manifest["records_out"] == result["records_out"] == 240

    out = pd.read_parquet(tmp_path / "out" / "data")
    texts = out["text"].tolist()
    assert len(texts) == 240
    assert texts[:220] == data["docs"][:220]  # the first of each duplicate set is kept, in input order
    text = "\n".join(texts)
    for p in data["pii"]:
        assert p["phone"] not in text and p["email"] not in text
        masked = texts[p["index"]]
        assert f"{p['phone'][:3]}-****-{p['phone'][-4:]}" in masked, masked
        assert f"{p['email'][0]}***@example.com" in masked, masked

    # It ran on the cluster: the master lists the finished application with our name, and the worker
    # launched its executor there (with the --py-files zip the executor imported spark_ops from).
    apps = [a for a in cluster.state()["completedapps"] if a["name"] == "forgeflow-process-" + slug(run_key)]
    assert len(apps) == 1 and apps[0]["state"] == "FINISHED", cluster.state()["completedapps"]
    executor_dirs = list((cluster.work_dir / apps[0]["id"]).iterdir())
    assert executor_dirs, f"no executor ran under {cluster.work_dir}"
    stderr = "".join((d / "stderr").read_text(errors="replace") for d in executor_dirs)
    assert "Finished task" in stderr
    assert any((d / pyfiles.name).exists() for d in executor_dirs)

    assert cluster.stop() == [], "Spark processes survived the cluster's teardown"
    print(f"spark-submit on the standalone cluster took {elapsed:.0f}s")
