"""Training on Kubernetes, rendered and validated without a cluster: the single-node GPU pod (against the
Kubernetes schemas of kubernetes-validate) and the multi-node PyTorchJob (against the vendored CRD's
openAPIV3Schema with its pod templates against the Kubernetes schema); the submit-and-wait operator
against a fake Kubernetes API (a test double: the product path uses the provider's hook)."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from tasks.k8s_training import (
    CRD_PATH,
    GROUP,
    PLURAL,
    VERSION,
    ManifestError,
    PyTorchJobOperator,
    crd_schema,
    job_name,
    job_state,
    pytorchjob_manifest,
    to_yaml,
    validate_pytorchjob,
)
from tasks.runners import EngineFailed, engine_pod_operator, render_pod
from tasks.specs import DistributedConfig, PodResources, TrainSpec

SPEC_URI = "s3://lake/runs/r/trainers-train/spec.json"
GPU_NODE = PodResources(
    gpus=8,
    cpu_request="32",
    cpu_limit="64",
    memory_request="512Gi",
    memory_limit="1Ti",
    shm_size="64Gi",
    node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
)


def _spec(**distributed) -> TrainSpec:
    return TrainSpec(
        run_key="model_train/manual__2026-01-01T00:00:00+00:00",
        method="sft_full",
        train_uri="s3://lake/datasets/sft/v1",
        output_uri="s3://lake/models/r",
        distributed=DistributedConfig(**distributed),
    )


def _check_pod_spec(pod_spec: dict, gpus: int) -> dict:
    """GPU resources, /dev/shm in memory, selector, tolerations, the project image; returns the container."""
    from tasks.settings import get_settings

    (c,) = pod_spec["containers"]
    assert c["image"] == get_settings().k8s_image
    assert (
        c["resources"]["limits"]["nvidia.com/gpu"]
        == c["resources"]["requests"]["nvidia.com/gpu"]
        == str(gpus)
    )
    assert c["resources"]["requests"]["cpu"] == "32" and c["resources"]["limits"]["memory"] == "1Ti"
    shm = next(v for v in pod_spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod_spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert c["envFrom"] == [{"secretRef": {"name": "forgeflow-env", "optional": True}}]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["FORGEFLOW_HOME"] == "/var/lib/forgeflow" and env["HF_HUB_OFFLINE"] == "1"
    return c


def test_single_node_gpu_pod_runs_torchrun_and_validates(ff_home):
    op = engine_pod_operator("train", "trainers.train", SPEC_URI, GPU_NODE, processes=8)
    pod = render_pod(op)
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(pod, version, strict=True)
    c = _check_pod_spec(pod["spec"], gpus=8)
    assert c["command"] == ["torchrun", "--standalone", "--nproc_per_node", "8", "-m", "trainers.train"]
    assert c["args"] == [SPEC_URI]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}]: "  # rank-prefixed pod log
    with pytest.raises(ValueError, match="processes=4 but the pod asks for gpus=8"):
        engine_pod_operator("train", "trainers.train", SPEC_URI, GPU_NODE, processes=4)


def test_pytorchjob_master_and_workers_validate_against_the_crd(ff_home):
    job = pytorchjob_manifest(_spec(deepspeed="zero3", processes=8, nodes=4), SPEC_URI, GPU_NODE)
    validate_pytorchjob(job)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    name = job["metadata"]["name"]
    assert name == job_name("model_train/manual__2026-01-01T00:00:00+00:00") and name.startswith("ff-")
    assert len(f"{name}-worker-255") <= 63
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Master": 1, "Worker": 3}
    assert job["spec"]["nprocPerNode"] == "8"  # a string in the CRD
    assert "elasticPolicy" not in job["spec"]
    for replica in replicas.values():
        assert replica["restartPolicy"] == "Never"
        tmpl = replica["template"]
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": tmpl["spec"]},
            "1.30",
            strict=True,
        )
        c = _check_pod_spec(tmpl["spec"], gpus=8)
        assert c["name"] == "pytorch"  # where the operator looks for the port
        assert c["ports"] == [{"containerPort": 23456, "name": "pytorchjob-port", "protocol": "TCP"}]
        assert c["command"] == [
            "torchrun",
            "--nnodes=4",
            "--nproc_per_node=8",
            "--node_rank=$(RANK)",  # set by the training operator: master 0, worker i+1
            "--master_addr=$(MASTER_ADDR)",
            "--master_port=$(MASTER_PORT)",
            "-m",
            "trainers.train",
        ]
        assert c["args"] == [SPEC_URI]
        assert {"name": "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "value": "[rank${rank}]: "} in c["env"]
    assert yaml.safe_load(to_yaml(job)) == job  # what `kubectl apply -f` would read


def test_elastic_pytorchjob_uses_a_rendezvous(ff_home):
    job = pytorchjob_manifest(_spec(processes=8, nodes=4, min_nodes=2), SPEC_URI, GPU_NODE)
    validate_pytorchjob(job)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert job["spec"]["elasticPolicy"] == {
        "rdzvBackend": "c10d",
        "minReplicas": 2,
        "maxReplicas": 4,
        "maxRestarts": 3,
    }
    command = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert "--nnodes=2:4" in command and "--rdzv_endpoint=$(PET_RDZV_ENDPOINT)" in command


def test_the_vendored_crd_is_the_pytorchjob_v1_schema():
    text = CRD_PATH.read_text()
    assert "kubeflow/trainer" in text and "ee38ae8a6c216a246cf4f0932b052a6e8475880b" in text
    schema = crd_schema()
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["pytorchReplicaSpecs"]
    assert set(spec["properties"]) == {"elasticPolicy", "nprocPerNode", "pytorchReplicaSpecs", "runPolicy"}
    replica = spec["properties"]["pytorchReplicaSpecs"]["additionalProperties"]
    assert replica["properties"]["template"]["x-forgeflow-schema"] == "io.k8s.api.core.v1.PodTemplateSpec"


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda j: j["spec"].update(pytorchReplicaSpec=j["spec"].pop("pytorchReplicaSpecs")), "spec:"),
        (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas="3"), "Worker.replicas"),
        (lambda j: j["spec"].update(nprocPerNode=8), "spec.nprocPerNode"),
        (lambda j: j["spec"]["runPolicy"].update(cleanPodPolicy=["All"]), "runPolicy.cleanPodPolicy"),
        (
            lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].update(
                imagePullPolcy="Always"
            ),
            "Master.template.spec.containers.0",
        ),
        (
            lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"][0].update(
                emptyDir="Memory"
            ),
            "Master.template.spec.volumes.0.emptyDir",
        ),
    ],
)
def test_invalid_pytorchjobs_are_caught_with_the_field(ff_home, mutate, where):
    job = pytorchjob_manifest(_spec(processes=8, nodes=2), SPEC_URI, GPU_NODE)
    bad = copy.deepcopy(job)
    mutate(bad)
    with pytest.raises(ManifestError, match=r"invalid field") as e:
        validate_pytorchjob(bad)
    assert where in str(e.value)


def test_one_node_job_is_a_standalone_master(ff_home):
    job = pytorchjob_manifest(_spec(processes=8), SPEC_URI, GPU_NODE)
    validate_pytorchjob(job)
    assert {k: v["replicas"] for k, v in job["spec"]["pytorchReplicaSpecs"].items()} == {"Master": 1}
    c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["torchrun", "--standalone", "--nproc_per_node=8", "-m", "trainers.train"]


def test_pytorchjob_needs_one_process_per_gpu(ff_home):
    with pytest.raises(ValueError, match=r"min_nodes needs nodes > 1"):
        pytorchjob_manifest(_spec(processes=8, min_nodes=1), SPEC_URI, GPU_NODE)
    with pytest.raises(ValueError, match=r"processes=2 but each pod asks for gpus=8"):
        pytorchjob_manifest(_spec(processes=2, nodes=2), SPEC_URI, GPU_NODE)


# ---------------------------------------------------------------- the operator, against a fake API


class FakeCustomObjects:
    """Records what the operator submits and replays job statuses (stands in for CustomObjectsApi)."""

    def __init__(self, states: list[str], exists: dict | None = None):
        self.states = list(states)
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.exists = exists

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        from kubernetes.client.exceptions import ApiException

        assert (group, version, plural) == (GROUP, VERSION, PLURAL)
        if self.exists is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append(body)
        self.exists = body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        conditions = [{"type": "Created", "status": "True"}]
        if state != "Created":
            conditions.append({"type": state, "status": "True", "message": f"job is {state.lower()}"})
        return {**self.exists, "status": {"conditions": conditions}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


def _operator(ff_home, api: FakeCustomObjects, result: dict | None) -> tuple[PyTorchJobOperator, str]:
    from tasks.engine import result_uri_for, write_spec
    from tasks.storage import Lake

    lake = Lake.from_settings()
    uri = lake.uri("runs", "k8s", "spec.json")
    write_spec(_spec(processes=8, nodes=2), uri, lake)
    if result is not None:
        lake.write_json(result_uri_for(uri), result)
    op = PyTorchJobOperator(task_id="train", spec_uri=uri, node_resources=GPU_NODE, poll_interval_s=0)
    op.api = lambda: api  # the fake cluster
    return op, uri


def test_operator_renders_submits_waits_and_returns_the_result(ff_home):
    api = FakeCustomObjects(["Created", "Running", "Succeeded"])
    op, uri = _operator(ff_home, api, {"status": "success", "model_version": "3"})
    rendered = op.manifest()  # what the task would submit: rendered and validated, no cluster needed
    assert rendered["metadata"]["annotations"]["forgeflow/spec-uri"] == uri
    assert op.execute({})["model_version"] == "3"
    assert [j["metadata"]["name"] for j in api.created] == [rendered["metadata"]["name"]]
    op.on_kill()
    assert api.deleted == [rendered["metadata"]["name"]]


def test_operator_reports_a_failed_job_with_the_engine_error(ff_home):
    api = FakeCustomObjects(["Running", "Failed"])
    op, _ = _operator(ff_home, api, {"status": "failed", "error": "DataError: train_uri: no records"})
    with pytest.raises(EngineFailed) as e:
        op.execute({})
    message = str(e.value)
    assert "Failed: job is failed" in message and "no records" in message
    assert "kubectl logs" in message and "training.kubeflow.org/job-name=" in message


def test_templated_resources_are_validated_when_the_task_runs(ff_home):
    api = FakeCustomObjects(["Succeeded"])
    op, _ = _operator(ff_home, api, {"status": "success"})
    op.node_resources = {**GPU_NODE.model_dump(), "gpus": "8"}  # as Jinja renders "{{ params.gpus }}"
    assert op.manifest()["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    op.node_resources = {**GPU_NODE.model_dump(), "memory_limit": "1TB"}
    with pytest.raises(ValueError, match=r"memory_limit '1TB' is not a Kubernetes quantity"):
        op.manifest()


def test_a_retried_task_waits_on_its_existing_job_but_not_on_another_specs(ff_home):
    api = FakeCustomObjects(["Succeeded"])
    op, uri = _operator(ff_home, api, {"status": "success"})
    api.exists = op.manifest()
    assert op.execute({})["status"] == "success" and api.created == []
    other = FakeCustomObjects(
        ["Running"], exists={"metadata": {"annotations": {"forgeflow/spec-uri": "s3://x"}}}
    )
    op.api = lambda: other
    with pytest.raises(EngineFailed, match="already exists for another spec"):
        op.execute({})


def test_job_state_reads_the_conditions():
    assert job_state({}) == ("Pending", "")
    assert job_state({"status": {"conditions": [{"type": "Running", "status": "True"}]}}) == ("Running", "")
    done = {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}
    assert (
        job_state({"status": {"conditions": [{"type": "Running", "status": "False"}, done]}})[0]
        == "Succeeded"
    )


def _dag_params(**chosen) -> dict:
    """model_train's Params as the trigger form submits them: every default, plus ``chosen``."""
    from airflow.dag_processing.dagbag import DagBag

    from tasks.settings import PROJECT_ROOT

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "model_train.py")).dags["model_train"]
    return {**{name: dag.params[name] for name in dag.params}, **chosen}


