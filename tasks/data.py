"""Data-stage callables behind the dataset_process DAG: build the process spec, commit, publish."""

from __future__ import annotations

from typing import Any

from tasks.catalog import Catalog
from tasks.engine import result_uri_for
from tasks.recipes import load_recipe
from tasks.runners import prepare, read_result
from tasks.settings import PROJECT_ROOT, get_settings
from tasks.specs import InputSource, ProcessSpec, SparkResources, slug
from tasks.storage import Lake, to_uri

SHARED_PREFIX = "shared://"


def resolve_source(uri: str) -> str:
    """``shared://sft/x.json`` → the bundled data set; relative paths are relative to the project."""
    if uri.startswith(SHARED_PREFIX):
        return to_uri(get_settings().shared_data / uri[len(SHARED_PREFIX) :])
    if "://" in uri:
        return uri
    p = PROJECT_ROOT / uri if not uri.startswith("/") else None
    return to_uri(p if p is not None and p.exists() else uri)


def input_source(src: str | dict[str, Any], params: dict[str, Any]) -> InputSource:
    """One input: a URI using the run's format and field map, or a mapping with its own."""
    base = {
        "format": params["format"],
        "field_map": params.get("field_map") or {},
        "source": params.get("source_label") or None,
    }
    if isinstance(src, str):
        return InputSource(uri=resolve_source(src), **base)
    if not isinstance(src, dict) or "uri" not in src:
        raise ValueError(f"source entries are URIs or mappings with a 'uri'; got {src!r}")
    return InputSource(**{**base, **src, "uri": resolve_source(src["uri"])})


def version_uri(scene: str, dataset: str, run_key: str, lake: Lake | None = None) -> str:
    """Each writer run gets its own directory; the catalogue row is what makes it a version."""
    lake = lake or Lake.from_settings()
    return lake.uri("datasets", scene, dataset, slug(run_key))


def build_process_spec(params: dict[str, Any], run_key: str) -> str:
    """Validate the run's Params as a ProcessSpec and write it to the lake; returns the spec URI."""
    spark = SparkResources(
        num_executors=params["num_executors"],
        executor_cores=params["executor_cores"],
        executor_memory_gb=params["executor_memory_gb"],
        driver_cores=params["driver_cores"],
        driver_memory_gb=params["driver_memory_gb"],
        conf={str(k): str(v) for k, v in (params.get("spark_conf") or {}).items()},
    )
    sources = params["source"] if isinstance(params["source"], list) else [params["source"]]
    spec = ProcessSpec(
        run_key=run_key,
        inputs=[input_source(src, params) for src in sources],
        usage=params["usage"],
        modality=params.get("modality", "text"),
        labelled=params.get("labelled", True),
        operators=load_recipe(params["recipe"]),
        spark=spark,
        output_uri=version_uri(params["scene"], params["dataset"], run_key),
        max_reject_ratio=params["max_reject_ratio"],
    )
    return prepare(spec, "spark_ops.run")


def commit_processed(
    spec_uri: str,
    params: dict[str, Any],
    parents: list[str] | None = None,
    quality_spec_uri: str | None = None,
) -> dict[str, Any]:
    """Make the engine's output a catalogue version with its quality result (idempotent for the run)."""
    from tasks.datasets import commit_from_manifest, quality_attrs

    lake = Lake.from_settings()
    read_result(spec_uri, lake)  # raises with the engine's error when it did not succeed
    spec = ProcessSpec.model_validate(lake.read_json(spec_uri))
    cat = Catalog.from_settings()
    cat.ensure_dataset(params["scene"], params["dataset"], note=params.get("note") or "")
    sources = params["source"] if isinstance(params["source"], list) else [params["source"]]
    quality = None
    if quality_spec_uri is not None:
        quality = {k: v for k, v in read_result(quality_spec_uri, lake).items() if k != "status"}
    info = commit_from_manifest(
        cat,
        params["scene"],
        params["dataset"],
        run_key=spec.run_key,
        output_uri=spec.output_uri,
        usage=spec.usage,
        recipe=[op.model_dump() for op in spec.operators],
        parents=parents or [],
        lake=lake,
        note=params.get("note") or "",
        source=", ".join(s if isinstance(s, str) else str(s.get("uri")) for s in sources),
        **quality_attrs(quality),
    )
    return {**info.to_dict(), "result_uri": result_uri_for(spec_uri)}


