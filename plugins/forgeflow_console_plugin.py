"""The Forgeflow console as an Airflow plugin: its FastAPI app is mounted in the Airflow API server.

Airflow puts this folder on ``sys.path`` and imports this file; the app lives in the
``forgeflow_console`` package next to it. Endpoints: ``/forgeflow/api/review/...`` (see
``forgeflow_console/review_api.py``); every one requires an Airflow JWT.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # Airflow adds the plugins folder itself; this covers a plain import too
    sys.path.append(_HERE)

from forgeflow_console import URL_PREFIX, create_app  # noqa: E402


class ForgeflowConsolePlugin(AirflowPlugin):
    name = "forgeflow_console"
    fastapi_apps = [{"name": "forgeflow_console", "app": create_app(), "url_prefix": URL_PREFIX}]
