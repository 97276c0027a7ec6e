from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.settings import Settings, get_settings
from tasks.specs import (
    METHOD_DEFAULTS,
    ProcessSpec,
    ServeSpec,
    SparkResources,
    TinyModelConfig,
    TrainSpec,
    check_name,
    default_hyperparams,
    slug,
)


def test_home_moves_every_default(ff_home):
    s = get_settings()
    assert s.home == ff_home.resolve()
    assert s.lake_uri == (ff_home / "lake").resolve().as_uri()
    assert s.catalog_url == f"sqlite:///{ff_home.resolve() / 'catalog.db'}"
    assert s.mlflow_tracking_uri.startswith("sqlite:///") and str(ff_home.resolve()) in s.mlflow_tracking_uri


def test_explicit_settings_win(ff_home, monkeypatch):
    monkeypatch.setenv("FORGEFLOW_LAKE_URI", "s3://bucket/lake")
    monkeypatch.setenv("FORGEFLOW_CATALOG_URL", "postgresql+psycopg2://u@h/db")
    monkeypatch.setenv("FORGEFLOW_RUNNER", "kubernetes")
    s = Settings()
    assert (s.lake_uri, s.catalog_url, s.runner) == (
        "s3://bucket/lake",
        "postgresql+psycopg2://u@h/db",
        "kubernetes",
    )


def test_bad_runner_is_rejected(ff_home, monkeypatch):
    monkeypatch.setenv("FORGEFLOW_RUNNER", "slurm")
    with pytest.raises(ValidationError, match="runner"):
        Settings()


@pytest.mark.parametrize("name", ["a", "tiny-chat", "m2-v3"])
def test_seed_names_accepted(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["-a", "a-", "A", "a_b", "", "x" * 64])
def test_seed_names_rejected(name):
    with pytest.raises(ValueError, match="lowercase letters"):
        check_name(name)


def test_slug_makes_airflow_run_ids_valid():
    s = slug("dataset_process/manual__2026-01-01T00:00:00+00:00")
    assert check_name(s) == s


def test_spark_resource_defaults_are_the_seed_defaults():
    r = SparkResources()
    assert (r.num_executors, r.executor_cores, r.executor_memory_gb, r.driver_cores, r.driver_memory_gb) == (
        2,
        2,
        4,
        2,
        4,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"executor_cores": 2, "executor_memory_gb": 2}, "executor cores:memory"),
        ({"executor_cores": 1, "executor_memory_gb": 5}, "executor cores:memory"),
        ({"driver_cores": 1, "driver_memory_gb": 8}, "driver cores:memory"),
        ({"num_executors": 5, "executor_memory_gb": 4}, "between 4 and 16"),
        ({"num_executors": 1, "executor_cores": 1, "executor_memory_gb": 3}, "between 4 and 16"),
    ],
)
def test_spark_resource_constraints(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        SparkResources(**kwargs)


def test_method_defaults_follow_the_seeds():
    assert default_hyperparams("pretrain").learning_rate == 5e-6
    assert default_hyperparams("pretrain").batch_size == 32
    assert default_hyperparams("sft_lora").epochs == 3
    assert default_hyperparams("distill").warmup_ratio == 0.1
    assert default_hyperparams("sft_lora", learning_rate=1e-4).learning_rate == 1e-4
    assert set(METHOD_DEFAULTS) == {
        "pretrain",
        "sft_full",
        "sft_lora",
        "prompt_tuning",
        "reward_model",
        "dpo",
        "distill",
    }


def test_learning_rate_range_is_the_seed_range():
    with pytest.raises(ValidationError, match="learning_rate"):
        default_hyperparams("sft_lora", learning_rate=1e-3)


def test_tiny_model_heads_must_divide():
    with pytest.raises(ValidationError, match="divisible"):
        TinyModelConfig(hidden_size=100, num_attention_heads=3)


def test_specs_forbid_unknown_fields():
    with pytest.raises(ValidationError, match="extra"):
        TrainSpec(run_key="r", method="sft_lora", train_uri="file:///x", output_uri="file:///y", epochs=3)


def test_specs_round_trip_through_json():
    spec = ProcessSpec(run_key="r", inputs=[{"uri": "file:///a.jsonl"}], usage="sft", output_uri="file:///o")
    assert ProcessSpec.model_validate_json(spec.model_dump_json()) == spec


def test_serve_spec_checks_the_service_name():
    with pytest.raises(ValidationError, match="service_name"):
        ServeSpec(run_key="r", service_name="Tiny_Chat", model="models:/m/1")


def test_tiny_model_head_size_must_be_servable_by_vllm():
    with pytest.raises(ValidationError, match="cannot be served by vLLM"):
        TinyModelConfig(hidden_size=64, num_attention_heads=4)
    assert TinyModelConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=2).hidden_size == 64


def test_stack_refuses_a_port_held_by_another_program(ff_home, monkeypatch):
    import socket

    from tasks import stack

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        monkeypatch.setenv("FORGEFLOW_AIRFLOW_PORT", str(srv.getsockname()[1]))
        get_settings.cache_clear()
        with pytest.raises(RuntimeError, match="FORGEFLOW_AIRFLOW_PORT"):
            stack.start(get_settings())


def test_stack_env_binds_everything_to_loopback(ff_home):
    from tasks.stack import components, stack_env

    env = stack_env()
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    cmds = {c.name: c.cmd for c in components(get_settings())}
    assert (
        "--skip-serve-logs" in cmds["airflow-scheduler"] and "--skip-serve-logs" in cmds["airflow-triggerer"]
    )
    assert cmds["mlflow"][cmds["mlflow"].index("--host") + 1] == "127.0.0.1"
