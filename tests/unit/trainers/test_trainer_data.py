"""Tokenizer, reading records, packing, SFT label masking and padding."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from trainers.data import (
    EOS_TOKEN,
    IGNORE_INDEX,
    IM_END,
    IM_START,
    ChatRecord,
    DataError,
    PadCollator,
    chat_records,
    encode_chat,
    pack_sequences,
    read_records,
    split_indices,
    stop_token_ids,
)


def test_tiny_tokenizer_special_tokens_and_roundtrip(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == EOS_TOKEN
    for tok in (EOS_TOKEN, IM_START, IM_END):
        assert tokenizer.convert_tokens_to_ids(tok) < 3  # special tokens come first
    assert len(tokenizer) <= 300
    text = "今天我们用Python写诗：春眠不觉晓。🙂"  # unseen characters still encode (byte-level)
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.eos_token_id]


def test_chat_template_renders_chatml_with_optional_system(tokenizer):
    rec = ChatRecord("你是诗人", ["写一句诗"], "春眠不觉晓")
    assert tokenizer.apply_chat_template(rec.messages(), tokenize=False) == (
        "<|im_start|>system\n你是诗人<|im_end|>\n<|im_start|>user\n写一句诗<|im_end|>\n"
        "<|im_start|>assistant\n春眠不觉晓<|im_end|>\n"
    )
    no_system = ChatRecord(None, ["写一句诗"], "春眠不觉晓")
    assert tokenizer.apply_chat_template(
        no_system.messages(with_target=False), tokenize=False, add_generation_prompt=True
    ) == ("<|im_start|>user\n写一句诗<|im_end|>\n<|im_start|>assistant\n")


def test_multi_turn_messages_alternate_roles():
    rec = ChatRecord(None, ["问1", "答1", "问2"], "答2")
    assert [m["role"] for m in rec.messages()] == ["user", "assistant", "user", "assistant"]
    assert rec.question == "问2"


def test_label_masking_keeps_only_the_answer(tokenizer):
    rec = ChatRecord("你是助手", ["问1", "答1", "问2"], "今天天气很好")
    ex = encode_chat(tokenizer, rec, max_length=512)
    assert ex is not None and not ex.truncated
    assert len(ex.input_ids) == len(ex.labels)
    answer = [t for t in ex.labels if t != IGNORE_INDEX]
    # The answer and the end-of-turn marker are learned; the earlier assistant turn is not.
    assert tokenizer.decode(answer) == "今天天气很好<|im_end|>\n"
    first_answer = ex.labels.index(answer[0])
    assert all(t == IGNORE_INDEX for t in ex.labels[:first_answer])
    assert ex.input_ids[first_answer:] == answer


def test_label_masking_truncates_and_drops(tokenizer):
    rec = ChatRecord(None, ["问"], "今天天气很好" * 20)
    full = encode_chat(tokenizer, rec, max_length=10_000)
    cut = encode_chat(tokenizer, rec, max_length=len(full.input_ids) - 5)
    assert cut.truncated and cut.input_ids == full.input_ids[:-5] and cut.labels == full.labels[:-5]
    prompt_len = full.labels.index(next(t for t in full.labels if t != IGNORE_INDEX))
    assert encode_chat(tokenizer, rec, max_length=prompt_len) is None  # no answer token left


def test_pack_sequences_inserts_eos_and_reports_waste():
    packed = pack_sequences([[1, 2, 3], [4, 5], [6, 7, 8, 9]], block_size=4, eos_id=0)
    # stream: 1 2 3 0 4 5 0 6 7 8 9 0 (12 tokens) -> 3 full blocks
    assert packed.blocks == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert packed.waste == 0.0
    packed = pack_sequences([[1, 2, 3, 4, 5]], block_size=4, eos_id=0)
    assert packed.blocks == [[1, 2, 3, 4]] and packed.dropped_tokens == 2
    assert packed.waste == pytest.approx(2 / 6)
    tail = pack_sequences([[1, 2, 3, 4, 5]], block_size=4, eos_id=0, keep_tail=True)
    assert tail.blocks == [[1, 2, 3, 4], [5, 0]] and tail.waste == 0.0
    assert pack_sequences([], 4, 0).blocks == []


def test_split_indices_is_seeded_and_disjoint():
    train, val = split_indices(100, 0.1, seed=1)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(100))
    assert split_indices(100, 0.1, seed=1) == (train, val)
    assert split_indices(3, 0.01, seed=0)[1] != []  # at least one held-out record
    assert split_indices(1, 0.5, seed=0) == ([0], [])  # never the only record
    assert split_indices(10, 0.0, seed=0) == (list(range(10)), [])


def test_pad_collator_masks_padding():
    batch = PadCollator(pad_id=9)(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_read_records_version_dir_parquet_and_jsonl(tmp_path):
    df = pd.DataFrame({"id": ["a"], "system": [None], "context": [["问"]], "target": ["答"]})
    (tmp_path / "v1" / "data").mkdir(parents=True)
    df.to_parquet(tmp_path / "v1" / "data" / "part-0.parquet")
    recs = chat_records(read_records(tmp_path / "v1"), "v1")
    assert recs == [ChatRecord(None, ["问"], "答")]
    assert len(read_records(tmp_path / "v1" / "data" / "part-0.parquet")) == 1
    belle = tmp_path / "belle.jsonl"
    belle.write_text(
        json.dumps({"question": "中国有多少个省？", "std_answer": "34个", "class": "qa"}) + "\n\n"
    )
    assert chat_records(read_records(belle), "belle") == [ChatRecord(None, ["中国有多少个省？"], "34个")]


def test_read_records_errors_name_the_place(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": ["q"], "target": "a"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_records(bad)
    with pytest.raises(DataError, match="no Parquet files"):
        read_records(tmp_path)
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        read_records(tmp_path / "x.csv")
    with pytest.raises(DataError, match="expected columns context and target"):
        chat_records(pd.DataFrame({"text": ["x"]}), "src")
    with pytest.raises(DataError, match="src: record 0 .*odd count"):
        chat_records(pd.DataFrame({"context": [["q", "a"]], "target": ["x"]}), "src")
