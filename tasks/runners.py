"""Runners: execute an engine command on a spec, as a local subprocess or in a Kubernetes pod.

Both run exactly ``python -m <engine> <spec-uri>``; the engine writes ``result.json`` beside the spec in
the lake, and the orchestrator reads it back. Which runner a DAG uses is one setting
(``FORGEFLOW_RUNNER``: local | kubernetes).

A training spec with ``distributed.processes > 1`` runs under ``torchrun --standalone --nproc_per_node N``
instead (gloo on CPU, NCCL on GPU), each output line prefixed ``[rankN]:``; more than one node needs the
Kubernetes runner (a PyTorchJob, tasks/k8s_training.py).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tasks.engine import result_uri_for, write_spec
from tasks.procs import kill_tree
from tasks.settings import PROJECT_ROOT, get_settings
from tasks.specs import DistributedConfig, Endpoint, PodResources, Spec, slug
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


class EngineStoppedError(EngineFailed):
    """The engine stopped on request before it finished (status 'stopped'); nothing was registered."""


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


# torchrun prefixes each line of a worker's output with this (its ``--tee`` log files keep them apart too).
RANK_PREFIX_TEMPLATE = "[rank${rank}]: "


def torchrun_command(
    engine: str, spec_uri: str, processes: int, python: str = "python", log_dir: str | None = None
) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m ENGINE SPEC`` (as ``python -m torch.distributed.run``,
    so the engine runs in the same interpreter); with ``log_dir`` each rank's output is also kept there."""
    cmd = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    if log_dir:
        cmd += ["--tee", "3", "--log-dir", log_dir]
    return [*cmd, "-m", engine, spec_uri]


def _spec_document(spec_uri: str, lake: Lake | None = None) -> dict[str, Any]:
    """The spec as JSON data, {} when it cannot be read (the engine then reports that itself)."""
    try:
        raw = (lake or Lake.from_settings()).read_json(spec_uri)
    except Exception:
        return {}
    return raw if isinstance(raw, dict) else {}


def _distributed(raw: dict[str, Any]) -> DistributedConfig:
    """A spec document's ``distributed`` section (training specs have one); one process without it.

    A section that does not validate counts as one process: the engine then reports the bad field.
    """
    try:
        return DistributedConfig.model_validate(raw.get("distributed") or {})
    except Exception:
        return DistributedConfig()


def distributed_config(spec_uri: str, lake: Lake | None = None) -> DistributedConfig:
    """The ``distributed`` section of the spec at ``spec_uri`` (see _distributed)."""
    return _distributed(_spec_document(spec_uri, lake))


def read_result(spec_uri: str, lake: Lake | None = None) -> dict[str, Any]:
    lake = lake or Lake.from_settings()
    uri = result_uri_for(spec_uri)
    if not lake.exists(uri):
        raise EngineFailed(f"the engine wrote no result at {uri}; see the task log")
    result = lake.read_json(uri)
    if result.get("status") == "stopped":
        raise EngineStoppedError(
            f"engine stopped before it finished: {result.get('error', 'no reason given')}"
        )
    if result.get("status") != "success":
        raise EngineFailed(f"engine failed: {result.get('error', 'unknown error')}")
    return result


def _endpoints(node: Any) -> Iterator[dict[str, Any]]:
    """Every endpoint section of a spec document (a dict with ``base_url``), however deep."""
    if isinstance(node, dict):
        if "base_url" in node:
            yield node
        for v in node.values():
            yield from _endpoints(v)
    elif isinstance(node, list):
        for v in node:
            yield from _endpoints(v)


