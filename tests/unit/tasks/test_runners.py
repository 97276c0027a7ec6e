from __future__ import annotations

import os

import pytest
import yaml

from tasks.engine import result_uri_for, write_spec
from tasks.runners import (
    EngineFailed,
    EngineStoppedError,
    LocalRunner,
    PodResources,
    _stop_group,
    engine_pod_operator,
    prepare,
    render_pod,
)
from tasks.specs import ServeSpec
from tasks.storage import Lake
from tests.unit.tasks.echo_engine import EchoSpec

ECHO = "tests.unit.tasks.echo_engine"


def _spec_uri(lake: Lake, fail: bool = False, raw: dict | None = None, stop: bool = False) -> str:
    uri = lake.uri("runs", "t", "spec.json")
    if raw is not None:
        lake.write_json(uri, raw)
    else:
        write_spec(EchoSpec(run_key="demo-run", fail=fail, stop=stop), uri, lake)
    return uri


def test_local_runner_runs_the_engine_and_reads_its_result(ff_home):
    lake = Lake.from_settings()
    result = LocalRunner().run(ECHO, _spec_uri(lake))
    assert result["status"] == "success" and result["echo"] == "demo-run"
    assert not list((ff_home / "run" / "engines").glob("*.json"))  # pid record removed


def test_engine_failure_carries_error_and_log_tail(ff_home):
    lake = Lake.from_settings()
    with pytest.raises(EngineFailed) as e:
        LocalRunner().run(ECHO, _spec_uri(lake, fail=True))
    assert "asked to fail" in str(e.value) and "echo engine running demo-run" in str(e.value)


def test_a_stopped_engine_is_reported_as_stopped(ff_home):
    lake = Lake.from_settings()
    with pytest.raises(
        EngineStoppedError, match=r"engine stopped before it finished: .*checkpoint c2 .*exit code 3"
    ):
        LocalRunner().run(ECHO, _spec_uri(lake, stop=True))


def test_stop_group_waits_the_configured_grace_then_kills(ff_home, monkeypatch):
    import subprocess
    import sys

    from tasks.settings import get_settings

    monkeypatch.setenv("FORGEFLOW_ENGINE_STOP_GRACE_S", "0.5")
    get_settings.cache_clear()
    assert get_settings().engine_stop_grace_s == 0.5
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert stubborn.stdout.readline().strip() == "ready"
    _stop_group(stubborn)  # SIGTERM is ignored: SIGKILL after the grace
    assert stubborn.returncode == -9


def test_engine_failure_carries_the_diagnosis_with_line_and_remedy(ff_home):
    lake = Lake.from_settings()
    oom = (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
        "of 79.15 GiB of which 1.06 GiB is free."
    )
    uri = lake.uri("runs", "t", "spec.json")
    write_spec(EchoSpec(run_key="demo-run", fail=True, say=["loading", oom]), uri, lake)
    with pytest.raises(EngineFailed) as e:
        LocalRunner().run(ECHO, uri)
    msg = str(e.value)
    assert "--- diagnosis" in msg and "cuda_oom line 3: the GPU ran out of memory" in msg
    assert f"> {oom}" in msg and "remedy: lower hyperparams.batch_size" in msg
    assert msg.index("--- diagnosis") < msg.index("--- last log lines ---")


def test_a_killed_engine_is_diagnosed_from_its_exit_code(ff_home):
    lake = Lake.from_settings()
    uri = lake.uri("runs", "t", "spec.json")
    write_spec(EchoSpec(run_key="demo-run", kill=True), uri, lake)
    with pytest.raises(EngineFailed) as e:
        LocalRunner().run(ECHO, uri)
    assert "wrote no result" in str(e.value) and "(exit code -9)" in str(e.value)
    assert "[error] killed" in str(e.value) and "OOM killer" in str(e.value)


def test_a_plain_failure_has_no_diagnosis_section(ff_home):
    lake = Lake.from_settings()
    with pytest.raises(EngineFailed) as e:
        LocalRunner().run(ECHO, _spec_uri(lake, fail=True))
    assert "--- diagnosis" not in str(e.value)


def test_bad_spec_names_the_field(ff_home):
    lake = Lake.from_settings()
    with pytest.raises(EngineFailed, match=r"fail: Input should be a valid boolean"):
        LocalRunner().run(ECHO, _spec_uri(lake, raw={"run_key": "x", "fail": "perhaps"}))


def test_prepare_clears_a_stale_result(ff_home):
    spec = ServeSpec(run_key="r1", service_name="svc", model="/m")
    uri = prepare(spec, "serving.deploy")
    lake = Lake.from_settings()
    lake.write_json(result_uri_for(uri), {"status": "success"})
    assert prepare(spec, "serving.deploy") == uri
    assert not lake.exists(result_uri_for(uri))
    with pytest.raises(ValueError, match="unknown engine"):
        prepare(spec, "serving.nope")


def test_pod_requests_may_not_exceed_limits():
    with pytest.raises(ValueError, match="exceeds cpu_limit"):
        PodResources(cpu_request="8", cpu_limit="4")
    with pytest.raises(ValueError, match="exceeds memory_limit"):
        PodResources(memory_request="64Gi", memory_limit="32Gi")
    assert PodResources(cpu_request="500m", cpu_limit="1").cpu_request == "500m"


