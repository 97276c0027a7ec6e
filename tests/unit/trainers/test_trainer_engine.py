"""Spec -> TrainingArguments, method checks, and the evaluation engine's request and scoring logic."""

from __future__ import annotations

import json

import httpx
import pytest

from tasks.specs import EvalSpec, HyperParams, TrainSpec, default_hyperparams
from trainers import evaluate as ev
from trainers.data import ChatRecord
from trainers.methods import get_method
from trainers.train import training_arguments


def test_training_arguments_follow_hyperparams(tmp_path):
    hp = HyperParams(
        epochs=2,
        max_steps=30,
        batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=3e-4,
        warmup_ratio=0.1,
        min_lr_ratio=0.1,
        weight_decay=0.05,
        seed=7,
        logging_steps=3,
        save_strategy="steps",
        save_steps=10,
        save_total_limit=1,
    )
    args = training_arguments(hp, tmp_path / "ckpt")
    assert args.output_dir == str(tmp_path / "ckpt")
    assert (args.num_train_epochs, args.max_steps) == (2, 30)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert args.learning_rate == 3e-4 and args.weight_decay == 0.05 and args.max_grad_norm == 1.0
    assert args.lr_scheduler_type.value == "cosine_with_min_lr"
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.get_warmup_steps(30) == 3
    assert args.seed == 7 and args.logging_steps == 3
    assert args.save_strategy.value == "steps" and args.save_steps == 10 and args.save_total_limit == 1
    assert args.use_cpu and args.report_to == []  # no CUDA here; MLflow is logged by the engine
    assert args.include_num_input_tokens_seen == "non_padding"


def test_cosine_schedule_decays_to_the_floor(tmp_path):
    import torch
    from transformers.optimization import get_scheduler

    hp = HyperParams(learning_rate=1e-4, min_lr_ratio=0.1, warmup_ratio=0.1, max_steps=20)
    args = training_arguments(hp, tmp_path)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=hp.learning_rate)
    sched = get_scheduler(
        args.lr_scheduler_type,
        opt,
        num_warmup_steps=2,
        num_training_steps=20,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[2] == pytest.approx(1e-4)
    assert sched.get_last_lr()[0] == pytest.approx(1e-5)


@pytest.mark.parametrize("scheduler", ["linear", "constant", "constant_with_warmup"])
def test_other_schedulers_pass_through(tmp_path, scheduler):
    args = training_arguments(HyperParams(lr_scheduler=scheduler), tmp_path)
    assert args.lr_scheduler_type.value == scheduler and not args.lr_scheduler_kwargs


def test_every_spec_method_is_implemented_and_unknown_ones_are_rejected_by_name():
    import typing

    from tasks.specs import Method

    for m in typing.get_args(Method):
        assert get_method(m).name == m
    with pytest.raises(ValueError, match=r"'rlhf' is not available.*pretrain, sft_full, sft_lora, .*distill"):
        get_method("rlhf")


def test_engine_writes_a_failed_result_for_an_unsupported_method(forgeflow_home, monkeypatch):
    import trainers.methods as methods
    from tasks.engine import write_spec
    from tasks.storage import Lake
    from trainers.train import main

    # An engine build without the method (e.g. an older image running a newer spec).
    methods._load_all()
    monkeypatch.delitem(methods.METHODS, "reward_model")
    monkeypatch.setattr(methods, "_load_all", lambda: None)
    lake = Lake.from_settings()
    spec = TrainSpec(
        run_key="r1",
        method="reward_model",
        train_uri=lake.uri("x"),
        output_uri=lake.uri("out"),
        hyperparams=default_hyperparams("reward_model"),
    )
    uri = write_spec(spec, lake.uri("specs/r1/spec.json"))
    assert main([uri]) == 1
    result = lake.read_json(lake.uri("specs/r1/result.json"))
    assert result["status"] == "failed" and "'reward_model' is not available" in result["error"]


# ---------------------------------------------------------------- evaluation


def _spec(**kw) -> EvalSpec:
    return EvalSpec(
        run_key="e1",
        endpoint={"base_url": "http://fake/v1", "model": "m"},
        dataset_uri="/nowhere",
        output_uri="/nowhere",
        **kw,
    )


def test_chat_request_body():
    body = ev.chat_request(_spec(), ChatRecord("sys", ["q1", "a1", "q2"], "t"))
    assert body["model"] == "m" and body["max_tokens"] == 128 and body["temperature"] == 0.3
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["seed"] == 0 and body["stream"] is False


def _client(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_complete_retries_5xx_and_connection_errors(monkeypatch):
    monkeypatch.setattr(ev, "RETRY_BACKOFF_S", 0)
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return httpx.Response(503, text="busy")
        return httpx.Response(200, json={"choices": [{"message": {"content": "答"}}]})

    assert ev.complete(_client(handler), "http://fake/v1/chat/completions", {}) == "答"
    assert len(calls) == 3


def test_complete_gives_up_and_does_not_retry_4xx(monkeypatch):
    monkeypatch.setattr(ev, "RETRY_BACKOFF_S", 0)
    with pytest.raises(ev.EndpointError, match="failed after 3 attempts: HTTP 500"):
        ev.complete(_client(lambda r: httpx.Response(500, text="boom")), "http://x", {})
    calls = []

    def not_found(request):
        calls.append(1)
        return httpx.Response(404, text="no such model")

    with pytest.raises(ev.EndpointError, match="HTTP 404"):
        ev.complete(_client(not_found), "http://x", {})
    assert len(calls) == 1


def test_score_leaves_failed_records_out():
    preds = [
        ev.Prediction(0, "a", "q", "今天天气很好", "今天天气很好", 0.1),
        ev.Prediction(1, "b", "q", "我爱上海", "我爱北京", 0.3),
        ev.Prediction(2, "c", "q", "x", None, 0.5, error="HTTP 500"),
    ]
    m = ev.score(_spec(), preds)
    assert m["rouge_l"] == pytest.approx((1 + 0.5) / 2)
    assert m["success_rate"] == pytest.approx(2 / 3)
    assert preds[0].rouge_l == 1.0 and preds[2].rouge_l is None
    assert 0 < m["bleu_4"] < 1 and m["latency_mean_s"] == pytest.approx(0.2)
    only_rouge = ev.score(_spec(metrics=["rouge_l"]), preds)
    assert "bleu_4" not in only_rouge and preds[0].bleu_4 is None
    json.dumps([p.__dict__ for p in preds])  # predictions.jsonl rows serialise
