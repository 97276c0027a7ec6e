"""Fixtures for the serving integration tests: a tiny Llama model directory and an isolated FORGEFLOW_HOME.

The model is built from config with a tokenizer trained here (byte-level BPE, special tokens
<|endoftext|>, <|im_start|>, <|im_end|>, a ChatML chat template). Its dimensions work on both backends:
vLLM's CPU attention accepts head sizes 32, 64, 80, ... only (not 16), so hidden 64 is split into
2 heads of 32 rather than 4 heads of 16.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Airflow schedules data pipelines; Spark processes the data; a model learns from it.",
    "Hello! How can I help you today? I am a tiny language model.",
    "Forgeflow turns raw text into a served, evaluated language model.",
    "user assistant system: what is the capital of France? Paris is the capital of France.",
] * 20

DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 32: the smallest head size vLLM's CPU attention supports
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def build_tiny_llama(target: Path, vocab_size: int = 512, seed: int = 0, dtype: str = "float32") -> Path:
    """Write config, random weights (safetensors) and tokenizer to ``target``; returns ``target``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target.mkdir(parents=True, exist_ok=True)
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(target)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        dtype=dtype,
        **DIMS,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def forgeflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty FORGEFLOW_HOME for this test; every service started in it is stopped afterwards."""
    from tasks.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("FORGEFLOW_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    yield home
    from serving import services

    services.stop_all(grace_s=10)
    get_settings.cache_clear()
