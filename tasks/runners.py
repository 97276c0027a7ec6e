"""Runners: execute an engine command on a spec, as a local subprocess or in a Kubernetes pod.

Both run exactly ``python -m <engine> <spec-uri>``; the engine writes ``result.json`` beside the spec in
the lake, and the orchestrator reads it back. Which runner a DAG uses is one setting
(``FORGEFLOW_RUNNER``: local | kubernetes).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.engine import result_uri_for, write_spec
from tasks.settings import PROJECT_ROOT, get_settings
from tasks.specs import Spec, slug
from tasks.storage import Lake
from tasks.version import code_version
from trainers.diagnose import LogScanner, format_findings

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

log = logging.getLogger("forgeflow.runner")

ENGINES = (
    "spark_ops.run",
    "spark_ops.mix",
    "spark_ops.publish",
    "spark_ops.quality",
    "trainers.train",
    "trainers.evaluate",
    "serving.deploy",
)
# Settings an engine needs wherever it runs; passed through to subprocesses and pods.
PASS_THROUGH_ENV = (
    "FORGEFLOW_HOME",
    "FORGEFLOW_LAKE_URI",
    "FORGEFLOW_CATALOG_URL",
    "FORGEFLOW_MLFLOW_TRACKING_URI",
    "FORGEFLOW_MLFLOW_ARTIFACT_ROOT",
    "FORGEFLOW_SPARK_MASTER",
    "FORGEFLOW_S3_ENDPOINT_URL",
    "FORGEFLOW_SERVE_BACKEND",
    "FORGEFLOW_CODE_VERSION",
)


class EngineFailed(RuntimeError):
    """The engine ran and reported a failure; the message carries its error and the log tail."""


def spec_uri_for(run_key: str, engine: str, lake: Lake | None = None) -> str:
    lake = lake or Lake.from_settings()
    return lake.uri("runs", slug(run_key), engine.replace(".", "-"), "spec.json")


def prepare(spec: Spec, engine: str, lake: Lake | None = None) -> str:
    """Write the spec into the lake; returns its URI (the engine's only argument)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    lake = lake or Lake.from_settings()
    uri = spec_uri_for(spec.run_key, engine, lake)
    write_spec(spec, uri, lake)
    lake.delete(result_uri_for(uri))  # a retry must not read the previous attempt's result
    return uri


def engine_command(engine: str, spec_uri: str, python: str = "python") -> list[str]:
    return [python, "-m", engine, spec_uri]


def read_result(spec_uri: str, lake: Lake | None = None) -> dict[str, Any]:
    lake = lake or Lake.from_settings()
    uri = result_uri_for(spec_uri)
    if not lake.exists(uri):
        raise EngineFailed(f"the engine wrote no result at {uri}; see the task log")
    result = lake.read_json(uri)
    if result.get("status") != "success":
        raise EngineFailed(f"engine failed: {result.get('error', 'unknown error')}")
    return result


class LocalRunner:
    """Runs the engine as a child process in its own process group; its output goes to our log."""

    def __init__(self, python: str | None = None, tail_lines: int = 40):
        self.python = python or sys.executable
        self.tail_lines = tail_lines

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        s = get_settings()
        env.setdefault("FORGEFLOW_HOME", str(s.home))
        env["FORGEFLOW_CODE_VERSION"] = code_version()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def run(self, engine: str, spec_uri: str) -> dict[str, Any]:
        cmd = engine_command(engine, spec_uri, self.python)
        log.info("running %s", " ".join(cmd))
        tail: deque[str] = deque(maxlen=self.tail_lines)
        scanner = LogScanner()  # recognises known failures as the output streams by
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # so stopping the task can end the engine and all its children
        )
        # recorded so that `forgeflow down` can end an engine whose task process was killed outright
        pidfile = get_settings().path("run", "engines") / f"{proc.pid}.json"
        pidfile.write_text(
            json.dumps({"pid": proc.pid, "pgid": proc.pid, "engine": engine, "spec": spec_uri})
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                scanner.feed(line)
                log.info("%s", line)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                _stop_group(proc)
            pidfile.unlink(missing_ok=True)
        log.info("%s exited with %s after %.1fs", engine, rc, time.monotonic() - started)
        try:
            return read_result(spec_uri)
        except EngineFailed as e:
            raise EngineFailed(
                f"{e} (exit code {rc})"
                + _diagnosis(scanner, rc)
                + "\n--- last log lines ---\n"
                + "\n".join(tail)
            ) from None


def _diagnosis(scanner: LogScanner, rc: int) -> str:
    """The known failures the engine's output shows (line number, line, remedy), for the task log and UI."""
    findings = scanner.findings(rc)
    if not findings:
        return ""
    log.error("diagnosis of the engine output:\n%s", format_findings(findings))
    return "\n--- diagnosis (line numbers count the engine's output) ---\n" + format_findings(findings)


def _stop_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_engine(engine: str, spec: Spec) -> dict[str, Any]:
    """Write the spec and run its engine with the local runner (the embedded default)."""
    return LocalRunner().run(engine, prepare(spec, engine))


# ---------------------------------------------------------------------------- Kubernetes


def _quantity(q: str) -> float:
    """A Kubernetes quantity as a number, for request <= limit checks ('500m', '8Gi', '2')."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * factor
    return float(q)


class PodResources(BaseModel):
    """Resources of an engine pod. Seed rule: requests may not exceed limits (recommended 4 / 8 CPUs)."""

    model_config = ConfigDict(extra="forbid")

    cpu_request: str = Field(default="4", description="CPU request.")
    cpu_limit: str = Field(default="8", description="CPU limit.")
    memory_request: str = Field(default="16Gi", description="Memory request.")
    memory_limit: str = Field(default="32Gi", description="Memory limit.")
    gpus: int = Field(default=0, ge=0, le=16, description="NVIDIA GPUs (nvidia.com/gpu).")
    shm_size: str = Field(default="8Gi", description="Size of /dev/shm (NCCL and data loaders need it).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod needs.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Kubernetes tolerations.")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> PodResources:
        if _quantity(self.cpu_request) > _quantity(self.cpu_limit):
            raise ValueError(f"cpu_request {self.cpu_request} exceeds cpu_limit {self.cpu_limit}")
        if _quantity(self.memory_request) > _quantity(self.memory_limit):
            raise ValueError(f"memory_request {self.memory_request} exceeds memory_limit {self.memory_limit}")
        return self


def engine_pod_operator(
    task_id: str, engine: str, spec_uri: str, resources: PodResources | None = None, **kwargs: Any
) -> KubernetesPodOperator:
    """A KubernetesPodOperator running the same engine command on the same spec, in the project image.

    Settings reach the pod as env vars; secrets (S3 keys, database passwords) from the Kubernetes secret
    ``forgeflow-env`` so they never sit in the DAG.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    s = get_settings()
    r = resources or PodResources()
    limits = {"cpu": r.cpu_limit, "memory": r.memory_limit}
    requests = {"cpu": r.cpu_request, "memory": r.memory_request}
    if r.gpus:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(r.gpus)
    env = {k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ and k != "FORGEFLOW_HOME"}
    env.update(
        {
            "FORGEFLOW_HOME": "/var/lib/forgeflow",
            "FORGEFLOW_LAKE_URI": s.lake_uri,
            "FORGEFLOW_CATALOG_URL": s.catalog_url,
            "FORGEFLOW_MLFLOW_TRACKING_URI": s.mlflow_tracking_uri,
            "HF_HUB_OFFLINE": "1",
        }
    )
    return KubernetesPodOperator(
        task_id=task_id,
        name=f"forgeflow-{engine.replace('.', '-').replace('_', '-')}",
        namespace=s.k8s_namespace,
        image=s.k8s_image,
        cmds=["python", "-m", engine],
        arguments=[spec_uri],
        env_vars=env,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="forgeflow-env", optional=True))],
        container_resources=k8s.V1ResourceRequirements(limits=limits, requests=requests),
        node_selector=r.node_selector or None,
        tolerations=[k8s.V1Toleration(**t) for t in r.tolerations] or None,
        volumes=[
            k8s.V1Volume(
                name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=r.shm_size)
            ),
            k8s.V1Volume(name="state", empty_dir=k8s.V1EmptyDirVolumeSource()),
        ],
        volume_mounts=[
            k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            k8s.V1VolumeMount(name="state", mount_path="/var/lib/forgeflow"),
        ],
        service_account_name=s.k8s_service_account,
        in_cluster=s.k8s_in_cluster,
        config_file=s.k8s_config_file,
        labels={"app.kubernetes.io/part-of": "forgeflow", "forgeflow/engine": engine.replace(".", "-")},
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        startup_timeout_seconds=600,
        **kwargs,
    )


def render_pod(op: KubernetesPodOperator) -> dict[str, Any]:
    """The pod manifest an operator would submit, as a plain dict (no cluster needed)."""
    from kubernetes.client import ApiClient

    pod = op.build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)
