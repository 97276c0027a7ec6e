"""Training on Kubernetes as a Kubeflow PyTorchJob (kubeflow.org/v1) built from a TrainSpec.

One node runs as a plain pod (:func:`tasks.runners.engine_pod_operator`, ``torchrun --standalone``) or as
a PyTorchJob whose Master runs alone (what :class:`PyTorchJobOperator` submits, so a DAG decides nodes at
run time). More nodes are a Master and ``nodes - 1`` Workers (or ``nodes`` elastic Workers), each pod running
``torchrun ... -m trainers.train SPEC_URI`` with the same image, env, resources, /dev/shm, node selector
and tolerations as the single pod. The training operator (v1.7+) adds MASTER_ADDR (the master's
service), MASTER_PORT (the container port named ``pytorchjob-port``), RANK (the node's index: master 0,
worker i+1), WORLD_SIZE, PET_NNODES, PET_NPROC_PER_NODE and PET_NODE_RANK to every container; the
command passes the ones torchrun needs explicitly (``$(VAR)`` is expanded by the kubelet), and with an
elastic policy it adds PET_RDZV_ENDPOINT and PET_RDZV_BACKEND for the c10d rendezvous.

The manifest is checked before it is submitted: the PyTorchJob fields against the CRD's
openAPIV3Schema (include/k8s/kubeflow.org_pytorchjobs.yaml), each pod template against the Kubernetes
PodTemplateSpec schema that kubernetes-validate bundles, both strict (unknown fields are errors, as
``kubectl apply --validate=strict`` makes them). :class:`PyTorchJobOperator` submits it from a DAG and
waits for it; the engine's ``result.json`` in the lake is the task's result, as with every runner.
"""

from __future__ import annotations

import copy
import logging
import time
from functools import lru_cache
from typing import Any

from airflow.sdk import BaseOperator

from tasks.runners import (
    ENGINE_SECRET,
    RANK_PREFIX_TEMPLATE,
    EngineFailed,
    pod_env,
    pod_labels,
    pod_resources,
    pod_volumes,
    read_result,
)
from tasks.settings import PROJECT_ROOT, get_settings
from tasks.specs import PodResources, TrainSpec, slug

log = logging.getLogger("forgeflow.k8s_training")
# every torchrun line in the pod log names its rank (the local runner does the same)
RANK_PREFIX_ENV = {"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": RANK_PREFIX_TEMPLATE}

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CRD_PATH = PROJECT_ROOT / "include" / "k8s" / "kubeflow.org_pytorchjobs.yaml"
K8S_VERSION = "1.30"  # the Kubernetes schema pod templates are checked against (kubernetes-validate)
CONTAINER = "pytorch"  # the training operator finds the port on the container of this name
PORT_NAME, PORT = "pytorchjob-port", 23456
ENGINE = "trainers.train"
SPEC_ANNOTATION = "forgeflow/spec-uri"
MAX_JOB_NAME = 48  # pods are <job>-worker-<i>; every name must stay a 63-character DNS label


class ManifestError(ValueError):
    """A manifest the cluster would reject; the message lists each bad field by path."""


def job_name(run_key: str) -> str:
    """A DNS-1035 name for the job (services are named after it, so it must start with a letter)."""
    return ("ff-" + slug(run_key))[:MAX_JOB_NAME].rstrip("-")


def torchrun_args(spec: TrainSpec, name: str) -> list[str]:
    """The torchrun command of every replica (fixed: nnodes and node rank; elastic: c10d rendezvous)."""
    d = spec.distributed
    if d.nodes == 1:
        launch = ["--standalone", f"--nproc_per_node={d.processes}"]
    elif d.min_nodes is None:
        launch = [
            f"--nnodes={d.nodes}",
            f"--nproc_per_node={d.processes}",
            "--node_rank=$(RANK)",
            "--master_addr=$(MASTER_ADDR)",
            "--master_port=$(MASTER_PORT)",
        ]
    else:
        launch = [
            f"--nnodes={d.min_nodes}:{d.nodes}",
            f"--nproc_per_node={d.processes}",
            "--rdzv_backend=c10d",
            "--rdzv_endpoint=$(PET_RDZV_ENDPOINT)",
            f"--rdzv_id={name}",
            "--max_restarts=3",
        ]
    return ["torchrun", *launch, "-m", ENGINE]