def test_pod_renders_to_a_valid_kubernetes_manifest(ff_home):
    import kubernetes_validate

    resources = PodResources(
        gpus=8,
        node_selector={"nvidia.com/gpu.product": "H100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    op = engine_pod_operator(
        "train", "trainers.train", "s3://lake/runs/r/trainers-train/spec.json", resources
    )
    pod = render_pod(op)
    kubernetes_validate.validate(pod, "1.30", strict=True)
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "trainers.train"]
    assert c["args"] == ["s3://lake/runs/r/trainers-train/spec.json"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"dshm", "state"}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["spec"]["terminationGracePeriodSeconds"] == 45  # time to save the stop checkpoint
    # the rendered manifest is plain YAML a user can kubectl apply
    assert yaml.safe_load(yaml.safe_dump(pod)) == pod


def test_invalid_manifest_is_caught_by_the_schema(ff_home):
    import kubernetes_validate

    pod = render_pod(engine_pod_operator("x", "spark_ops.run", "file:///s.json"))
    pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"bad": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, "1.30", strict=True)


class _FakePodManager:
    def __init__(self, lines: list[bytes] | Exception):
        self.lines = lines
        self.asked: list[tuple] = []
        self.remote = None

    def read_pod_logs(self, pod, container_name, tail_lines=None, follow=True, **kwargs):
        self.asked.append((pod.metadata.name, container_name, tail_lines, follow))
        if isinstance(self.lines, Exception):
            raise self.lines
        return iter(self.lines)

    def read_pod(self, pod):  # the operator logs container states and events of a failed pod
        return self.remote

    def read_pod_events(self, pod):
        return type("Events", (), {"items": []})()


def _failed_pod_operator(ff_home, lines, exit_code=1):
    from kubernetes.client import models as k8s

    op = engine_pod_operator("train", "trainers.train", "s3://lake/runs/r/trainers-train/spec.json")
    manager = _FakePodManager(lines)
    op.__dict__["pod_manager"] = manager  # a cached_property on KubernetesPodOperator
    op.patch_already_checked = lambda *a, **k: None  # no cluster here
    op.process_pod_deletion = lambda *a, **k: False
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="forgeflow-trainers-train-abc", namespace="ml"),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base")]),
    )
    status = k8s.V1ContainerStatus(
        name="base",
        image="forgeflow",
        image_id="",
        ready=False,
        restart_count=0,
        state=k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code)),
    )
    remote = k8s.V1Pod(
        metadata=pod.metadata,
        spec=pod.spec,
        status=k8s.V1PodStatus(phase="Failed", container_statuses=[status]),
    )
    manager.remote = remote
    return op, manager, pod, remote


def test_failed_pod_error_carries_the_log_diagnosis(ff_home):
    from airflow.providers.common.compat.sdk import AirflowException

    lines = [
        b"step 10 loss 2.31\n",
        b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.00 MiB. GPU 0 has a total capacity\n",
    ]
    op, manager, pod, remote = _failed_pod_operator(ff_home, lines)
    with pytest.raises(AirflowException) as err:
        op.cleanup(pod, remote)
    message = str(err.value)
    assert message.startswith("Pod forgeflow-trainers-train-abc returned a failure.")
    assert "--- diagnosis (line numbers count the pod's log) ---" in message
    assert "line 2" in message and "CUDA out of memory" in message and "remedy:" in message
    assert manager.asked == [("forgeflow-trainers-train-abc", "base", 20_000, False)]


def test_failed_pod_without_known_failure_or_log_keeps_the_plain_error(ff_home):
    from airflow.providers.common.compat.sdk import AirflowException

    for lines in ([b"all fine until now\n"], RuntimeError("pod log is gone")):
        op, _, pod, remote = _failed_pod_operator(ff_home, lines)
        with pytest.raises(AirflowException) as err:
            op.cleanup(pod, remote)
        assert "diagnosis" not in str(err.value)


def test_stop_ends_children_that_left_the_group(tmp_path):
    """torchrun starts its ranks in sessions of their own: a SIGKILL of the group alone would orphan them."""
    import contextlib
    import subprocess
    import sys
    import time

    import psutil

    from tasks.runners import _stop_group

    pid_file = tmp_path / "child.pid"
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # a parent that will not stop in the grace period
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.1)
    child = psutil.Process(int(pid_file.read_text()))
    try:
        assert os.getpgid(child.pid) != proc.pid  # out of the engine's group, like a torchrun rank
        _stop_group(proc, grace_s=1)
        assert proc.poll() is not None
        child.wait(timeout=10)  # raises TimeoutExpired if it was left running
    finally:
        with contextlib.suppress(psutil.Error):
            child.kill()


def test_an_endpoint_key_reaches_the_engine_environment_only(ff_home, monkeypatch):
    """A Connection named by an endpoint is resolved by the runner into the child's environment; the spec in
    the lake holds its name, never the key."""
    from tasks.runners import LocalRunner
    from tasks.specs import EvalSpec

    monkeypatch.setenv("AIRFLOW_CONN_TEACHER_LLM", '{"conn_type": "http", "password": "sk-conn-9931"}')
    lake = Lake.from_settings()
    spec = EvalSpec(
        run_key="e1",
        endpoint={"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_conn_id": "teacher_llm"},
        dataset_uri="file:///d",
        output_uri="file:///o",
    )
    uri = write_spec(spec, lake.uri("specs", "e1", "spec.json"))
    _, env = LocalRunner().command("trainers.evaluate", uri)
    assert env["FORGEFLOW_KEY_TEACHER_LLM"] == "sk-conn-9931"
    assert "sk-conn-9931" not in lake.read_text(uri)
    monkeypatch.delenv("AIRFLOW_CONN_TEACHER_LLM")
    with pytest.raises(ValueError, match="names the Airflow Connection 'teacher_llm', which cannot be read"):
        LocalRunner().command("trainers.evaluate", uri)
