"""
### dataset_review — human sampling review of a dataset version, gated on its pass rate

Seed 001 §2.1.5 (数据评估): sample N records of the version (seeded, reproducible), assign them to the
reviewers with a snapshot of the evaluation standard, wait until every record is judged (Pass, or Fail
with problem tags) in the Forgeflow console API (`/forgeflow/api/review`), write the quality report
into the lake next to the version, and fail the run when the pass rate is below the threshold.

The wait is a sensor in reschedule mode: it frees its worker slot between pokes, and fails with the
progress per reviewer when the review is not done `timeout_hours` after the task was created.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, PokeReturnValue, dag, get_current_context, task

from tasks.dagkit import DEFAULT_ARGS, run_key

POKE_INTERVAL_S = 60
# Ceiling of the sensor itself; the run's own deadline is the timeout_hours Param, checked in each poke.
SENSOR_CEILING = timedelta(days=31)


@dag(
    dag_id="dataset_review",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    tags=["forgeflow", "data", "review"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    params={
        "version": Param(
            "general/alpaca-zh@latest",
            type="string",
            description="Dataset version to review: SCENE/NAME@Vn (@latest / @published are pinned).",
        ),
        "standard": Param(
            "sft-qa",
            type="string",
            description="Evaluation standard (presets: general-text, sft-qa; or one created in the console).",
        ),
        "sample_size": Param(
            100, type="integer", minimum=1, maximum=100000, description="Records to sample (N)."
        ),
        "seed": Param(0, type="integer", minimum=0, description="Sampling seed: same seed, same sample."),
        "reviewers": Param(
            ["admin"],
            type="array",
            items={"type": "string"},
            minItems=1,
            description="Airflow user names of the reviewers; records are dealt among them.",
        ),
        "assignment": Param(
            "round_robin",
            enum=["round_robin", "balanced"],
            description="round_robin: records in turn; balanced: by characters to read.",
        ),
        "pass_threshold": Param(
            0.9,
            type="number",
            minimum=0,
            maximum=1,
            description="Lowest pass rate (0-1) that lets the run succeed.",
        ),
        "timeout_hours": Param(
            72,
            type="number",
            exclusiveMinimum=0,
            maximum=24 * 31,
            description="Hours the reviewers have, counted from task creation; then the run fails.",
        ),
    },
)
def dataset_review():
    @task
    def create_review() -> int:
        """Sample the version and assign the records (a retry finds the task this run created)."""
        from tasks.review import create_task

        ctx = get_current_context()
        p = ctx["params"]
        owner = getattr(ctx["dag_run"], "triggering_user_name", None) or DEFAULT_ARGS["owner"]
        spec = {
            "version": p["version"],
            "standard": p["standard"],
            "sample_size": p["sample_size"],
            "seed": p["seed"],
            "reviewers": p["reviewers"],
            "assignment": p["assignment"],
            "run_key": run_key(ctx),
        }
        return create_task(spec, created_by=owner).id

    @task.sensor(poke_interval=POKE_INTERVAL_S, timeout=SENSOR_CEILING.total_seconds(), mode="reschedule")
    def wait_for_reviews(review_id: int) -> PokeReturnValue:
        """Done when every sampled record has a verdict."""
        from airflow.sdk.exceptions import AirflowSensorTimeout

        from tasks.review import ReviewTimeout, poke

        try:
            done, prog = poke(review_id, get_current_context()["params"]["timeout_hours"])
        except ReviewTimeout as e:
            raise AirflowSensorTimeout(str(e)) from e
        return PokeReturnValue(is_done=done, xcom_value=prog)

    @task
    def write_report(review_id: int) -> dict:
        """The quality report as JSON in the lake; returns its URI and the summary counts."""
        from tasks.review import write_report

        out = write_report(review_id)
        rep = out["report"]
        keys = ("task_id", "version_ref", "decided", "passed", "failed", "pass_rate", "tags", "partial")
        return {"uri": out["uri"], **{k: rep[k] for k in keys}}

    @task
    def quality_gate(summary: dict) -> dict:
        """Fail the run (no retry) when the pass rate is below the threshold."""
        from airflow.sdk.exceptions import AirflowFailException

        from tasks.review import ReviewGateFailed, check_threshold, report

        threshold = get_current_context()["params"]["pass_threshold"]
        try:
            return {**check_threshold(report(summary["task_id"]), threshold), "report_uri": summary["uri"]}
        except ReviewGateFailed as e:
            raise AirflowFailException(f"{e} (report: {summary['uri']})") from e

    review_id = create_review()
    waited = wait_for_reviews(review_id)
    summary = write_report(review_id)
    waited >> summary
    quality_gate(summary)


dataset_review()
