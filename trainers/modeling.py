"""Models: the tiny Llama built from config, loading a base model, LoRA, and the saved model directory.

A saved model is a standard ``LlamaForCausalLM``-style Hugging Face directory (float32 safetensors,
tokenizer with its chat template, ``generation_config.json`` whose eos ids stop at the end of a turn,
and ``forgeflow.json`` with the resolved spec), so vLLM and the transformers fallback both serve it.

``forgeflow.json``'s ``format`` says what else a directory can be (``load_model_dir`` reads them all):

- ``full`` / ``merged``: a causal LM, as above;
- ``reward_model``: a ``...ForSequenceClassification`` with one output, the reward of a conversation;
- ``peft_adapter`` / ``prompt_adapter``: a PEFT adapter (LoRA / prompt tuning) and the tokenizer, without
  base weights. The base is ``base_model`` (the pinned reference the run started from) or, when the run
  built its own tiny base, the full model directory ``adapter_base.dir`` inside this one (``base/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.data import stop_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tasks.specs import HyperParams, TinyModelConfig

# Every linear projection of a Llama decoder layer: attention and MLP (QLoRA's "all linear" recipe).
LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FORGEFLOW_FILE = "forgeflow.json"
ADAPTER_BASE_DIR = "base"  # inside an adapter's model directory: its base, when no other copy is kept


def tiny_llama_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> Any:
    """The LlamaConfig of the tiny model: sized by ``cfg``, its vocabulary and special ids from ``tokenizer``."""
    from transformers import LlamaConfig

    settings: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        # Tied embeddings halve the parameters of a small-vocabulary model; vLLM's Llama supports them.
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaConfig(**{**settings, **overrides})


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A randomly initialised Llama sized by ``cfg``, its vocabulary matching ``tokenizer``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(cfg, tokenizer))
    return model.to(torch.float32)


def load_base(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A base model and its tokenizer from a local Hugging Face directory, weights in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # batching needs one; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tokenizer


def add_lora(model: PreTrainedModel, hp: HyperParams) -> PreTrainedModel:
    """Wrap ``model`` with a LoRA adapter on all linear projections; only the adapter trains."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in LLAMA_LORA_TARGETS if t in present]
    if not targets:
        raise ValueError(
            f"sft_lora: the base model ({type(model).__name__}) has none of the Llama projection modules "
            f"{LLAMA_LORA_TARGETS}; use sft_full or a Llama-family base"
        )
    config = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def save_model_dir(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path, forgeflow: dict[str, Any]
) -> Path:
    """Write the servable model directory: weights, tokenizer, chat template, generation config, spec."""
    from transformers import GenerationConfig

    target.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # the Trainer turns the KV cache off; servers generate with it
    stops = stop_token_ids(tokenizer)
    model.generation_config = GenerationConfig(
        eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, bos_token_id=model.config.bos_token_id
    )
    model.save_pretrained(target, safe_serialization=True)
    save_tokenizer(tokenizer, target)
    (target / FORGEFLOW_FILE).write_text(json.dumps(forgeflow, ensure_ascii=False, indent=2, default=str))
    return target


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Save the tokenizer with a config any transformers release (and vLLM) reads.

    transformers 5 writes its internal ``TokenizersBackend`` class name and the ``local_files_only`` flag
    it was loaded with; ``PreTrainedTokenizerFast`` is the name every 4.x and 5.x release resolves.
    """
    tokenizer.save_pretrained(target)
    path = target / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2))


# ---------------------------------------------------------------- adapters and loading for inference


def adapter_base_dir(model_dir: Path, info: dict[str, Any]) -> Path:
    """The local base model directory of an adapter directory, from its forgeflow.json ``info``."""
    from tasks.registry import fetch_model

    inside = (info.get("adapter_base") or {}).get("dir")
    if inside:
        return model_dir / inside
    ref = info.get("base_model") or (info.get("spec") or {}).get("base_model")  # the pinned one first
    if not ref or ref == "tiny":
        raise FileNotFoundError(
            f"{model_dir}: an adapter whose {FORGEFLOW_FILE} names no stored base model (base_model or "
            "adapter_base.dir); retrain it with this version of Forgeflow"
        )
    return fetch_model(ref)


def load_model_dir(model_dir: Path) -> tuple[Any, PreTrainedTokenizerBase, str]:
    """(model, tokenizer, format) of a saved model directory, ready for inference in float32.

    Causal LMs load as ``AutoModelForCausalLM``, reward models as ``AutoModelForSequenceClassification``,
    adapters as their base (see ``adapter_base_dir``) wrapped by ``PeftModel.from_pretrained``, which
    generates with the adapter applied (prompt tuning prepends its virtual tokens).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    info_path = model_dir / FORGEFLOW_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    fmt = info.get("format", "full")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if fmt == "reward_model":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    elif fmt in ("peft_adapter", "prompt_adapter"):
        from peft import PeftModel

        base, _ = load_base(adapter_base_dir(model_dir, info))
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, tokenizer, fmt
