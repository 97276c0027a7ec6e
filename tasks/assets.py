"""Airflow Assets Forgeflow emits. A published dataset version produces an event on the asset of its usage,
with the version reference in the event's extra; training DAGs schedule on those assets."""

from __future__ import annotations

PUBLISHED_ALIAS = "forgeflow-dataset-published"


def dataset_asset_uri(usage: str) -> str:
    return f"forgeflow://datasets/{usage}"


def dataset_asset_name(usage: str) -> str:
    return f"forgeflow-dataset-{usage.replace('_', '-')}"