def pod_template(spec: TrainSpec, spec_uri: str, resources: PodResources, name: str) -> dict[str, Any]:
    """One replica's pod: the engine pod's image, env, secret, resources, /dev/shm, selectors, tolerations."""
    from kubernetes.client import ApiClient
    from kubernetes.client import models as k8s

    s = get_settings()
    volumes, mounts = pod_volumes(resources)
    container = k8s.V1Container(
        name=CONTAINER,
        image=s.k8s_image,
        command=torchrun_args(spec, name),
        args=[spec_uri],
        env=[k8s.V1EnvVar(name=k, value=v) for k, v in sorted((pod_env() | RANK_PREFIX_ENV).items())],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=ENGINE_SECRET, optional=True))],
        resources=pod_resources(resources),
        volume_mounts=mounts,
        ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=PORT, protocol="TCP")],
    )
    template = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels={**pod_labels(ENGINE), "forgeflow/job": name}),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=volumes,
            node_selector=resources.node_selector or None,
            tolerations=resources.v1_tolerations(),
            service_account_name=s.k8s_service_account,
        ),
    )
    return ApiClient().sanitize_for_serialization(template)


def pytorchjob_manifest(
    spec: TrainSpec,
    spec_uri: str,
    resources: PodResources | None = None,
    name: str | None = None,
    active_deadline_s: int | None = None,
) -> dict[str, Any]:
    """The PyTorchJob for a spec: Master + Workers (fixed size), elastic Workers, or (one node) a Master
    alone running ``torchrun --standalone``, so a DAG can submit every training run the same way."""
    d = spec.distributed
    r = resources or PodResources()
    if d.min_nodes is not None and d.nodes == 1:
        raise ValueError("distributed.min_nodes needs nodes > 1: an elastic job grows and shrinks in nodes")
    if r.gpus and d.processes != r.gpus:
        raise ValueError(
            f"distributed.processes={d.processes} but each pod asks for gpus={r.gpus}: a GPU run has one "
            "process per GPU, so make them equal"
        )
    name = name or job_name(spec.run_key)
    template = pod_template(spec, spec_uri, r, name)
    replica = {"restartPolicy": "Never", "template": template}
    if d.nodes == 1:
        replicas = {"Master": {"replicas": 1, **replica}}
    elif d.min_nodes is None:
        replicas = {
            "Master": {"replicas": 1, **copy.deepcopy(replica)},
            "Worker": {"replicas": d.nodes - 1, **copy.deepcopy(replica)},
        }
    else:
        replicas = {"Worker": {"replicas": d.nodes, **replica}}
    job_spec: dict[str, Any] = {
        "nprocPerNode": str(d.processes),
        "pytorchReplicaSpecs": replicas,
        "runPolicy": {
            "backoffLimit": 0,  # Airflow's retry resubmits; a half-restarted job only hangs its peers
            "cleanPodPolicy": "Running",  # the workers left waiting after a failure go away
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            **({"activeDeadlineSeconds": active_deadline_s} if active_deadline_s else {}),
        },
    }
    if d.min_nodes is not None:
        job_spec["elasticPolicy"] = {
            "rdzvBackend": "c10d",
            "minReplicas": d.min_nodes,
            "maxReplicas": d.nodes,
            "maxRestarts": 3,
        }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": get_settings().k8s_namespace,
            "labels": {**pod_labels(ENGINE), "forgeflow/job": name},
            "annotations": {SPEC_ANNOTATION: spec_uri},
        },
        "spec": job_spec,
    }


# ---------------------------------------------------------------- validation


@lru_cache(maxsize=1)
def crd_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the vendored CRD's served v1 version."""
    import yaml

    docs = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    crd = next(d for d in docs if d.get("kind") == "CustomResourceDefinition")
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION and v.get("served"))
    return version["schema"]["openAPIV3Schema"]


