"""The Forgeflow console: a FastAPI app mounted in the Airflow API server (``forgeflow_console_plugin``).

It serves JSON endpoints now (human sampling review of dataset versions); the server-rendered pages of
the console come with the annotation issue. Cheap to import: no heavy modules, Airflow's auth is imported
on the first request.
"""

from __future__ import annotations

from fastapi import FastAPI

from .review_api import router as review_router

URL_PREFIX = "/forgeflow"


def create_app() -> FastAPI:
    """The console app (mounted at ``URL_PREFIX``)."""
    app = FastAPI(
        title="Forgeflow console",
        description="Forgeflow's API inside Airflow: every endpoint needs an Airflow JWT "
        "(Authorization: Bearer, from POST /auth/token) or the Airflow UI's session cookie.",
    )
    app.include_router(review_router)
    return app
