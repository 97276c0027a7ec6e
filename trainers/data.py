"""Training data: reading dataset versions, the tiny tokenizer, pretrain packing and SFT label masking.

Everything here is plain Python over token lists, so it is unit-tested without a model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.records import DATA_DIR

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from transformers import PreTrainedTokenizerBase

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TURN_TOKENS = (IM_END, "<|eot_id|>", "<|end|>")  # ChatML / Qwen, Llama 3, Phi
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]
IGNORE_INDEX = -100  # label value the causal-LM loss skips

# ChatML, as Qwen and vLLM's defaults know it; the system turn appears only when given.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


# ---------------------------------------------------------------- reading records


class DataError(ValueError):
    """Input data that cannot be used; the message names the file or record and what to fix."""


def read_records(path: Path) -> pd.DataFrame:
    """Records of a dataset version directory (``data/*.parquet``), a Parquet directory or file, or JSON(L)."""
    import pandas as pd

    if path.is_dir():
        data_dir = path / DATA_DIR if (path / DATA_DIR).is_dir() else path
        files = sorted(data_dir.glob("*.parquet"))
        if not files:
            raise DataError(
                f"{path}: no Parquet files under {data_dir}; expected a dataset version directory"
            )
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".json"):
        return pd.DataFrame(_read_json_records(path))
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; use a dataset version directory, .parquet or .jsonl"
    )


def _read_json_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
    return rows


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # numpy arrays from Parquet list columns


@dataclass(frozen=True)
class ChatRecord:
    """One SFT / model-test record: optional system prompt, alternating turns ending with a user turn."""

    system: str | None
    context: list[str]
    target: str

    def messages(self, with_target: bool = True) -> list[dict[str, str]]:
        """Chat messages: system (if any), then user/assistant turns, then the answer when asked for."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for i, turn in enumerate(self.context):
            msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
        if with_target:
            msgs.append({"role": "assistant", "content": self.target})
        return msgs

    @property
    def question(self) -> str:
        return self.context[-1]


def chat_records(df: pd.DataFrame, source: str) -> list[ChatRecord]:
    """Canonical ``{system?, context, target}`` rows; BELLE's ``{question, std_answer}`` also accepted."""
    cols = set(df.columns)
    if {"context", "target"} <= cols:
        ctx_col, tgt_col = "context", "target"
    elif {"question", "std_answer"} <= cols:  # the BELLE eval set, a documented convenience
        ctx_col, tgt_col = "question", "std_answer"
    else:
        raise DataError(
            f"{source}: expected columns context and target (or question and std_answer); found {sorted(cols)}"
        )
    has_system = "system" in cols
    records = []
    for i, row in enumerate(df.to_dict("records")):
        context = _as_list(row[ctx_col])
        if not context or len(context) % 2 == 0:
            raise DataError(
                f"{source}: record {i} (id {row.get('id', '?')}): context must hold alternating turns ending "
                f"with a user turn (an odd count); got {len(context)}"
            )
        system = row.get("system") if has_system else None
        records.append(
            ChatRecord(system if isinstance(system, str) and system else None, context, str(row[tgt_col]))
        )
    return records


@dataclass(frozen=True)
class RankedAnswer:
    """One answer of a ranking record: rank 1 is the best; score (higher is better) where no rank is set."""

    text: str
    score: float | None
    rank: int | None


@dataclass(frozen=True)
class RankingRecord:
    """A reward-model / preference record: a conversation and up to five ranked answers to its last turn."""

    system: str | None
    context: list[str]
    answers: list[RankedAnswer]

    def messages(self, answer: str | None = None) -> list[dict[str, str]]:
        """Chat messages of the conversation, followed by ``answer`` as the assistant turn when given."""
        return ChatRecord(self.system, self.context, answer or "").messages(with_target=answer is not None)


def _number(value: Any) -> float | None:
    """A rank or score from JSON or Parquet: None, NaN (a null in a pandas float column) and '' are missing."""
    if value is None or value == "":
        return None
    number = float(value)
    return None if number != number else number  # NaN


def _ranked_answer(value: Any, where: str) -> RankedAnswer:
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: an answer must be an object {{text, score, rank}}; got {type(value).__name__}"
        )
    text = value.get("text")
    if not isinstance(text, str):
        raise DataError(f"{where}: answer text must be a string; got {type(text).__name__}")
    try:
        score, rank = _number(value.get("score")), _number(value.get("rank"))
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: score and rank must be numbers ({e})") from e
    return RankedAnswer(text, score, None if rank is None else int(rank))


def ranking_records(df: pd.DataFrame, source: str) -> list[RankingRecord]:
    """Canonical ranking rows ``{system?, context, answers: [{text, score, rank}]}``.

    Parquet hands ``answers`` over as a numpy array of dicts and JSON as a list; both are read. Answers
    with empty text are dropped (an unanswered slot of the annotation tool).
    """
    cols = set(df.columns)
    if not {"context", "answers"} <= cols:
        raise DataError(
            f"{source}: expected the ranking schema {{context, answers: [{{text, score, rank}}]}} (usage "
            f"reward_model); found columns {sorted(cols)}. Import preference pairs with format 'preference'"
        )
    has_system = "system" in cols
    records = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{source}: record {i} (id {row.get('id', '?')})"
        context = _as_list(row["context"])
        if not context or len(context) % 2 == 0:
            raise DataError(
                f"{where}: context must hold alternating turns ending with a user turn (an odd count); "
                f"got {len(context)}"
            )
        raw = row["answers"]
        if raw is None or isinstance(raw, str | dict):
            raise DataError(
                f"{where}: answers must be a list of {{text, score, rank}}; got {type(raw).__name__}"
            )
        answers = [_ranked_answer(a, f"{where} answer {j}") for j, a in enumerate(list(raw))]
        system = row.get("system") if has_system else None
        records.append(
            RankingRecord(
                system if isinstance(system, str) and system else None,
                context,
                [a for a in answers if a.text.strip()],
            )
        )
    return records


def preferred(a: RankedAnswer, b: RankedAnswer) -> int:
    """1 when ``a`` is better than ``b``, -1 when worse, 0 for a tie or when they cannot be compared.

    Ranks decide (1 is the best); scores (higher is better) only when either rank is missing.
    """
    if a.rank is not None and b.rank is not None:
        return (a.rank < b.rank) - (a.rank > b.rank)
    if a.score is not None and b.score is not None:
        return (a.score > b.score) - (a.score < b.score)
    return 0


def pretrain_texts(df: pd.DataFrame, source: str) -> list[str]:
    """The ``text`` column of a pretrain dataset, empty texts dropped."""
    if "text" not in df.columns:
        raise DataError(f"{source}: pretrain data needs a 'text' column; found {sorted(df.columns)}")
    return [t for t in df["text"].tolist() if isinstance(t, str) and t.strip()]


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, validation) index split; at least one validation item when fraction > 0 and n > 1."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(max(round(n * fraction), 1 if fraction > 0 and n > 1 else 0), n - 1) if n else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer trained on ``texts``, with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
    )
    hf.chat_template = CHATML_TEMPLATE
    hf.model_max_length = 1 << 30  # the model config, not the tokenizer, bounds the context
    return hf


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end an answer: the end-of-turn tokens of the known chat templates that the vocabulary
    has as single tokens, then eos."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    turn_ends = [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] not in ids]
    return turn_ends + ids


# ---------------------------------------------------------------- pretrain packing


@dataclass(frozen=True)
class PackedBlocks:
    """Fixed-length token blocks and how many tokens the last, partial block threw away."""

    blocks: list[list[int]]
    total_tokens: int
    dropped_tokens: int

    @property
    def waste(self) -> float:
        """Share of tokens (0-1) not used for training."""
        return self.dropped_tokens / self.total_tokens if self.total_tokens else 0.0


def pack_sequences(
    sequences: Iterable[Sequence[int]], block_size: int, eos_id: int, keep_tail: bool = False
) -> PackedBlocks:
    """Concatenate sequences with an eos after each and cut the stream into ``block_size`` blocks.

    Documents may span blocks (the nanoGPT/GPT-2 recipe); only the tail shorter than a block is dropped,
    so waste stays below one block of the whole corpus. ``keep_tail`` keeps it as a shorter last block
    (for validation, where every token counts and batches are padded anyway).
    """
    stream: list[int] = []
    for seq in sequences:
        stream.extend(seq)
        stream.append(eos_id)
    n_blocks = len(stream) // block_size
    blocks = [stream[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
    tail = stream[n_blocks * block_size :]
    if keep_tail and tail:
        blocks.append(tail)
        return PackedBlocks(blocks, len(stream), 0)
    return PackedBlocks(blocks, len(stream), len(tail))


# ---------------------------------------------------------------- SFT examples


@dataclass(frozen=True)
class SftExample:
    """Token ids of one conversation with labels only on the answer (``IGNORE_INDEX`` elsewhere)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode_chat(tokenizer: PreTrainedTokenizerBase, record: ChatRecord, max_length: int) -> SftExample | None:
    """Render a record with the chat template and mask everything but the final assistant answer.

    The prompt (with the generation prompt) and the answer (content plus the template's end-of-turn) are
    tokenised separately, so the boundary is exact whatever the template. Sequences longer than
    ``max_length`` are cut from the right; None when no answer token survives the cut.
    """
    prompt = tokenizer.apply_chat_template(
        record.messages(with_target=False), tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(record.messages(with_target=True), tokenize=False)
    if not full.startswith(prompt):
        raise DataError(
            "the tokenizer's chat template renders the conversation without its generation prompt as a prefix; "
            "SFT label masking needs a template where it is (ChatML, Llama 3 and Qwen templates are)"
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + answer_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    truncated = len(input_ids) > max_length
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return SftExample(input_ids, labels, truncated)


# ---------------------------------------------------------------- torch side


class TokenDataset:
    """A map-style dataset of ``{input_ids, labels}`` dicts (lists of ints) for the Trainer."""

    def __init__(self, items: list[dict[str, list[int]]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]

    @property
    def num_tokens(self) -> int:
        return sum(len(x["input_ids"]) for x in self.items)


@dataclass
class PadCollator:
    """Right-pads a batch: input ids with ``pad_id``, labels with ``IGNORE_INDEX``, attention mask 0."""

    pad_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[i, :n] = torch.tensor(x["input_ids"])
            labels[i, :n] = torch.tensor(x["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