def _strict(node: Any, defs_id: str) -> Any:
    """The CRD schema as the API server applies it with strict field validation: unknown fields are
    errors, and the subtrees cut from the vendored file point at the Kubernetes schema."""
    if isinstance(node, list):
        return [_strict(n, defs_id) for n in node]
    if not isinstance(node, dict):
        return node
    if "x-forgeflow-schema" in node:
        return {"$ref": f"{defs_id}#/$defs/{node['x-forgeflow-schema']}"}
    out = {k: _strict(v, defs_id) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=4)
def _validator(k8s_version: str) -> Any:
    import json
    from importlib.resources import files

    import jsonschema
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    match = [v for v in kv.all_versions() if kv.major_minor(v) == k8s_version]
    if not match:
        raise ValueError(
            f"kubernetes-validate has no schema for Kubernetes {k8s_version}: {kv.all_versions()}"
        )
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{match[-1]}-local-strict"
    defs = json.loads((folder / "_definitions.json").read_text())
    schema = _strict(crd_schema(), defs["$id"])
    registry = Registry().with_resource(defs["$id"], Resource.from_contents(defs))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_pytorchjob(manifest: dict[str, Any], k8s_version: str = K8S_VERSION) -> None:
    """Raise ManifestError listing every field the cluster would reject (CRD + Kubernetes schemas)."""
    errors = sorted(_validator(k8s_version).iter_errors(manifest), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = [f"  - {'.'.join(map(str, e.path)) or '(root)'}: {e.message[:300]}" for e in errors[:20]]
        name = manifest.get("metadata", {}).get("name", "?")
        raise ManifestError(f"PyTorchJob {name}: {len(errors)} invalid field(s)\n" + "\n".join(lines))


def to_yaml(manifest: dict[str, Any]) -> str:
    """The manifest as YAML a person can ``kubectl apply -f``."""
    import yaml

    return yaml.safe_dump(manifest, sort_keys=False)


# ---------------------------------------------------------------- the DAG side


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """(state, message): Succeeded | Failed | the last true condition (Created, Running, ...) | Pending."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    for terminal in ("Succeeded", "Failed"):
        for c in conditions:
            if c.get("type") == terminal:
                return terminal, c.get("message") or c.get("reason") or ""
    if conditions:
        c = conditions[-1]
        return c.get("type", "Unknown"), c.get("message") or ""
    return "Pending", ""


class PyTorchJobOperator(BaseOperator):
    """Submit the PyTorchJob for a training spec, wait for it to finish, return the engine's result.

    ``spec_uri`` is templated (the build_spec task's XCom); the spec's ``resources`` are each node's pod
    unless ``node_resources`` (templated too, a dict of PodResources fields) replaces them: nodes,
    processes and resources are all decided when the run starts. The manifest is built when the task runs, from the spec
    itself, and validated before anything reaches the cluster. A retried task whose job
    still exists (same spec URI) waits on that job instead of submitting a second one; killing the task
    deletes the job.
    """

    template_fields = ("spec_uri", "node_resources")

    def __init__(
        self,
        *,
        spec_uri: str,
        node_resources: PodResources | dict[str, Any] | None = None,
        kubernetes_conn_id: str | None = None,
        poll_interval_s: float = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec_uri = spec_uri
        self.node_resources = node_resources  # None: the spec's own; `resources` is BaseOperator's
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_interval_s = poll_interval_s
        self._job: tuple[str, str] | None = None  # (namespace, name) once submitted

    def manifest(self, spec: TrainSpec | None = None) -> dict[str, Any]:
        """The PyTorchJob this task submits for its (rendered) spec_uri, validated; ``spec``: the spec at
        spec_uri when the caller has read it already."""
        from tasks.engine import load_spec

        spec = spec or load_spec(self.spec_uri, TrainSpec)
        resources = self.node_resources
        if resources is None:
            resources = spec.resources
        elif not isinstance(resources, PodResources):
            resources = PodResources.model_validate(resources)
        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
        manifest = pytorchjob_manifest(
            spec, self.spec_uri, resources, active_deadline_s=int(timeout) if timeout else None
        )
        validate_pytorchjob(manifest)
        return manifest

    def api(self) -> Any:
        """The kubernetes CustomObjectsApi (through the provider's hook and connection)."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        s = get_settings()
        hook = KubernetesHook(
            conn_id=self.kubernetes_conn_id, in_cluster=s.k8s_in_cluster, config_file=s.k8s_config_file
        )
        return hook.custom_object_client

    def execute(self, context: Any) -> dict[str, Any]:
        return self.run_job(self.manifest())

    def run_job(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Submit ``manifest`` (or find it submitted by an earlier try), wait, return the engine's result."""
        from kubernetes.client.exceptions import ApiException

        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        api = self.api()
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
            log.info("submitted PyTorchJob %s/%s (%s nodes)", namespace, name, self._nodes(manifest))
        except ApiException as e:
            if e.status != 409:
                raise
            existing = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            if existing["metadata"].get("annotations", {}).get(SPEC_ANNOTATION) != self.spec_uri:
                raise EngineFailed(
                    f"PyTorchJob {namespace}/{name} already exists for another spec; delete it "
                    f"(kubectl delete pytorchjob -n {namespace} {name}) or use another run key"
                ) from e
            log.info("PyTorchJob %s/%s exists for this spec (a retried task): waiting on it", namespace, name)
        self._job = (namespace, name)
        state = self.wait(api, namespace, name)
        if state[0] != "Succeeded":
            raise EngineFailed(self._failure(namespace, name, state))
        return read_result(self.spec_uri)

    def wait(self, api: Any, namespace: str, name: str) -> tuple[str, str]:
        last = None
        while True:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            state = job_state(job)
            if state != last:
                log.info("PyTorchJob %s/%s: %s %s", namespace, name, *state)
                last = state
            if state[0] in ("Succeeded", "Failed"):
                return state
            time.sleep(self.poll_interval_s)

    def _failure(self, namespace: str, name: str, state: tuple[str, str]) -> str:
        try:
            engine_error = str(read_result(self.spec_uri))
        except EngineFailed as e:
            engine_error = str(e)
        return (
            f"PyTorchJob {namespace}/{name} {state[0]}: {state[1]}; {engine_error}. Logs of every node: "
            f"kubectl logs -n {namespace} -l training.kubeflow.org/job-name={name} --prefix --tail=200"
        )

    @staticmethod
    def _nodes(manifest: dict[str, Any]) -> int:
        return sum(r["replicas"] for r in manifest["spec"]["pytorchReplicaSpecs"].values())

    def on_kill(self) -> None:
        if self._job:
            namespace, name = self._job
            log.info("deleting PyTorchJob %s/%s", namespace, name)
            self.api().delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def training_pod(spec: TrainSpec, spec_uri: str, task_id: str = "train", **kwargs: Any) -> Any:
    """The engine pod for a one-node training spec: its ``resources`` (GPUs, CPU, memory) and, for several
    processes, ``torchrun --standalone --nproc_per_node N``."""
    from tasks.runners import engine_pod_operator

    return engine_pod_operator(
        task_id, ENGINE, spec_uri, spec.resources, spec.distributed.processes, **kwargs
    )


class TrainOnKubernetesOperator(PyTorchJobOperator):
    """model_train's train step on Kubernetes, decided by the spec when the task runs: one node is a pod
    (:func:`training_pod`), more nodes a PyTorchJob (Master + Workers). Either way the GPUs, CPU and memory
    are the spec's ``resources`` and the processes and nodes its ``distributed``."""

    def launcher(self) -> tuple[str, Any]:
        """("pod", the pod operator) or ("pytorchjob", the manifest) for the rendered spec_uri."""
        from tasks.engine import load_spec

        spec = load_spec(self.spec_uri, TrainSpec)
        if spec.distributed.nodes > 1:
            return "pytorchjob", self.manifest(spec)
        return "pod", training_pod(
            spec, self.spec_uri, task_id=self.task_id, execution_timeout=self.execution_timeout
        )

    def execute(self, context: Any) -> dict[str, Any]:
        kind, launch = self.launcher()
        if kind == "pytorchjob":
            return self.run_job(launch)
        log.info("one node: running the training in a pod (%s)", launch.task_id)
        launch.execute(context)
        return read_result(self.spec_uri)
