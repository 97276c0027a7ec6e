"""Small building blocks the DAG files wire together: Params from spec models, engine steps, defaults.

Everything here is cheap to import; the heavy work happens inside task callables and engines.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from tasks.settings import get_settings

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, XComArg

    from tasks.specs import PodResources

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "forgeflow",
    "retries": 1,
    "retry_delay": timedelta(seconds=30),
}

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}


def params_from_model(
    model: type[BaseModel],
    defaults: dict[str, Any] | None = None,
    prefix: str = "",
    section: str | None = None,
    fields: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Airflow Params for each field of a spec model (or those named in ``fields``): type, default, range,
    pattern, enum and description.

    The Params form then shows exactly the contract the engine validates.
    """
    import typing

    from airflow.sdk import Param

    defaults = defaults or {}
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        if fields is not None and name not in fields:
            continue
        ann = f.annotation
        kwargs: dict[str, Any] = {"description": f.description or name}
        if section:
            kwargs["section"] = section
        origin = typing.get_origin(ann)
        args = typing.get_args(ann)
        nullable = type(None) in args
        if origin is typing.Literal:
            kwargs["enum"] = list(args)
            jtype = _JSON_TYPES.get(type(args[0]), "string")
        elif origin in (dict, list):  # dict[str, str], list[dict[...]]: the container is the JSON type
            jtype = _JSON_TYPES[origin]
        else:
            base = next((a for a in args if a is not type(None)), ann) if args else ann
            jtype = _JSON_TYPES.get(typing.get_origin(base) or base, "string")
        kwargs["type"] = [jtype, "null"] if nullable else jtype
        for m in f.metadata:
            if isinstance(m, Ge):
                kwargs["minimum"] = m.ge
            elif isinstance(m, Gt):
                kwargs["exclusiveMinimum"] = m.gt
            elif isinstance(m, Le):
                kwargs["maximum"] = m.le
            elif isinstance(m, Lt):
                kwargs["exclusiveMaximum"] = m.lt
            elif getattr(m, "pattern", None):
                kwargs["pattern"] = m.pattern
        default = defaults.get(name, f.get_default(call_default_factory=True))
        out[prefix + name] = Param(default, **kwargs)
    return out


def endpoint_key_params(prefix: str, section: str) -> dict[str, Any]:
    """Params saying where an endpoint's bearer key is, never the key: ``<prefix>api_key_conn_id`` (an Airflow
    Connection) and ``<prefix>api_key_env`` (an environment variable), from Endpoint's own fields."""
    from tasks.specs import Endpoint

    return params_from_model(
        Endpoint, prefix=prefix, section=section, fields=("api_key_conn_id", "api_key_env")
    )


def engine_step(
    engine: str,
    spec_uri: XComArg,
    task_id: str,
    execution_timeout: timedelta | None = None,
    resources: PodResources | None = None,
    processes: int = 1,
) -> BaseOperator | XComArg:
    """Run ``engine`` on the spec at ``spec_uri`` with the configured runner (local or Kubernetes).

    ``resources`` and ``processes`` (torchrun processes, one per GPU) shape the Kubernetes pod; the local
    runner reads the processes from the spec itself. Training on Kubernetes reads all of it from the spec
    when the task runs (TrainOnKubernetesOperator: a pod for one node, a PyTorchJob for more).
    """
    timeout = execution_timeout or timedelta(hours=6)
    if get_settings().runner == "kubernetes":
        pulled = "{{ ti.xcom_pull(task_ids='" + spec_uri.operator.task_id + "') }}"
        if engine == "trainers.train":
            from tasks.k8s_training import TrainOnKubernetesOperator

            op = TrainOnKubernetesOperator(task_id=task_id, spec_uri=pulled, execution_timeout=timeout)
        else:
            from tasks.runners import engine_pod_operator

            op = engine_pod_operator(task_id, engine, pulled, resources, processes, execution_timeout=timeout)
        spec_uri.operator >> op
        return op
    from airflow.sdk import task

    @task(task_id=task_id, execution_timeout=timeout)
    def run_local_engine(engine: str, spec_uri: str) -> dict[str, Any]:
        """Run the engine as a child process; its output is this task's log."""
        from tasks.runners import LocalRunner

        return LocalRunner().run(engine, spec_uri)

    return run_local_engine(engine, spec_uri)


def run_key(context: dict[str, Any]) -> str:
    """The idempotency key of a task's work: the DAG and run it belongs to."""
    return f"{context['dag'].dag_id}/{context['run_id']}"