def _published_sft() -> str:
    from tasks.catalog import Catalog

    cat = Catalog.from_settings()
    cat.ensure_dataset("general", "k8s")
    v = cat.commit_version("general", "k8s", run_key="r", uri="file:///v", usage="sft", record_count=3)
    return cat.publish(v.ref).ref


def test_model_train_on_kubernetes_carries_gpus_processes_and_nodes_from_the_spec(ff_home, monkeypatch):
    """The spec the DAG's build_spec task writes decides the launch: one node is a pod with the GPUs and
    torchrun processes it asks for; more nodes a PyTorchJob with a Master and Workers, each with them."""
    from tasks.k8s_training import TrainOnKubernetesOperator
    from tasks.training import build_train_spec

    ref = _published_sft()
    pod_params = {"pod_cpu_request": "16", "pod_cpu_limit": "32", "pod_memory_request": "200Gi",
                  "pod_memory_limit": "400Gi", "pod_shm_size": "64Gi"}  # fmt: skip
    one = build_train_spec(
        _dag_params(method="sft_full", base_model="tiny", gpus=4, dist_processes=4, **pod_params),
        "mt/one",
        ref,
    )["spec_uri"]
    kind, pod_op = TrainOnKubernetesOperator(task_id="train", spec_uri=one).launcher()
    assert kind == "pod"
    pod = render_pod(pod_op)
    kubernetes_validate.validate(pod, "1.30", strict=True)
    c = pod["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert c["resources"]["requests"]["cpu"] == "16" and c["resources"]["limits"]["memory"] == "400Gi"
    assert c["command"] == ["torchrun", "--standalone", "--nproc_per_node", "4", "-m", "trainers.train"]

    many = build_train_spec(
        _dag_params(method="sft_full", base_model="tiny", gpus=8, dist_processes=8, dist_nodes=3),
        "mt/many",
        ref,
    )["spec_uri"]
    kind, job = TrainOnKubernetesOperator(task_id="train", spec_uri=many).launcher()
    assert kind == "pytorchjob"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for r in replicas.values():
        container = r["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["command"][:3] == ["torchrun", "--nnodes=3", "--nproc_per_node=8"]

    with pytest.raises(ValueError, match="resources.gpus=4 but distributed.processes=1"):
        build_train_spec(_dag_params(method="sft_full", base_model="tiny", gpus=4), "mt/bad", ref)


def test_the_kubernetes_runner_wires_model_train_to_the_spec_deciding_operator(ff_home, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from tasks.settings import PROJECT_ROOT, get_settings

    monkeypatch.setenv("FORGEFLOW_RUNNER", "kubernetes")
    get_settings.cache_clear()
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "model_train.py")).dags["model_train"]
    assert type(dag.get_task("train")).__name__ == "TrainOnKubernetesOperator"
    get_settings.cache_clear()
