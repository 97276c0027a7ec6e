"""The engine's other methods end to end on a tiny Llama: prompt tuning, reward model, DPO and distillation
(against a fake OpenAI-compatible teacher). Real MLflow (SQLite), real file lake, real PEFT/TRL."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tasks.specs import TrainSpec, default_hyperparams

from .conftest import DIGITS, run_spec, write_version

pytestmark = pytest.mark.slow


def _run_failing(spec: TrainSpec) -> str:
    from tasks.engine import write_spec
    from tasks.storage import Lake
    from trainers.train import main

    lake = Lake.from_settings()
    rc = main([write_spec(spec, lake.uri("specs", spec.run_key, "spec.json"))])
    result = lake.read_json(lake.uri("specs", spec.run_key, "result.json"))
    assert rc == 1 and result["status"] == "failed", result
    return result["error"]


def _lake(home: Path, *parts: str) -> str:
    return (home / "lake").joinpath(*parts).as_uri()


def _history(run_id: str, key: str) -> list[float]:
    from tasks.registry import client

    return [m.value for m in client().get_metric_history(run_id, key)]


def _generates(model, tok) -> None:
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "三加四等于多少？"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def _ranking_rows(n: int, seed: int) -> list[dict]:
    """Arithmetic questions with a right answer (rank 1), a wrong one and a refusal; some with a tie."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        q = f"{DIGITS[a]}加{DIGITS[b]}等于多少？"
        answers = [
            {"text": f"{DIGITS[a]}加{DIGITS[b]}等于{a + b}。", "score": 9.0, "rank": 1},
            {"text": f"{DIGITS[a]}加{DIGITS[b]}等于{a + b + 1}。", "score": 4.0, "rank": 2},
            {"text": "我不知道。", "score": 1.0, "rank": 3},
        ]
        if i % 4 == 0:  # a tie with the wrong answer: skipped
            answers.append({"text": f"大概是{a + b + 2}。", "score": 4.0, "rank": 2})
        rows.append(
            {
                "id": f"r{seed}-{i}",
                "system": None,
                "context": [q],
                "answers": answers,
                "meta": {"source": "synthetic", "tags": []},
            }
        )
    return rows


@pytest.fixture(scope="module")
def ranking_uri(forgeflow_home) -> str:
    write_version(forgeflow_home / "lake" / "datasets" / "ranking" / "v1", _ranking_rows(40, seed=3))
    return _lake(forgeflow_home, "datasets", "ranking", "v1")


# ---------------------------------------------------------------- prompt tuning


