"""
### dataset_mix_publish — mix dataset versions into a new version, then publish it (or publish one version)

**Mix** two or more versions by dataset (each part a version `SCENE/NAME@Vn` with a count or a ratio) or by
tag (parts select records of the `inputs` by `meta.tags`), seeded, with up- and down-sampling; presets
carry the seeds' guidance (`pretrain-industry-general` 1:6 within 1:4–1:9, `sft-industry-general` 1:3,
`distill` 1:1:1). The achieved proportions are reported exactly, and the mixed version's parents are the
versions it came from.

**Publish** the result (or, with no parts, the version in `version`): export in the standard format,
OpenAI chat or ShareGPT with a seeded train/validation split, atomically (a killed run leaves no partial
export; a retry publishes once). A version whose quality suite failed needs an override reason, which is
recorded. Publishing emits the Airflow Asset `forgeflow://datasets/<usage>`, which schedules `model_train`.

Parts in the form: `{"ref": "general/industry@V1", "ratio": 1}` or `{"ref": ..., "count": 500}` or
`{"tags": ["domain:law"], "ratio": 3}`; with a preset, `{"ref": ..., "role": "industry"}`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, AssetAlias, Param, dag, get_current_context, task

from tasks.assets import PUBLISHED_ALIAS, dataset_asset_name
from tasks.dagkit import DEFAULT_ARGS, engine_step, run_key

REF_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?/[a-z0-9]([a-z0-9-]*[a-z0-9])?$"


@dag(
    dag_id="dataset_mix_publish",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["forgeflow", "data"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "target": Param(
            "general/mixed",
            type="string",
            pattern=REF_PATTERN,
            section="Mix",
            description="Dataset SCENE/NAME the mix becomes the next version of (created when new).",
        ),
        "parts": Param(
            [],
            type="array",
            section="Mix",
            description='Parts of the mix, e.g. [{"ref": "general/industry@V1", "ratio": 1}, {"ref": '
            '"general/web@V2", "ratio": 6}]; by tag: [{"tags": ["domain:law"], "count": 500}, ...]. '
            "Empty: publish `version` without mixing.",
        ),
        "by": Param(
            "dataset", enum=["dataset", "tag"], section="Mix", description="Parts are versions or tags."
        ),
        "inputs": Param(
            [], type="array", section="Mix", description="By tag: the versions the tag parts select from."
        ),
        "preset": Param(
            None,
            type=["null", "string"],
            enum=[None, "pretrain-industry-general", "sft-industry-general", "distill"],
            section="Mix",
            description="Seed guidance: roles and ratios (parts then name their role).",
        ),
        "total": Param(None, type=["integer", "null"], minimum=1, section="Mix", description="Target size."),
        "baseline": Param(
            None,
            type=["null", "string"],
            section="Mix",
            description="Part kept whole; the others scale to it (ratios).",
        ),
        "sampling": Param(
            None,
            type=["null", "string"],
            enum=[None, "down", "up", "both"],
            section="Mix",
            description="down never repeats records, up never drops them (default: preset's, else down).",
        ),
        "seed": Param(0, type="integer", section="Mix", description="Seed of sampling and of the split."),
        "note": Param(
            None, type=["null", "string"], section="Mix", description="Note kept on the mixed version."
        ),
        "version": Param(
            None,
            type=["null", "string"],
            section="Publish",
            description="Without parts: the version SCENE/NAME@Vn to publish.",
        ),
        "format": Param(
            "standard",
            enum=["standard", "openai", "sharegpt"],
            section="Publish",
            description="Export format: canonical JSONL, OpenAI chat messages or ShareGPT conversations.",
        ),
        "visibility": Param(
            "private", enum=["private", "public"], section="Publish", description="Who may select it."
        ),
        "validation_ratio": Param(
            0.05,
            type=["number", "null"],
            minimum=0,
            maximum=0.5,
            section="Publish",
            description="Share of records held out for validation (null: no split).",
        ),
        "validation_count": Param(
            None,
            type=["integer", "null"],
            minimum=0,
            section="Publish",
            description="Exact held-out count instead.",
        ),
        "override_reason": Param(
            None,
            type=["null", "string"],
            section="Publish",
            description="Publish even though the quality suite failed; the reason is recorded.",
        ),
    },
)
def dataset_mix_publish():
    @task
    def build_mix() -> str | None:
        """Resolve the parts to exact versions and write the mix spec (None: nothing to mix)."""
        from tasks.data import build_mix_spec

        ctx = get_current_context()
        return build_mix_spec(dict(ctx["params"]), run_key(ctx))

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def has_mix(spec_uri: str | None) -> bool:
        return spec_uri is not None

    @task
    def build_quality(spec_uri: str | None) -> str | None:
        """The quality report + expectation suite spec of the mixed records."""
        from tasks.data import build_quality_spec

        return build_quality_spec(spec_uri)

    @task(trigger_rule="none_failed")
    def commit(spec_uri: str | None, quality_spec_uri: str | None) -> str:
        """Commit the mixed version with its quality result (once per run), or take the version to publish."""
        from tasks.data import commit_mix_version

        return commit_mix_version(spec_uri, dict(get_current_context()["params"]), quality_spec_uri)

    @task
    def build_publish(ref: str) -> dict:
        """Quality gate, then the export spec."""
        from tasks.data import build_publish_spec

        ctx = get_current_context()
        owner = getattr(ctx.get("dag_run"), "triggering_user_name", None)
        return build_publish_spec(ref, dict(ctx["params"]), user=owner)

    @task
    def publish_spec_uri(prepared: dict) -> str:
        return prepared["spec_uri"]

    @task(outlets=[AssetAlias(PUBLISHED_ALIAS)])
    def record(prepared: dict, *, outlet_events=None) -> dict:
        """Mark the version published and emit the Asset event of its usage, carrying the reference."""
        from tasks.data import finish_publication

        info = finish_publication(prepared)
        asset = Asset(name=dataset_asset_name(info["usage"]), uri=info["export"]["asset_uri"])
        outlet_events[AssetAlias(PUBLISHED_ALIAS)].add(
            asset,
            extra={
                "ref": info["ref"],
                "uri": info["uri"],
                "usage": info["usage"],
                "records": info["record_count"],
                "export": info["export"]["output_uri"],
                "format": info["export"]["format"],
            },
        )
        return info

    mix_spec = build_mix()
    mixed = engine_step("spark_ops.mix", mix_spec, task_id="mix", execution_timeout=timedelta(hours=4))
    has_mix(mix_spec) >> mixed
    quality_spec = build_quality(mix_spec)
    mixed >> quality_spec
    assessed = engine_step(
        "spark_ops.quality", quality_spec, task_id="quality", execution_timeout=timedelta(hours=2)
    )
    ref = commit(mix_spec, quality_spec)
    assessed >> ref
    prepared = build_publish(ref)
    exported = engine_step(
        "spark_ops.publish",
        publish_spec_uri(prepared),
        task_id="export",
        execution_timeout=timedelta(hours=4),
    )
    done = record(prepared)
    exported >> done


dataset_mix_publish()
