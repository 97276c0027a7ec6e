"""The training engine end to end on a tiny Llama: pretrain -> register -> LoRA SFT on the registered
version -> idempotent rerun; and full SFT with an evaluation set. Real MLflow (SQLite), real file lake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.specs import TrainSpec, default_hyperparams
from tests.integration.trainers.conftest import run_spec

pytestmark = pytest.mark.slow


def _assert_loads_and_generates(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["use_cache"] is True
    assert (
        json.loads((model_dir / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert isinstance(model, LlamaForCausalLM) and next(model.parameters()).dtype.is_floating_point
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "三加四等于多少？"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]


def _lake(home: Path, *parts: str) -> str:
    return (home / "lake").joinpath(*parts).as_uri()


def test_pretrain_then_lora_on_the_registered_version(forgeflow_home, tiny_model):
    from tasks.registry import client

    pre = TrainSpec(
        run_key="pretrain-1",
        method="pretrain",
        tiny=tiny_model,
        train_uri=_lake(forgeflow_home, "datasets", "pretrain", "v1"),
        dataset_ref="general/pretrain@V1",
        output_uri=_lake(forgeflow_home, "models", "pretrain-1"),
        register_as="tiny-base",
        hyperparams=default_hyperparams(
            "pretrain", max_steps=8, batch_size=8, max_seq_length=64, learning_rate=5e-4, logging_steps=2
        ),
    )
    r = run_spec(pre)
    assert r["registered_model"] == "tiny-base" and r["model_version"] == "1" and r["steps"] == 8
    assert (
        r["metrics"]["eval_loss"] > 0
        and r["metrics"]["perplexity"] > 1
        and r["metrics"]["tokens_per_second"] > 0
    )

    c = client()
    run = c.get_run(r["mlflow_run_id"])
    assert run.data.tags["method"] == "pretrain" and run.data.tags["dataset_ref"] == "general/pretrain@V1"
    assert run.data.tags["base_model"] == "tiny" and run.data.tags["code_version"] == "test-sha"
    assert run.data.params["hyperparams.learning_rate"] == "0.0005"
    assert run.data.params["resolved.total_steps"] == "8"
    # Packing drops at most the tail shorter than one block.
    assert 0 <= r["packing_waste"] * int(run.data.params["resolved.train_tokens"]) < 64
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch"):
        assert len(c.get_metric_history(run.info.run_id, key)) >= 2, key
    assert {"eval_loss", "perplexity", "train_runtime", "train_tokens_per_second"} <= set(run.data.metrics)
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["general/pretrain@V1"]
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"model", "spec.json", "result.json"} <= artifacts
    model_dir = forgeflow_home / "lake" / "models" / "pretrain-1" / "model"
    assert (model_dir / "forgeflow.json").exists() and (model_dir / "chat_template.jinja").exists()
    _assert_loads_and_generates(model_dir)

    sft = TrainSpec(
        run_key="sft-lora-1",
        method="sft_lora",
        base_model="models:/tiny-base/1",
        train_uri=_lake(forgeflow_home, "datasets", "sft", "v1"),
        output_uri=_lake(forgeflow_home, "models", "sft-lora-1"),
        register_as="tiny-chat",
        hyperparams=default_hyperparams(
            "sft_lora", max_steps=6, batch_size=8, max_seq_length=64, learning_rate=5e-4, logging_steps=2
        ),
    )
    r2 = run_spec(sft)
    assert r2["registered_model"] == "tiny-chat" and r2["model_version"] == "1"
    out = forgeflow_home / "lake" / "models" / "sft-lora-1"
    assert (out / "adapter" / "adapter_config.json").exists()
    assert not (out / "model" / "adapter_config.json").exists()  # merged into a plain Llama
    _assert_loads_and_generates(out / "model")
    params = c.get_run(r2["mlflow_run_id"]).data.params
    assert int(params["resolved.trainable_parameters"]) < int(params["resolved.total_parameters"]) / 2

    # A retried task with the same run key returns the finished run: no second run, no second version.
    again = run_spec(sft)
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in r2.items() if k != "seconds"
    }
    assert len(c.search_model_versions("name='tiny-chat'")) == 1


def test_sft_full_with_an_eval_set(forgeflow_home, tiny_model):
    spec = TrainSpec(
        run_key="sft-full-1",
        method="sft_full",
        tiny=tiny_model,
        train_uri=_lake(forgeflow_home, "datasets", "sft", "v1"),
        eval_uri=_lake(forgeflow_home, "datasets", "sft-eval", "v1"),
        output_uri=_lake(forgeflow_home, "models", "sft-full-1"),
        hyperparams=default_hyperparams(
            "sft_full", max_steps=4, batch_size=8, max_seq_length=64, logging_steps=1
        ),
    )
    r = run_spec(spec)
    assert r["model_version"] is None and r["registered_model"] is None
    assert r["metrics"]["eval_loss"] > 0 and "packing_waste" not in r
    _assert_loads_and_generates(forgeflow_home / "lake" / "models" / "sft-full-1" / "model")


def test_lora_without_merge_saves_the_adapter_as_the_model(forgeflow_home, tiny_model):
    # an unmerged adapter needs a base that is kept: 'tiny' is built in the run, so it is refused
    with pytest.raises(ValidationError, match="merge_lora=false keeps only the adapter"):
        TrainSpec(
            run_key="x",
            method="sft_lora",
            tiny=tiny_model,
            merge_lora=False,
            train_uri="file:///d",
            output_uri="file:///o",
        )
    base = TrainSpec(
        run_key="pretrain-for-adapter",
        method="pretrain",
        tiny=tiny_model,
        validation_split=0,
        train_uri=_lake(forgeflow_home, "datasets", "pretrain", "v1"),
        output_uri=_lake(forgeflow_home, "models", "pretrain-for-adapter"),
        hyperparams=default_hyperparams("pretrain", max_steps=2, batch_size=4, max_seq_length=48),
    )
    base_dir = run_spec(base)["model_uri"]
    spec = TrainSpec(
        run_key="sft-lora-nomerge",
        method="sft_lora",
        base_model=base_dir,
        merge_lora=False,
        validation_split=0,
        train_uri=_lake(forgeflow_home, "datasets", "sft", "v1"),
        output_uri=_lake(forgeflow_home, "models", "sft-lora-nomerge"),
        hyperparams=default_hyperparams("sft_lora", max_steps=2, batch_size=4, max_seq_length=48),
    )
    r = run_spec(spec)
    assert r["metrics"]["eval_loss"] is None and r["metrics"]["perplexity"] is None
    model_dir = forgeflow_home / "lake" / "models" / "sft-lora-nomerge" / "model"
    assert json.loads((model_dir / "forgeflow.json").read_text())["format"] == "peft_adapter"
    assert (model_dir / "adapter_config.json").exists() and (model_dir / "tokenizer.json").exists()