def publish(ref: str, override_reason: str | None = None, user: str | None = None) -> dict[str, Any]:
    """Publish a processed version in the catalogue, behind its quality gate (a failed suite needs an
    override reason, recorded with the publication)."""
    from tasks.datasets import quality_gate

    cat = Catalog.from_settings()
    info = cat.get_version(ref)
    decision = quality_gate(info, override_reason, user)
    publication: dict[str, Any] = {
        "format": "canonical",
        "quality_gate": {k: decision.get(k) for k in ("reason", "failed")},
    }
    if decision.get("override"):
        publication["quality_override"] = decision["override"]
    if info.status == "published":  # a retry: the first attempt's publication stands
        return info.to_dict()
    return cat.publish(ref, publication=publication).to_dict()


def build_process_quality_spec(spec_uri: str) -> str:
    """The quality spec (report + suite) of a finished process run's output."""
    from tasks.datasets import quality_spec

    lake = Lake.from_settings()
    read_result(spec_uri, lake)
    spec = ProcessSpec.model_validate(lake.read_json(spec_uri))
    return prepare(quality_spec(spec.run_key, spec.output_uri, spec.usage), "spark_ops.quality")


# ---------------------------------------------------------------- mix and publish (dataset_mix_publish DAG)


def build_mix_spec(params: dict[str, Any], run_key: str) -> str | None:
    """The mix spec of the run's Params written to the lake, or None when the run only publishes."""
    from tasks.datasets import mix_spec

    parts = params.get("parts") or []
    if not parts:
        return None
    spec = mix_spec(
        params["target"],
        parts,
        run_key=run_key,
        by=params.get("by") or "dataset",
        inputs=params.get("inputs") or [],
        preset=params.get("preset") or None,
        total=params.get("total") or None,
        baseline=params.get("baseline") or None,
        seed=int(params.get("seed") or 0),
        sampling=params.get("sampling") or None,
    )
    return prepare(spec, "spark_ops.mix")


def build_quality_spec(mix_spec_uri: str | None) -> str | None:
    """The quality spec (report + expectation suite) of the finished mix output; None without a mix."""
    from tasks.datasets import quality_spec
    from tasks.specs import MixSpec

    if mix_spec_uri is None:
        return None
    lake = Lake.from_settings()
    result = read_result(mix_spec_uri, lake)
    spec = MixSpec.model_validate(lake.read_json(mix_spec_uri))
    return prepare(quality_spec(spec.run_key, spec.output_uri, result["usage"]), "spark_ops.quality")


def commit_mix_version(
    spec_uri: str | None, params: dict[str, Any], quality_spec_uri: str | None = None
) -> str:
    """Commit the mixed version with its quality result (idempotent per run); returns the reference the
    run publishes: the mixed version, or the ``version`` Param when there is nothing to mix."""
    from tasks.datasets import commit_mix
    from tasks.specs import MixSpec

    if spec_uri is None:
        if not params.get("version"):
            raise ValueError(
                "give either parts (at least two, to mix) or version (SCENE/NAME@Vn, to publish)"
            )
        return Catalog.from_settings().get_version(params["version"]).ref
    lake = Lake.from_settings()
    read_result(spec_uri, lake)
    spec = MixSpec.model_validate(lake.read_json(spec_uri))
    quality: bool | dict[str, Any] = False
    if quality_spec_uri is not None:
        quality = {k: v for k, v in read_result(quality_spec_uri, lake).items() if k != "status"}
    note = params.get("note") or ""
    return commit_mix(params["target"], spec, note=note, quality=quality, lake=lake)["ref"]


def build_publish_spec(ref: str, params: dict[str, Any], user: str | None = None) -> dict[str, Any]:
    """Check the quality gate and write the export spec; returns {spec_uri, decision}."""
    from tasks.datasets import publish_spec, quality_gate

    info = Catalog.from_settings().get_version(ref)
    decision = quality_gate(info, params.get("override_reason") or None, user)
    spec = publish_spec(
        info,
        fmt=params.get("format") or "standard",
        visibility=params.get("visibility") or "private",
        validation_ratio=params.get("validation_ratio"),
        validation_count=params.get("validation_count"),
        seed=int(params.get("seed") or 0),
    )
    return {"spec_uri": prepare(spec, "spark_ops.publish"), "ref": info.ref, "decision": decision}


def finish_publication(prepared: dict[str, Any]) -> dict[str, Any]:
    """Record the finished export in the catalogue: the version becomes published (and selectable)."""
    from tasks.datasets import record_publication

    result = read_result(prepared["spec_uri"])
    info = Catalog.from_settings().get_version(prepared["ref"])
    return record_publication(info, result, prepared["decision"])