def test_prompt_tuning_trains_only_the_virtual_tokens_and_loads_back(forgeflow_home, tiny_model):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from trainers.modeling import load_model_dir

    spec = TrainSpec(
        run_key="prompt-tuning-1",
        method="prompt_tuning",
        tiny=tiny_model,
        train_uri=_lake(forgeflow_home, "datasets", "sft", "v1"),
        output_uri=_lake(forgeflow_home, "models", "prompt-tuning-1"),
        hyperparams=default_hyperparams(
            "prompt_tuning",
            max_steps=4,
            batch_size=8,
            max_seq_length=64,
            learning_rate=5e-4,
            logging_steps=1,
            num_virtual_tokens=8,
            prompt_tuning_init="text",
            prompt_tuning_init_text="请计算下面的加法",
        ),
    )
    r = run_spec(spec)
    assert r["steps"] == 4 and r["metrics"]["eval_loss"] > 0 and r["metrics"]["perplexity"] > 1

    from tasks.registry import client

    params = client().get_run(r["mlflow_run_id"]).data.params
    assert int(params["resolved.trainable_parameters"]) == 8 * tiny_model.hidden_size  # only the prompt
    model_dir = forgeflow_home / "lake" / "models" / "prompt-tuning-1" / "model"
    info = json.loads((model_dir / "forgeflow.json").read_text())
    assert info["format"] == "prompt_adapter" and info["adapter_base"] == {"dir": "base"}
    assert info["prompt_tuning"]["init_text"] == "请计算下面的加法"
    assert json.loads((model_dir / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    assert (model_dir / "base" / "config.json").exists() and not (model_dir / "config.json").exists()

    model, tok, fmt = load_model_dir(model_dir)
    assert fmt == "prompt_adapter" and isinstance(model, PeftModel)
    _generates(model, tok)
    # The trained prompt moved away from its text init (the base's embeddings of the init text).
    prompt = load_file(model_dir / "adapter_model.safetensors")["prompt_embeddings"]
    ids = tok("请计算下面的加法", add_special_tokens=False)["input_ids"]
    ids = (ids * 8)[:8]
    init = model.get_input_embeddings()(torch.tensor(ids))
    assert prompt.shape == init.shape and not torch.allclose(prompt, init)


# ---------------------------------------------------------------- reward model


def test_reward_model_pairwise_accuracy_and_scores(forgeflow_home, tiny_model, ranking_uri):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

    from trainers.method_reward import reward_scores

    spec = TrainSpec(
        run_key="reward-1",
        method="reward_model",
        tiny=tiny_model,
        train_uri=ranking_uri,
        validation_split=0.2,
        output_uri=_lake(forgeflow_home, "models", "reward-1"),
        hyperparams=default_hyperparams(
            "reward_model", max_steps=12, batch_size=8, max_seq_length=64, learning_rate=5e-4, logging_steps=1
        ),
    )
    r = run_spec(spec)
    m = r["metrics"]
    assert m["perplexity"] is None and m["eval_loss"] > 0 and 0 <= m["eval_accuracy"] <= 1

    from tasks.registry import client

    run = client().get_run(r["mlflow_run_id"])
    # 32 train records x 3 pairs, plus 1 from each of the 8 with a tie (tied answers give no pair)
    assert run.data.params["resolved.train_records"] == "32"
    assert (
        int(run.data.params["resolved.train_pairs"]) + int(run.data.params["resolved.eval_pairs"])
        == 40 * 3 + 10 * 2
    )
    assert "eval_accuracy" in run.data.metrics and "perplexity" not in run.data.metrics
    losses = _history(run.info.run_id, "loss")
    assert len(losses) == 12 and min(losses[-3:]) < losses[0]  # the pairwise loss goes down

    model_dir = forgeflow_home / "lake" / "models" / "reward-1" / "model"
    assert json.loads((model_dir / "forgeflow.json").read_text())["format"] == "reward_model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert isinstance(model, LlamaForSequenceClassification)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    q = [{"role": "user", "content": "三加四等于多少？"}]
    scores = reward_scores(
        model.eval(),
        tok,
        [[*q, {"role": "assistant", "content": a}] for a in ("三加四等于7。", "我不知道。")],
    )
    assert len(scores) == 2 and all(isinstance(s, float) and s == s for s in scores)
    # Padding does not change a score: the head reads the last real token.
    ids = tok(
        tok.apply_chat_template([*q, {"role": "assistant", "content": "我不知道。"}], tokenize=False),
        add_special_tokens=False,
        return_tensors="pt",
    )["input_ids"]
    padded = torch.cat([ids, torch.full((1, 3), tok.pad_token_id)], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros((1, 3), dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert model(input_ids=padded, attention_mask=mask).logits[0, 0].item() == pytest.approx(
            scores[1], abs=1e-4
        )


# ---------------------------------------------------------------- DPO


def test_dpo_logs_reward_metrics_and_saves_a_causal_lm(forgeflow_home, tiny_model, ranking_uri):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = TrainSpec(
        run_key="dpo-1",
        method="dpo",
        tiny=tiny_model,
        train_uri=ranking_uri,
        validation_split=0.2,
        output_uri=_lake(forgeflow_home, "models", "dpo-1"),
        hyperparams=default_hyperparams(
            "dpo",
            max_steps=6,
            batch_size=8,
            max_seq_length=64,
            learning_rate=5e-4,
            logging_steps=1,
            dpo_beta=0.2,
        ),
    )
    r = run_spec(spec)
    m = r["metrics"]
    assert m["perplexity"] is None and m["eval_loss"] > 0
    assert 0 <= m["eval_rewards/accuracies"] <= 1 and "eval_rewards/margins" in m

    from tasks.registry import client

    run = client().get_run(r["mlflow_run_id"])
    # best vs each worse answer: 2 pairs a record (a tie with the runner-up still loses to the best: 3)
    assert (
        int(run.data.params["resolved.train_pairs"]) + int(run.data.params["resolved.eval_pairs"])
        == 40 * 2 + 10
    )
    assert run.data.params["hyperparams.dpo_beta"] == "0.2"
    accuracies = _history(run.info.run_id, "rewards/accuracies")
    assert len(accuracies) == 6 and all(0 <= a <= 1 for a in accuracies)
    assert _history(run.info.run_id, "rewards/margins")[-1] > 0  # the policy moved towards the chosen answers
    assert "eval_rewards/accuracies" in run.data.metrics and "perplexity" not in run.data.metrics

    model_dir = forgeflow_home / "lake" / "models" / "dpo-1" / "model"
    assert json.loads((model_dir / "forgeflow.json").read_text())["format"] == "full"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert isinstance(model, LlamaForCausalLM)
    _generates(model, AutoTokenizer.from_pretrained(model_dir))


def test_dpo_on_single_answer_data_says_what_it_needs(forgeflow_home, tiny_model):
    spec = TrainSpec(
        run_key="dpo-sft-data",
        method="dpo",
        tiny=tiny_model,
        train_uri=_lake(forgeflow_home, "datasets", "sft", "v1"),
        output_uri=_lake(forgeflow_home, "models", "dpo-sft-data"),
        hyperparams=default_hyperparams("dpo", max_steps=1),
    )
    assert "dpo needs ranked answers" in _run_failing(spec)


# ---------------------------------------------------------------- distillation


def _distill_rows() -> tuple[list[dict], dict]:
    """24 SFT questions and the fake teacher's answers: 18 good ones and one of each reject reason."""
    rows, answers = [], {}
    for i in range(24):
        a, b = i % 10, (i * 7) % 10
        q = f"第{i}题：{DIGITS[a]}乘{DIGITS[b]}等于多少？"
        rows.append(
            {
                "id": f"d{i}",
                "system": None,
                "context": [q],
                "target": "人写的参考答案。",
                "meta": {"source": "synthetic", "tags": []},
            }
        )
        answers[q] = f"{DIGITS[a]}乘{DIGITS[b]}等于{a * b}，这是老师的回答。"
    qs = [r["context"][0] for r in rows]
    answers[qs[0]] = "   "  # empty
    answers[qs[1]] = {"content": "一乘七等于七，因为", "finish_reason": "length"}  # truncated
    answers[qs[2]] = "抱歉，我无法回答这个问题。"  # refusal
    answers[qs[3]] = "好的" * 40  # repetitive
    answers[qs[4]] = "The answer is twelve."  # language mismatch
    rows[5]["context"] = ["坏题目：" + qs[5]]  # the fake server always 500s: request_failed
    return rows, answers


def test_distill_checks_teacher_answers_writes_them_and_trains(
    forgeflow_home, tiny_model, fake_chat_server, monkeypatch
):
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import trainers.evaluate as ev
    from tasks.registry import client

    monkeypatch.setattr(ev, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setenv("FORGEFLOW_TEST_TEACHER_KEY", "sk-secret-4417")
    rows, answers = _distill_rows()
    write_version(forgeflow_home / "lake" / "datasets" / "distill-q" / "v1", rows)
    out_dir = forgeflow_home / "lake" / "models" / "distill-1"
    with fake_chat_server(answers) as server:
        spec = TrainSpec(
            run_key="distill-1",
            method="distill",
            tiny=tiny_model,
            train_uri=_lake(forgeflow_home, "datasets", "distill-q", "v1"),
            output_uri=out_dir.as_uri(),
            teacher={
                "base_url": server.base_url,
                "model": "big-teacher",
                "api_key_env": "FORGEFLOW_TEST_TEACHER_KEY",
            },
            distill={
                "generation": {"max_tokens": 64, "temperature": 0.0},
                "rules": {"match_language": True, "min_chars": 4},
                "min_accept_ratio": 0.5,
            },
            hyperparams=default_hyperparams(
                "distill", max_steps=3, batch_size=8, max_seq_length=64, logging_steps=1
            ),
        )
        r = run_spec(spec)
        asked = len(server.requests)
    assert asked == 24 + 2  # the failing question was tried three times
    assert server.requests[0]["model"] == "big-teacher" and server.requests[0]["max_tokens"] == 64

    teacher = pd.read_parquet(out_dir / "teacher" / "data" / "part-0.parquet")
    assert len(teacher) == 18 and all(t.endswith("这是老师的回答。") for t in teacher["target"])
    assert set(teacher["meta"].iloc[0]["tags"]) == {"distill", "origin:d6"}
    rejects = [json.loads(line) for line in (out_dir / "teacher" / "rejects.jsonl").read_text().splitlines()]
    assert [(x["id"], x["reason"]) for x in rejects] == [
        ("d0", "empty"),
        ("d1", "truncated"),
        ("d2", "refusal"),
        ("d3", "repetitive"),
        ("d4", "language_mismatch"),
        ("d5", "request_failed"),
    ]
    assert "HTTP 500" in rejects[5]["error"]
    manifest = json.loads((out_dir / "teacher" / "manifest.json").read_text())
    assert manifest["records"] == 18 and manifest["questions"] == 24

    assert r["data_metrics"]["teacher_accepted"] == 18 and r["data_metrics"]["teacher_rejected_refusal"] == 1
    run = client().get_run(r["mlflow_run_id"])
    assert run.data.metrics["teacher_accepted"] == 18 and run.data.metrics["teacher_rejected"] == 6
    assert run.data.metrics["teacher_accept_ratio"] == pytest.approx(0.75)
    assert set(server.auth) == {"Bearer sk-secret-4417"}  # the engine read it from its environment
    assert run.data.params["teacher.api_key_env"] == "FORGEFLOW_TEST_TEACHER_KEY"
    # the key itself reaches no file of the lake and nothing MLflow stored
    for root in (forgeflow_home / "lake", forgeflow_home / "mlflow"):
        for f in root.rglob("*"):
            if f.is_file() and f.stat().st_size < 50_000_000:
                assert b"sk-secret-4417" not in f.read_bytes(), f
    artifacts = {a.path for a in client().list_artifacts(run.info.run_id, "teacher")}
    assert artifacts == {"teacher/rejects.jsonl", "teacher/manifest.json"}
    # the student learned from the teacher: its tokenizer (trained on the data) knows the teacher's words
    model_dir = out_dir / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    _generates(AutoModelForCausalLM.from_pretrained(model_dir), tok)
    assert run.data.params["resolved.train_records"] == str(18 - 1)  # 5% held out

    # A retry (same questions, teacher and rules) reuses the teacher data: the teacher is gone by now.
    retry = spec.model_copy(update={"run_key": "distill-1-retry"})
    retry.hyperparams.max_steps = 1
    r2 = run_spec(retry)
    assert r2["data_metrics"]["teacher_reused"] == 1 and r2["data_metrics"]["teacher_accepted"] == 18


def test_distill_fails_clearly_when_too_few_answers_pass(forgeflow_home, tiny_model, fake_chat_server):
    rows, _ = _distill_rows()
    write_version(forgeflow_home / "lake" / "datasets" / "distill-q2" / "v1", rows[6:])
    refusals = {r["context"][0]: "I'm sorry, but I can't help with that." for r in rows}
    with fake_chat_server(refusals) as server:
        spec = TrainSpec(
            run_key="distill-refused",
            method="distill",
            tiny=tiny_model,
            train_uri=_lake(forgeflow_home, "datasets", "distill-q2", "v1"),
            output_uri=_lake(forgeflow_home, "models", "distill-refused"),
            teacher={"base_url": server.base_url, "model": "shy-teacher"},
            hyperparams=default_hyperparams("distill", max_steps=1),
        )
        error = _run_failing(spec)
    assert "only 0 of 18 teacher answers passed the rules" in error and "'refusal': 18" in error
    assert (forgeflow_home / "lake" / "models" / "distill-refused" / "teacher" / "rejects.jsonl").exists()
