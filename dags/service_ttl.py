"""
### service_ttl — stop model services whose time to live has passed

Services deployed with `ttl_minutes` (model_serve, and the temporary services of model_evaluate) are
stopped by this DAG once they expire; stale records of services whose process is gone are removed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from tasks.dagkit import DEFAULT_ARGS


@dag(
    dag_id="service_ttl",
    schedule=timedelta(minutes=10),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["forgeflow", "serving"],
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
)
def service_ttl():
    @task
    def reap_expired() -> dict:
        """Stop expired services and drop records of dead ones."""
        from serving.services import reap

        return reap()

    reap_expired()


service_ttl()
