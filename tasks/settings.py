"""One typed Settings object for the whole platform, read from ``FORGEFLOW_*`` environment variables.

State lives under ``./.forgeflow`` (relative to the working directory) unless ``FORGEFLOW_HOME`` moves it.
Every other location defaults to a place inside that home, so one variable relocates a whole installation.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Platform settings. Each field is read from ``FORGEFLOW_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="FORGEFLOW_", extra="ignore")

    home: Path = Field(default=Path(".forgeflow"), description="State directory of this installation.")
    lake_uri: str = Field(
        default="",
        description="Root of the data lake: file:///path (default: <home>/lake) or s3://bucket/prefix.",
    )
    catalog_url: str = Field(
        default="",
        description="SQLAlchemy URL of the catalogue (default: SQLite at <home>/catalog.db; "
        "production: postgresql+psycopg2://...).",
    )
    mlflow_tracking_uri: str = Field(
        default="",
        description="MLflow tracking URI (default: SQLite at <home>/mlflow/mlflow.db; or http://host:port).",
    )
    mlflow_artifact_root: str = Field(
        default="", description="Artifact root for new MLflow experiments (default: <home>/mlflow/artifacts)."
    )
    runner: Literal["local", "kubernetes"] = Field(
        default="local",
        description="Where engines run: a local subprocess, or a KubernetesPodOperator pod.",
    )
    spark_master: str = Field(
        default="local[*]", description="Spark master URL: local[*], spark://host:7077, yarn, k8s://..."
    )
    engine_stop_grace_s: float = Field(
        default=45,
        gt=0,
        description="Seconds a stopped engine gets between SIGTERM and SIGKILL (local process group and "
        "pod termination grace): a training engine saves a checkpoint in that time. Keep it below "
        "Airflow's killed_task_cleanup_time (60 s by default).",
    )
    k8s_namespace: str = Field(default="forgeflow", description="Namespace of engine pods.")
    k8s_image: str = Field(default="forgeflow:latest", description="Image built from this repo's Dockerfile.")
    k8s_service_account: str = Field(default="forgeflow", description="Service account of engine pods.")
    k8s_in_cluster: bool = Field(
        default=True, description="Airflow runs inside the cluster it launches pods in."
    )
    k8s_config_file: str | None = Field(default=None, description="kubeconfig path when not in cluster.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph); empty means AWS itself."
    )
    vllm_python: Path = Field(
        default=PROJECT_ROOT / ".venv-vllm" / "bin" / "python",
        description="Python of the separate virtualenv that holds vLLM.",
    )
    serve_host: str = Field(default="127.0.0.1", description="Address model services bind to.")
    serve_backend: Literal["auto", "vllm", "fallback"] = Field(
        default="auto",
        description="auto: vLLM when its virtualenv is present and starts, else the fallback server.",
    )
    airflow_port: int = Field(default=8080, description="Port of the Airflow API server / UI (127.0.0.1).")
    mlflow_port: int = Field(default=5001, description="Port of the MLflow tracking server (127.0.0.1).")
    shared_data: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "data",
        description="Directory of the bundled public data sets.",
    )

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.lake_uri:
            self.lake_uri = (self.home / "lake").as_uri()
        if not self.catalog_url:
            self.catalog_url = f"sqlite:///{self.home / 'catalog.db'}"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"
        if not self.mlflow_artifact_root:
            self.mlflow_artifact_root = (self.home / "mlflow" / "artifacts").as_uri()
        return self

    def path(self, *parts: str) -> Path:
        """A directory inside the state home, created on first use."""
        p = self.home.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings. Tests call ``get_settings.cache_clear()`` after changing the env."""
    return Settings()
