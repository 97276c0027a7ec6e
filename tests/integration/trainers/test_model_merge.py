"""Publishing an unmerged LoRA adapter and merging it on request: the merged version computes what base +
adapter compute, is a plain Llama, and names the adapter version and the pinned base it came from."""

from __future__ import annotations

import json

import pytest

from tasks.specs import TrainSpec, default_hyperparams
from tests.integration.trainers.conftest import run_spec

pytestmark = pytest.mark.slow


def test_adapter_registration_lineage_and_merge(forgeflow_home, tiny_model, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from tasks.cli import main
    from tasks.model_ops import ModelOpError, merge_adapter
    from tasks.registry import client, fetch_model

    lake = (forgeflow_home / "lake").as_uri()
    base = run_spec(
        TrainSpec(
            run_key="merge-base",
            method="pretrain",
            tiny=tiny_model,
            validation_split=0,
            train_uri=f"{lake}/datasets/pretrain/v1",
            output_uri=f"{lake}/models/merge-base",
            register_as="merge-base",
            hyperparams=default_hyperparams("pretrain", max_steps=2, batch_size=4, max_seq_length=48),
        )
    )
    adapter = run_spec(
        TrainSpec(
            run_key="merge-adapter",
            method="sft_lora",
            base_model="models:/merge-base/latest",
            merge_lora=False,
            validation_split=0,
            train_uri=f"{lake}/datasets/sft/v1",
            dataset_ref="demo/sft@V1",
            output_uri=f"{lake}/models/merge-adapter",
            register_as="merge-chat",
            hyperparams=default_hyperparams(
                "sft_lora", max_steps=3, batch_size=4, max_seq_length=48, learning_rate=5e-4
            ),
        )
    )
    ref = f"models:/merge-chat/{adapter['model_version']}"
    base_ref = f"models:/merge-base/{base['model_version']}"
    c = client()
    mv = c.get_model_version("merge-chat", adapter["model_version"])
    # 'latest' was pinned when the run started: the lineage names the exact base version
    assert mv.tags["base_model"] == base_ref and mv.tags["format"] == "peft_adapter"
    assert mv.tags["dataset_ref"] == "demo/sft@V1" and mv.run_id == adapter["mlflow_run_id"]

    capsys.readouterr()  # the Trainer's own prints
    assert main(["model", "show", ref, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["format"] == "peft_adapter" and info["base_model"] == base_ref and info["method"] == "sft_lora"
    )

    with pytest.raises(ModelOpError, match="is a full, not a LoRA adapter"):
        merge_adapter(base_ref)
    merged = merge_adapter(ref, register_as="merge-chat-merged")
    assert merged["model_ref"] == "models:/merge-chat-merged/1" and merged["base_model"] == base_ref
    mmv = c.get_model_version("merge-chat-merged", "1")
    assert mmv.tags["adapter"] == ref and mmv.tags["format"] == "merged"

    merged_dir = fetch_model(merged["model_ref"])
    assert not (merged_dir / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert isinstance(plain, LlamaForCausalLM)
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(fetch_model(base_ref)), fetch_model(ref)
    )
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        a, b = plain(ids).logits, with_adapter(ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert json.loads((merged_dir / "forgeflow.json").read_text())["merged_from"] == ref