def endpoint_keys(spec_uri: str, raw: dict[str, Any]) -> dict[str, str]:
    """Environment variables for the engine: the password of each Airflow Connection an endpoint of the spec
    document ``raw`` names (``api_key_conn_id``), under the endpoint's ``api_key_env``. The key goes to the
    child's environment only, never to the spec, the lake or the log."""
    out: dict[str, str] = {}
    for ep in _endpoints(raw):
        conn_id = ep.get("api_key_conn_id")
        if not conn_id:
            continue
        env_name = Endpoint.model_validate(ep).api_key_env
        try:
            from airflow.sdk import Connection

            password = Connection.get(conn_id).password
        except Exception as e:
            raise ValueError(
                f"{spec_uri}: endpoint {ep.get('base_url')} names the Airflow Connection {conn_id!r}, which "
                f"cannot be read here ({type(e).__name__}: {e}); define it (Admin > Connections, or "
                f"AIRFLOW_CONN_{conn_id.upper()}) or give the key in the environment variable {env_name}"
            ) from e
        if not password:
            raise ValueError(
                f"{spec_uri}: the Airflow Connection {conn_id!r} has no password (the bearer key)"
            )
        out[str(env_name)] = password
    return out


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

    def command(self, engine: str, spec_uri: str) -> tuple[list[str], dict[str, str]]:
        """The command line and environment: the engine itself, or torchrun for several processes."""
        raw = _spec_document(spec_uri)  # read once: the processes and the endpoints' keys
        env = self.env() | endpoint_keys(spec_uri, raw)
        dist = _distributed(raw)
        if dist.nodes > 1:
            raise ValueError(
                f"{spec_uri}: distributed.nodes={dist.nodes} needs the Kubernetes runner (a PyTorchJob, "
                "FORGEFLOW_RUNNER=kubernetes); the local runner trains on this one machine, so set nodes to 1 "
                "and use distributed.processes for several processes here"
            )
        if dist.processes == 1:
            return engine_command(engine, spec_uri, self.python), env
        env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] = RANK_PREFIX_TEMPLATE
        log_dir = get_settings().path("run", "torchrun", re.sub(r"[^A-Za-z0-9_.-]+", "_", spec_uri)[-120:])
        return torchrun_command(engine, spec_uri, dist.processes, self.python, str(log_dir)), env

    def run(self, engine: str, spec_uri: str) -> dict[str, Any]:
        cmd, env = self.command(engine, spec_uri)
        log.info("running %s", " ".join(cmd))
        # torchrun adds its own failure summary; keep enough lines to show the ranks' errors too
        tail: deque[str] = deque(maxlen=self.tail_lines * (2 if "torch.distributed.run" in cmd else 1))
        scanner = LogScanner()  # recognises known failures as the output streams by
        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            env=env,
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
            result = read_result(spec_uri)
        except EngineFailed as e:
            diagnosis = (
                "" if isinstance(e, EngineStoppedError) else _diagnosis(scanner, rc)
            )  # a stop is no fault
            raise type(e)(
                f"{e} (exit code {rc}){diagnosis}\n--- last log lines ---\n" + "\n".join(tail)
            ) from None
        if rc != 0:  # e.g. rank 0 wrote its success, then another rank failed: the run failed
            raise EngineFailed(
                f"{engine} exited with code {rc} although {result_uri_for(spec_uri)} says success; "
                "a process failed after it was written"
                + _diagnosis(scanner, rc)
                + "\n--- last log lines ---\n"
                + "\n".join(tail)
            )
        return result


def _diagnosis(scanner: LogScanner, rc: int) -> str:
    """The known failures the engine's output shows (line number, line, remedy), for the task log and UI."""
    findings = scanner.findings(rc)
    if not findings:
        return ""
    log.error("diagnosis of the engine output:\n%s", format_findings(findings))
    return "\n--- diagnosis (line numbers count the engine's output) ---\n" + format_findings(findings)


def _stop_group(proc: subprocess.Popen, grace_s: float | None = None) -> None:
    """SIGTERM the engine's process group, SIGKILL it when it has not exited after the grace period
    (``engine_stop_grace_s``): the time a training engine has to save its stop checkpoint."""
    if grace_s is None:
        grace_s = get_settings().engine_stop_grace_s
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)  # the group and torchrun's ranks, which run in sessions of their own
        proc.wait()
    except ProcessLookupError:
        pass


def run_engine(engine: str, spec: Spec) -> dict[str, Any]:
    """Write the spec and run its engine with the local runner (the embedded default)."""
    return LocalRunner().run(engine, prepare(spec, engine))


# ---------------------------------------------------------------------------- Kubernetes


POD_STATE_DIR = "/var/lib/forgeflow"
ENGINE_SECRET = "forgeflow-env"


def pod_env() -> dict[str, str]:
    """The settings an engine pod gets as env vars (secrets come from ``forgeflow-env`` instead)."""
    s = get_settings()
    env = {k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ and k != "FORGEFLOW_HOME"}
    env.update(
        {
            "FORGEFLOW_HOME": POD_STATE_DIR,
            "FORGEFLOW_LAKE_URI": s.lake_uri,
            "FORGEFLOW_CATALOG_URL": s.catalog_url,
            "FORGEFLOW_MLFLOW_TRACKING_URI": s.mlflow_tracking_uri,
            "HF_HUB_OFFLINE": "1",
            "TORCH_EXTENSIONS_DIR": f"{POD_STATE_DIR}/torch_extensions",
        }
    )
    return env


def pod_resources(r: PodResources) -> Any:
    """V1ResourceRequirements: CPU and memory as given, GPUs as equal request and limit."""
    from kubernetes.client import models as k8s

    limits = {"cpu": r.cpu_limit, "memory": r.memory_limit}
    requests = {"cpu": r.cpu_request, "memory": r.memory_request}
    if r.gpus:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(r.gpus)
    return k8s.V1ResourceRequirements(limits=limits, requests=requests)


def pod_volumes(r: PodResources) -> tuple[list[Any], list[Any]]:
    """(volumes, mounts): a memory-backed /dev/shm of ``shm_size`` and a scratch state directory."""
    from kubernetes.client import models as k8s

    volumes = [
        k8s.V1Volume(
            name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=r.shm_size)
        ),
        k8s.V1Volume(name="state", empty_dir=k8s.V1EmptyDirVolumeSource()),
    ]
    mounts = [
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
        k8s.V1VolumeMount(name="state", mount_path=POD_STATE_DIR),
    ]
    return volumes, mounts


