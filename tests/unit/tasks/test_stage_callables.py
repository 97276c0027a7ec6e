"""The stage callables behind DAG tasks, without Airflow: Params in, validated specs in the lake out."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.catalog import Catalog, CatalogError
from tasks.data import build_process_spec, input_source, resolve_source
from tasks.datasets import _char_count
from tasks.engine import load_spec
from tasks.specs import ProcessSpec, TrainSpec
from tasks.training import HealthCheckFailed, build_train_spec, dataset_from_trigger, health_check

PROCESS_PARAMS = {
    "scene": "general",
    "dataset": "alpaca-zh",
    "usage": "sft",
    "source": "shared://sft/alpaca_zh_demo.json",
    "format": "alpaca",
    "field_map": {},
    "source_label": "",
    "max_reject_ratio": 0.1,
    "recipe": "standard-clean",
    "num_executors": 2,
    "executor_cores": 2,
    "executor_memory_gb": 4,
    "driver_cores": 2,
    "driver_memory_gb": 4,
    "spark_conf": {"spark.sql.ansi.enabled": True},
}


def test_shared_sources_resolve_to_the_bundled_data(ff_home):
    uri = resolve_source("shared://sft/alpaca_zh_demo.json")
    assert uri.startswith("file://") and uri.endswith("/data/sft/alpaca_zh_demo.json")
    assert resolve_source("s3://b/k.jsonl") == "s3://b/k.jsonl"


def test_sources_may_carry_their_own_format():
    params = {"format": "alpaca", "field_map": {}, "source_label": "x"}
    a = input_source("s3://b/a.json", params)
    b = input_source({"uri": "s3://b/p.json", "format": "json", "field_map": {"text": "paragraphs"}}, params)
    assert (a.format, a.source) == ("alpaca", "x")
    assert (b.format, b.field_map, b.source) == ("json", {"text": "paragraphs"}, "x")
    with pytest.raises(ValueError, match="mappings with a 'uri'"):
        input_source({"path": "x"}, params)


def test_process_spec_from_params(ff_home):
    uri = build_process_spec(PROCESS_PARAMS, "dataset_process/manual__1")
    spec = load_spec(uri, ProcessSpec)
    assert [op.name for op in spec.operators] == ["normalize", "empty_filter", "exact_dedupe"]
    assert spec.spark.conf == {"spark.sql.ansi.enabled": "True"}
    assert spec.output_uri.endswith("/datasets/general/alpaca-zh/dataset-process-manual-1")


def test_process_spec_rejects_seed_violations(ff_home):
    with pytest.raises(ValidationError, match="between 1:2 and 1:4"):
        build_process_spec({**PROCESS_PARAMS, "executor_memory_gb": 16}, "r")


def test_char_count_sums_text_columns():
    assert _char_count({"chars": {"context": {"sum": 5}, "target": {"sum": 7}}}) == 12
    assert _char_count({}) is None


class _Event:
    def __init__(self, extra):
        self.extra = extra


def test_dataset_comes_from_param_or_triggering_asset_event():
    assert dataset_from_trigger({"dataset": "general/a@V1"}, None) == "general/a@V1"
    events = {"forgeflow://datasets/sft": [_Event({"ref": "general/a@V1"}), _Event({"ref": "general/a@V2"})]}
    assert dataset_from_trigger({"dataset": ""}, events) == "general/a@V2"
    with pytest.raises(CatalogError, match="no dataset given"):
        dataset_from_trigger({"dataset": ""}, {})


def _publish(usage: str) -> str:
    cat = Catalog.from_settings()
    cat.ensure_dataset("general", "d")
    v = cat.commit_version("general", "d", run_key="r", uri="file:///v", usage=usage, record_count=3)
    return cat.publish(v.ref).ref


TRAIN_PARAMS = {
    "method": "sft_lora",
    "base_model": "models:/base/1",
    "validation_split": 0.05,
    "experiment": "e",
    "register_as": "chat",
    "merge_lora": True,
    "hp_epochs": None,
    "hp_learning_rate": 1e-4,
    "hp_batch_size": None,
    "tiny_hidden_size": 256,
}


def test_train_spec_uses_method_defaults_and_overrides(ff_home):
    ref = _publish("sft")
    out = build_train_spec(TRAIN_PARAMS, "model_train/r1", ref)
    spec = load_spec(out["spec_uri"], TrainSpec)
    assert spec.hyperparams.epochs == 3 and spec.hyperparams.batch_size == 8  # SFT seed defaults
    assert spec.hyperparams.learning_rate == 1e-4  # the user's override
    assert spec.dataset_ref == "general/d@V1" and spec.train_uri == "file:///v"


def test_train_spec_resumes_its_own_latest_checkpoint_unless_told_otherwise(ff_home):
    from tasks.training import resume_spec

    ref = _publish("sft")
    spec = load_spec(build_train_spec(TRAIN_PARAMS, "model_train/r1", ref)["spec_uri"], TrainSpec)
    assert (spec.resume.from_uri, spec.resume.mode, spec.resume.if_missing) == ("latest", "continue", "start")
    other = resume_spec(
        {"resume_from": "s3://lake/models/r0", "resume_mode": "continue_skip", "resume_skip_samples": 64}
    )
    assert (other.from_uri, other.mode, other.skip_samples, other.if_missing) == (
        "s3://lake/models/r0",
        "continue_skip",
        64,
        "fail",
    )
    assert (
        resume_spec(
            {"resume_from": "s3://x", "resume_mode": "weights_only", "resume_skip_samples": 5}
        ).skip_samples
        == 0
    )


def test_train_spec_takes_the_distributed_params(ff_home):
    from tasks.training import distributed_params

    params = distributed_params()
    assert set(params) == {"dist_deepspeed", "dist_processes", "dist_nodes", "dist_min_nodes"}
    assert params["dist_processes"].schema["minimum"] == 1 and params["dist_deepspeed"].value == "none"
    ref = _publish("sft")
    chosen = {"dist_deepspeed": "zero3", "dist_processes": 2, "dist_nodes": 1, "dist_min_nodes": None}
    spec = load_spec(
        build_train_spec({**TRAIN_PARAMS, **chosen}, "model_train/r2", ref)["spec_uri"], TrainSpec
    )
    assert spec.distributed.deepspeed == "zero3" and spec.distributed.world_size == 2
    # a DAG without these Params trains as one process
    spec = load_spec(build_train_spec(TRAIN_PARAMS, "model_train/r3", ref)["spec_uri"], TrainSpec)
    assert spec.distributed.world_size == 1 and not spec.distributed.uses_deepspeed


def test_train_spec_enforces_usage(ff_home):
    ref = _publish("pretrain")
    with pytest.raises(CatalogError, match="sft_lora can only use sft data"):
        build_train_spec(TRAIN_PARAMS, "model_train/r1", ref)


def test_health_check_reports_disk_lake_cpu_and_memory(ff_home):
    report = health_check(min_free_gb=0.001)
    assert report["free_gb"] > 0 and report["lake"].startswith("file://") and report["lake_writable"] is True
    assert report["cpu"]["logical_cores"] >= 1 and report["memory"]["total_gb"] > 0
    assert "gpus" not in report  # no GPU asked for: torch and CUDA are not even loaded
    assert not list((ff_home / "lake" / "_health").glob("*"))  # the probe is removed
    with pytest.raises(HealthCheckFailed, match="GB free"):
        health_check(min_free_gb=10**9)


def test_health_check_lists_every_problem_with_what_to_do(ff_home, tmp_path, monkeypatch):
    from tasks.settings import get_settings

    (tmp_path / "not-a-dir").write_text("a file where the lake should be")
    monkeypatch.setenv("FORGEFLOW_LAKE_URI", (tmp_path / "not-a-dir" / "lake").as_uri())
    get_settings.cache_clear()
    with pytest.raises(HealthCheckFailed) as e:
        health_check(min_free_gb=10**9, min_free_memory_gb=10**9)
    msg = str(e.value)
    assert "3 problem(s)" in msg and "GB free" in msg and "memory available" in msg
    assert "not-a-dir/lake is not writable" in msg and "FORGEFLOW_LAKE_URI" in msg


def test_health_check_without_cuda_says_why(ff_home):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(HealthCheckFailed, match=r"1 GPU\(s\) requested but CUDA is not available"):
        health_check(min_free_gb=0.001, gpus=1)


def test_health_check_counts_visible_gpus(ff_home, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(HealthCheckFailed, match=r"2 GPU\(s\) requested but 1 visible"):
        health_check(min_free_gb=0.001, gpus=2)


def test_health_check_finds_a_visible_gpu_that_cannot_compute(ff_home, monkeypatch):
    """A device that is listed but fails on first use (here: CUDA calls on a CPU build of torch)."""
    from types import SimpleNamespace

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (70 * 2**30, 80 * 2**30))
    with pytest.raises(HealthCheckFailed, match=r"GPU 0 \(NVIDIA H100 80GB HBM3\) is visible but not usable"):
        health_check(min_free_gb=0.001, gpus=1)


def test_distill_params_become_the_teacher_and_the_rules(ff_home):
    from tasks.training import distill_params

    params = distill_params()
    assert {"teacher_base_url", "teacher_model", "distill_student", "distill_min_accept_ratio"} <= set(params)
    ref = _publish("sft")
    distill = {**TRAIN_PARAMS, "method": "distill", "base_model": "models:/base/1", "chat_template": "qwen2"}
    with pytest.raises(ValueError, match="method distill needs the teacher: set the teacher_base_url"):
        build_train_spec(distill, "model_train/d0", ref)
    chosen = {
        "teacher_base_url": "http://127.0.0.1:9/v1",
        "teacher_model": "big",
        "teacher_api_key_conn_id": "teacher-llm",
        "distill_student": "lora",
        "distill_min_accept_ratio": 0.8,
        "distill_concurrency": None,
    }
    spec = load_spec(build_train_spec({**distill, **chosen}, "model_train/d1", ref)["spec_uri"], TrainSpec)
    assert spec.teacher.base_url == "http://127.0.0.1:9/v1" and spec.teacher.api_key_conn_id == "teacher-llm"
    assert spec.teacher.api_key_env == "FORGEFLOW_KEY_TEACHER_LLM"
    assert (
        spec.distill.student == "lora"
        and spec.distill.min_accept_ratio == 0.8
        and spec.distill.concurrency == 4
    )
    assert spec.chat_template == "qwen2"
    # other methods ignore the teacher Params
    assert (
        load_spec(
            build_train_spec({**TRAIN_PARAMS, **chosen}, "model_train/d2", ref)["spec_uri"], TrainSpec
        ).teacher
        is None
    )
