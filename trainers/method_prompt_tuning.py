"""Prompt tuning: SFT of ``num_virtual_tokens`` soft-prompt embeddings put before every input (PEFT).

The base model is frozen; only the virtual tokens (num_virtual_tokens x hidden size numbers) train,
on the same masked chat examples as sft_full. They start from random vectors, or from the token
embeddings of ``prompt_tuning_init_text`` (repeated or cut to length) when ``prompt_tuning_init`` is
'text'; that init is done here rather than by PEFT, which would reload the tokenizer from a path the
tiny model does not have.

Saved as format ``prompt_adapter``: the model directory holds the PEFT adapter
(``adapter_config.json``, ``adapter_model.safetensors``), the tokenizer and forgeflow.json, whose
``adapter_base`` says where the frozen base is. With base_model 'tiny' the base exists only in this run,
so it is saved inside the model directory as ``base/`` (a full model directory) and
``adapter_base = {"dir": "base"}``; otherwise forgeflow.json's ``base_model`` (the pinned reference the
engine records) names it. To generate:
``trainers.modeling.load_model_dir(dir)`` (the base + ``PeftModel.from_pretrained``; ``generate`` then
prepends the virtual tokens). vLLM has no prompt-adapter support, so such a model is served by the
transformers fallback.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from trainers.data import DataError
from trainers.methods import Exported, SftFull, register

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def init_token_ids(tokenizer: PreTrainedTokenizerBase, text: str, n: int) -> list[int]:
    """The token ids of ``text`` repeated or cut to exactly ``n`` (PEFT's TEXT init recipe)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError("hyperparams.prompt_tuning_init_text encodes to no tokens; give a non-empty text")
    return (ids * math.ceil(n / len(ids)))[:n]


def init_from_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    """Set the virtual tokens of a prompt-tuning PeftModel to the base's embeddings of ``text``."""
    import torch

    prompt = model.prompt_encoder[model.active_adapter].embedding
    ids = init_token_ids(tokenizer, text, prompt.num_embeddings)
    words = model.get_input_embeddings()
    with torch.no_grad():
        prompt.weight.copy_(words(torch.tensor(ids, device=words.weight.device)).to(prompt.weight.dtype))


@register
class PromptTuning(SftFull):
    """Prompt tuning on SFT data; exported as a PEFT prompt adapter (plus the tiny base when needed)."""

    name = "prompt_tuning"

    def build(self, spec, model):
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        config = PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=spec.hyperparams.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.RANDOM,  # 'text' is applied in trainer(), with the tokenizer
        )
        return get_peft_model(model, config)

    def trainer(self, spec, model, tokenizer, data, args, callbacks):
        hp = spec.hyperparams
        if hp.prompt_tuning_init == "text" and hp.prompt_tuning_init_text:
            init_from_text(model, tokenizer, hp.prompt_tuning_init_text)
        return super().trainer(spec, model, tokenizer, data, args, callbacks)

    def export(self, spec, trainer, tokenizer, out):
        from trainers.modeling import ADAPTER_BASE_DIR, save_model_dir

        hp = spec.hyperparams
        meta = {
            "prompt_tuning": {
                "num_virtual_tokens": hp.num_virtual_tokens,
                "init": hp.prompt_tuning_init,
                "init_text": hp.prompt_tuning_init_text if hp.prompt_tuning_init == "text" else None,
            }
        }
        if spec.base_model == "tiny":
            base_info = {
                "format": "full",
                "role": "the frozen base of the prompt adapter in the parent directory",
                "spec": spec.redacted(),
            }
            save_model_dir(
                trainer.model.get_base_model(), tokenizer, out / "model" / ADAPTER_BASE_DIR, base_info
            )
            meta["adapter_base"] = {"dir": ADAPTER_BASE_DIR}
        # otherwise the engine's base_model (the pinned reference) in forgeflow.json names the base
        return Exported(trainer.model, "prompt_adapter", meta=meta)
