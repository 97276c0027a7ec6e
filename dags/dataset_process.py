"""
### dataset_process — import raw data, clean it on Spark, commit and publish a dataset version

Raw files (JSONL, JSON, CSV, Parquet, TXT, Alpaca, ShareGPT, OpenAI chat, CSV question/answer, preference
pairs; vision Q&A with images) are mapped onto the canonical schema of their usage; bad records (broken
JSON, missing or mistyped fields, bytes that are not UTF-8, empty files, a file whose content does not match
its format) go to quarantine with file, line and reason. Sample files: `include/samples/`. An operator recipe from
`include/recipes/` runs in order on Spark (`local[*]` by default, a cluster through `FORGEFLOW_SPARK_MASTER`)
and the result becomes the next immutable version `SCENE/NAME@Vn` in the catalogue. Publishing makes it
selectable for training and emits the Airflow Asset `forgeflow://datasets/<usage>`, which schedules
`model_train` for SFT data.

Trigger from the UI (Params form), or `POST /api/v2/dags/dataset_process/dagRuns` with `{"conf": {...}}`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import get_args

from airflow.sdk import Asset, AssetAlias, Param, dag, get_current_context, task

from tasks.assets import PUBLISHED_ALIAS, dataset_asset_name, dataset_asset_uri
from tasks.dagkit import DEFAULT_ARGS, engine_step, run_key
from tasks.recipes import recipe_names
from tasks.specs import FORMAT_HELP, InputFormat

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"


@dag(
    dag_id="dataset_process",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["forgeflow", "data"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "scene": Param(
            "general",
            type="string",
            pattern=NAME_PATTERN,
            section="Dataset",
            description="Scene (task-goal category) of the dataset; 'general' when none fits.",
        ),
        "dataset": Param(
            "alpaca-zh",
            type="string",
            pattern=NAME_PATTERN,
            section="Dataset",
            description="Dataset name: lowercase letters, digits and '-'.",
        ),
        "note": Param(
            None,
            type=["null", "string"],
            section="Dataset",
            description="Free-text note kept on the dataset.",
        ),
        "usage": Param(
            "sft",
            enum=["pretrain", "sft", "rl", "reward_model", "model_test"],
            section="Dataset",
            description="What the data is for; decides its schema and where it can be selected.",
        ),
        "source": Param(
            "shared://sft/alpaca_zh_demo.json",
            type=["string", "array"],
            section="Import",
            description="File, directory or URI to import, or a list of them; a list entry may also be "
            "a mapping {uri, format, field_map, source} for inputs of different shapes. shared:// is the "
            "bundled data directory; s3:// and file:// work too.",
        ),
        "format": Param(
            "alpaca",
            enum=list(get_args(InputFormat)),
            values_display={k: f"{k}: {v}" for k, v in FORMAT_HELP.items()},
            section="Import",
            description="Input format; auto picks from the file suffix.",
        ),
        "modality": Param(
            "text",
            enum=["text", "image"],
            section="Import",
            description="image for vision Q&A records {context, image, target} (usage sft, rl or model_test); "
            "image paths are relative to the input file.",
        ),
        "labelled": Param(
            True,
            type="boolean",
            section="Import",
            description="Untick for unlabelled data (the question only, for annotation / pre-annotation).",
        ),
        "field_map": Param(
            {},
            type="object",
            section="Import",
            description='Canonical field -> source field, e.g. {"context": "question", '
            '"target": "std_answer"}; list values are joined with newlines.',
        ),
        "source_label": Param(
            None,
            type=["null", "string"],
            section="Import",
            description="Source label stored in each record's meta (default: file name).",
        ),
        "max_reject_ratio": Param(
            0.1,
            type="number",
            minimum=0,
            maximum=1,
            section="Import",
            description="Fail when more than this share of records is quarantined.",
        ),
        "recipe": Param(
            "standard-clean",
            enum=recipe_names(),
            section="Processing",
            description="Saved operator recipe (include/recipes/<name>.yaml), run in order.",
        ),
        "publish": Param(
            True,
            type="boolean",
            section="Processing",
            description="Publish the version (selectable for training; emits the Asset).",
        ),
        "override_reason": Param(
            None,
            type=["null", "string"],
            section="Processing",
            description="Publish even though the version's Great Expectations suite failed; the reason is "
            "recorded with the publication. Empty: a failed suite blocks publishing.",
        ),
        "num_executors": Param(
            2,
            type="integer",
            minimum=1,
            section="Spark resources",
            description="Executors (cluster mode). num_executors x executor memory: 4-16 GB.",
        ),
        "executor_cores": Param(
            2,
            type="integer",
            minimum=1,
            section="Spark resources",
            description="Cores per executor; cores:memory between 1:2 and 1:4.",
        ),
        "executor_memory_gb": Param(
            4, type="integer", minimum=1, section="Spark resources", description="Memory per executor in GB."
        ),
        "driver_cores": Param(
            2,
            type="integer",
            minimum=1,
            section="Spark resources",
            description="Driver cores; cores:memory between 1:2 and 1:4.",
        ),
        "driver_memory_gb": Param(
            4, type="integer", minimum=1, section="Spark resources", description="Driver memory in GB."
        ),
        "spark_conf": Param(
            {},
            type="object",
            section="Spark resources",
            description="Extra Spark configuration, name -> value.",
        ),
    },
)
def dataset_process():
    @task
    def build_spec() -> str:
        """Validate the Params as a ProcessSpec and write it to the lake."""
        from tasks.data import build_process_spec

        ctx = get_current_context()
        return build_process_spec(dict(ctx["params"]), run_key(ctx))

    @task
    def build_quality(spec_uri: str) -> str:
        """The quality report + expectation suite spec of the processed records."""
        from tasks.data import build_process_quality_spec

        return build_process_quality_spec(spec_uri)

    @task
    def commit_version(spec_uri: str, quality_spec_uri: str) -> dict:
        """Make the engine's output the next version of the dataset with its quality result (once per
        run, even on retry)."""
        from tasks.data import commit_processed

        return commit_processed(
            spec_uri, dict(get_current_context()["params"]), quality_spec_uri=quality_spec_uri
        )

    @task(outlets=[AssetAlias(PUBLISHED_ALIAS)])
    def publish_version(version: dict, *, outlet_events=None) -> dict:
        """Publish the version and emit the Asset event of its usage, carrying the reference."""
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.data import publish

        if not get_current_context()["params"]["publish"]:
            raise AirflowSkipException(f"{version['ref']} kept unpublished (publish=false)")
        ctx = get_current_context()
        user = getattr(ctx.get("dag_run"), "triggering_user_name", None)
        info = publish(version["ref"], ctx["params"].get("override_reason") or None, user)
        asset = Asset(name=dataset_asset_name(info["usage"]), uri=dataset_asset_uri(info["usage"]))
        outlet_events[AssetAlias(PUBLISHED_ALIAS)].add(
            asset,
            extra={
                "ref": info["ref"],
                "uri": info["uri"],
                "usage": info["usage"],
                "records": info["record_count"],
            },
        )
        return info

    spec_uri = build_spec()
    processed = engine_step(
        "spark_ops.run", spec_uri, task_id="process", execution_timeout=timedelta(hours=4)
    )
    quality_spec = build_quality(spec_uri)
    processed >> quality_spec
    assessed = engine_step(
        "spark_ops.quality", quality_spec, task_id="quality", execution_timeout=timedelta(hours=2)
    )
    version = commit_version(spec_uri, quality_spec)
    assessed >> version
    publish_version(version)


dataset_process()
