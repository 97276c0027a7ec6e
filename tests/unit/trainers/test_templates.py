"""Chat templates per model: bundled ones mask correctly, the choice rules, and the stop tokens they imply."""

from __future__ import annotations

import pytest

from trainers.data import CHATML_TEMPLATE, ChatRecord, DataError, encode_chat, stop_token_ids, train_tokenizer
from trainers.templates import choose_chat_template, load_template, template_names


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["你好，世界。", "hello world, how are you?", "三加四等于七。"] * 20
    return train_tokenizer(texts, 300)


def test_the_bundled_chatml_is_the_tiny_models_template(tokenizer):
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    tokenizer.chat_template = load_template("chatml")
    a = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    tokenizer.chat_template = CHATML_TEMPLATE
    assert a == tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", ["chatml", "qwen2", "llama3"])
def test_every_bundled_template_masks_all_but_the_answer(tokenizer, name):
    assert name in template_names()
    tokenizer.chat_template = load_template(name)
    record = ChatRecord("你是助手。", ["三加四等于多少？", "七。", "再加一呢？"], "八。")
    ex = encode_chat(tokenizer, record, 512)
    answer = tokenizer.decode([t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != -100])
    assert answer.startswith("八。") and "再加一" not in answer
    prompt = tokenizer.decode(ex.input_ids)
    assert "三加四等于多少？" in prompt and "再加一呢？" in prompt


def test_choice_rules(tokenizer, tmp_path):
    tokenizer.chat_template = CHATML_TEMPLATE
    assert choose_chat_template(tokenizer, None) == "base" and tokenizer.chat_template == CHATML_TEMPLATE
    tokenizer.chat_template = None
    assert choose_chat_template(tokenizer, None) == "chatml" and "<|im_start|>" in tokenizer.chat_template
    assert choose_chat_template(tokenizer, "llama3") == "llama3" and "<|eot_id|>" in tokenizer.chat_template
    own = tmp_path / "mine.jinja"
    own.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    assert choose_chat_template(tokenizer, str(own)) == str(own)
    with pytest.raises(DataError, match=r"'vicuna' is not a bundled template \(chatml, llama3, qwen2\)"):
        choose_chat_template(tokenizer, "vicuna")
    with pytest.raises(DataError, match="no such file"):
        choose_chat_template(tokenizer, str(tmp_path / "missing.jinja"))


def test_stop_tokens_follow_the_vocabulary():
    tok = train_tokenizer(["a b c"] * 5, 300)
    im_end, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id
    assert stop_token_ids(tok) == [im_end, eos]
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    assert stop_token_ids(tok) == [im_end, tok.convert_tokens_to_ids("<|eot_id|>"), eos]