def pod_labels(engine: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "forgeflow", "forgeflow/engine": engine.replace(".", "-")}


def engine_pod_operator(
    task_id: str,
    engine: str,
    spec_uri: str,
    resources: PodResources | None = None,
    processes: int = 1,
    **kwargs: Any,
) -> KubernetesPodOperator:
    """A KubernetesPodOperator running the same engine command on the same spec, in the project image.

    Settings reach the pod as env vars; secrets (S3 keys, database passwords) from the Kubernetes secret
    ``forgeflow-env`` so they never sit in the DAG. ``processes`` > 1 (a training spec's
    ``distributed.processes``, one per GPU) runs ``torchrun --standalone --nproc_per_node N`` in the pod.
    """
    from kubernetes.client import models as k8s

    s = get_settings()
    r = resources or PodResources()
    if processes > 1 and r.gpus and processes != r.gpus:
        raise ValueError(
            f"processes={processes} but the pod asks for gpus={r.gpus}: a GPU run has one process per GPU; "
            "make distributed.processes equal the pod's gpus"
        )
    if processes > 1:
        cmds = ["torchrun", "--standalone", "--nproc_per_node", str(processes), "-m", engine]
    else:
        cmds = ["python", "-m", engine]
    volumes, mounts = pod_volumes(r)
    return engine_pod_class()(
        task_id=task_id,
        name=f"forgeflow-{engine.replace('.', '-').replace('_', '-')}",
        namespace=s.k8s_namespace,
        image=s.k8s_image,
        cmds=cmds,
        arguments=[spec_uri],
        env_vars=pod_env()
        | ({"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": RANK_PREFIX_TEMPLATE} if processes > 1 else {}),
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=ENGINE_SECRET, optional=True))],
        container_resources=pod_resources(r),
        node_selector=r.node_selector or None,
        tolerations=r.v1_tolerations(),
        volumes=volumes,
        volume_mounts=mounts,
        service_account_name=s.k8s_service_account,
        in_cluster=s.k8s_in_cluster,
        config_file=s.k8s_config_file,
        labels=pod_labels(engine),
        get_logs=True,
        termination_grace_period=math.ceil(s.engine_stop_grace_s),
        on_finish_action="delete_succeeded_pod",
        startup_timeout_seconds=600,
        **kwargs,
    )


POD_LOG_LINES = 20_000  # of a failed pod's log, scanned for known failures


@functools.cache
def engine_pod_class() -> type[KubernetesPodOperator]:
    """KubernetesPodOperator whose failure message carries the diagnosis of the pod's log (built lazily: the
    provider is a heavy import)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.common.compat.sdk import AirflowException, AirflowSkipException

    class EnginePodOperator(KubernetesPodOperator):
        """Runs an engine in a pod; when the pod fails, its log is scanned for known failures (OOM, NaN, NCCL
        timeout, missing checkpoint, ...) and the findings -- line, text, remedy -- join the task's error,
        as with the local runner."""

        def cleanup(self, pod, remote_pod, xcom_result=None, context=None):
            try:
                return super().cleanup(pod, remote_pod, xcom_result, context)
            except AirflowSkipException:
                raise
            except AirflowException as e:
                diagnosis = self.diagnose(pod, remote_pod)
                if not diagnosis:
                    raise
                raise AirflowException(
                    f"{e}\n--- diagnosis (line numbers count the pod's log) ---\n{diagnosis}"
                ) from e

        def diagnose(self, pod, remote_pod) -> str:
            """The findings in the failed pod's log ('' when none, or when the log cannot be read)."""
            scanner = LogScanner()
            try:
                for raw in self.pod_manager.read_pod_logs(
                    pod, self.base_container_name, tail_lines=POD_LOG_LINES, follow=False
                ):
                    scanner.feed(
                        raw.decode("utf-8", "replace").rstrip("\n") if isinstance(raw, bytes) else raw
                    )
            except Exception as e:  # the pod may be gone already: the error itself still stands
                self.log.warning("could not read the log of pod %s for diagnosis: %s", pod.metadata.name, e)
                return ""
            findings = scanner.findings(_exit_code(remote_pod, self.base_container_name))
            if findings:
                self.log.error("diagnosis of the pod log:\n%s", format_findings(findings))
            return format_findings(findings) if findings else ""

    return EnginePodOperator


def _exit_code(remote_pod: Any, container: str) -> int | None:
    statuses = getattr(getattr(remote_pod, "status", None), "container_statuses", None) or []
    for status in statuses:
        terminated = getattr(getattr(status, "state", None), "terminated", None)
        if status.name == container and terminated is not None:
            return terminated.exit_code
    return None


def render_pod(op: KubernetesPodOperator) -> dict[str, Any]:
    """The pod manifest an operator would submit, as a plain dict (no cluster needed)."""
    from kubernetes.client import ApiClient

    pod = op.build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)
