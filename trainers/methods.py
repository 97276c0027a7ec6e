"""Training methods: what each method does differently, behind one interface the engine drives.

The engine (trainers/train.py) does what every method shares: MLflow run, data loading, tokenizer or base
model, Trainer arguments, checkpoints, saving and registration. A method says:

- ``source``   the frames to train on (default: the dataset's; distill asks a teacher for the answers);
- ``corpus``   the texts a fresh tokenizer learns from (base_model 'tiny');
- ``prepare``  tokenised train/validation sets from the dataset frames;
- ``build``    the model to train from the base (wrap it in LoRA, add a head, ...);
- ``trainer``  the Trainer (transformers, or TRL's) for that model and data;
- ``export``   what lands in the servable model directory and which format it has.

Register a method with ``@register``; ``METHODS`` maps the spec's ``method`` to its instance. Methods in
their own modules (prompt tuning, reward model, DPO, distillation) are imported by ``_load_all``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from trainers.data import (
    ChatRecord,
    DataError,
    PadCollator,
    TokenDataset,
    chat_records,
    encode_chat,
    pack_sequences,
    pretrain_texts,
    split_indices,
)

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from tasks.specs import TrainSpec
    from tasks.storage import Lake


class UnsupportedMethodError(ValueError):
    """The spec asks for a training method this engine does not implement."""


@dataclass
class SourcedData:
    """The frames a method trains on and what producing them is worth recording in the MLflow run."""

    train: pd.DataFrame
    eval: pd.DataFrame | None
    metrics: dict[str, float] = field(default_factory=dict)  # logged as run metrics, copied into result.json
    texts: dict[str, str] = field(default_factory=dict)  # artifact file -> content, logged to the run


@dataclass
class PreparedData:
    """Tokenised train/validation sets and the statistics worth logging."""

    train: Any
    eval: Any | None
    stats: dict[str, float | int] = field(default_factory=dict)


@dataclass
class Exported:
    """The final model to save and how the model directory should describe it."""

    model: PreTrainedModel
    format: str  # full | merged | peft_adapter | prompt_adapter | reward_model
    extra_dirs: dict[str, Path] = field(default_factory=dict)  # artefact path -> local dir to log too
    meta: dict[str, Any] = field(default_factory=dict)  # more forgeflow.json keys (where the base is)


class TrainMethod:
    """Defaults fit a causal-LM method trained with the transformers Trainer; subclasses override."""

    name: ClassVar[str]
    #: Where the loss is measured: 'lm' (next-token loss; eval loss and perplexity) or 'pairwise'
    #: (a preference loss, where perplexity means nothing).
    objective: ClassVar[str] = "lm"
    #: Prefixes of Trainer log keys beyond loss / learning rate / grad norm that go to MLflow at every log
    #: step; the ``eval_`` ones also go into result.json's metrics (e.g. the reward model's eval_accuracy).
    extra_metrics: ClassVar[tuple[str, ...]] = ()

    def source(
        self, spec: TrainSpec, lake: Lake, train_df: pd.DataFrame, eval_df: pd.DataFrame | None
    ) -> SourcedData:
        return SourcedData(train_df, eval_df)

    def corpus(self, train_df: pd.DataFrame, source: str) -> list[str]:
        texts: list[str] = []
        for r in chat_records(train_df, source):
            texts.extend([*(s for s in [r.system] if s), *r.context, r.target])
        return texts

    def prepare(
        self,
        spec: TrainSpec,
        tokenizer: PreTrainedTokenizerBase,
        train_df: pd.DataFrame,
        eval_df: pd.DataFrame | None,
    ) -> PreparedData:
        raise NotImplementedError

    def load_base(self, path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        from trainers.modeling import load_base

        return load_base(path)

    def build_tiny(self, spec: TrainSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
        from trainers.modeling import build_tiny_model

        return build_tiny_model(spec.tiny, tokenizer, spec.hyperparams.seed)

    def build(self, spec: TrainSpec, model: PreTrainedModel) -> PreTrainedModel:
        return model

    def trainer(
        self,
        spec: TrainSpec,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: PreparedData,
        args: TrainingArguments,
        callbacks: list[Any],
    ) -> Trainer:
        from transformers import Trainer

        return Trainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=PadCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    def export(
        self, spec: TrainSpec, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, out: Path
    ) -> Exported:
        return Exported(trainer.model, "full")


METHODS: dict[str, TrainMethod] = {}


def register(cls: type[TrainMethod]) -> type[TrainMethod]:
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> TrainMethod:
    _load_all()
    if name not in METHODS:
        raise UnsupportedMethodError(
            f"training method {name!r} is not available in this engine; "
            f"available methods: {', '.join(METHODS)} (set the spec's 'method' field to one of them)"
        )
    return METHODS[name]


def _load_all() -> None:
    """Import the modules that register the methods beyond this file's.

    Lazy (on the first get_method) so importing the engine stays cheap; the modules themselves import
    PEFT, TRL and httpx only inside the calls that need them.
    """
    import trainers.method_distill
    import trainers.method_dpo
    import trainers.method_prompt_tuning
    import trainers.method_reward  # noqa: F401


R = TypeVar("R")


def split_records(records: list[R], fraction: float, seed: int) -> tuple[list[R], list[R]]:
    """Seeded (train, validation) split by record, so a conversation's pairs stay on one side."""
    train_idx, val_idx = split_indices(len(records), fraction, seed)
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


def hold_out(spec: TrainSpec, records: list[R], eval_records: list[R] | None) -> tuple[list[R], list[R]]:
    """(train, validation): the eval set's records when the spec has one, else a seeded split of ``records``."""
    if eval_records is not None:
        return records, eval_records
    return split_records(records, spec.validation_split, spec.hyperparams.seed)


# ---------------------------------------------------------------- pretraining


@register
class Pretrain(TrainMethod):
    """Pretraining / continued pretraining: documents packed into max_seq_length blocks."""

    name = "pretrain"

    def corpus(self, train_df, source):
        return pretrain_texts(train_df, source)

    def prepare(self, spec, tokenizer, train_df, eval_df):
        eval_texts = pretrain_texts(eval_df, spec.eval_uri or "") if eval_df is not None else None
        texts, eval_texts = hold_out(spec, pretrain_texts(train_df, spec.train_uri), eval_texts)
        block, eos = spec.hyperparams.max_seq_length, tokenizer.eos_token_id
        if eos is None:
            raise DataError(
                f"base_model {spec.base_model}: its tokenizer has no eos token, which packing puts between "
                "documents; set eos_token in the model's tokenizer_config.json"
            )

        def encode(batch: list[str]) -> list[list[int]]:
            return tokenizer(batch, add_special_tokens=False)["input_ids"] if batch else []

        packed = pack_sequences(encode(texts), block, eos)
        if not packed.blocks:
            raise DataError(
                f"train_uri {spec.train_uri}: {packed.total_tokens} tokens is less than one block of "
                f"max_seq_length={block}; add data or lower hyperparams.max_seq_length"
            )
        val = pack_sequences(encode(eval_texts), block, eos, keep_tail=True)
        as_items = [{"input_ids": b, "labels": b} for b in packed.blocks]
        eval_items = [{"input_ids": b, "labels": b} for b in val.blocks]
        stats = {
            "train_documents": len(texts),
            "eval_documents": len(eval_texts),
            "train_tokens": packed.total_tokens,
            "train_blocks": len(packed.blocks),
            "packing_waste": round(packed.waste, 6),
        }
        return PreparedData(TokenDataset(as_items), TokenDataset(eval_items) if eval_items else None, stats)


# ---------------------------------------------------------------- supervised fine-tuning


def encode_sft(
    spec: TrainSpec,
    tokenizer: PreTrainedTokenizerBase,
    records: list[ChatRecord],
    eval_records: list[ChatRecord],
) -> PreparedData:
    """Chat-template each record and mask all but the answer; truncate to max_seq_length."""
    counts = {"truncated": 0, "dropped": 0}

    def encode(rs: list[ChatRecord]) -> list[dict[str, list[int]]]:
        items = []
        for r in rs:
            ex = encode_chat(tokenizer, r, spec.hyperparams.max_seq_length)
            if ex is None:
                counts["dropped"] += 1
                continue
            counts["truncated"] += ex.truncated
            items.append({"input_ids": ex.input_ids, "labels": ex.labels})
        return items

    train_items, eval_items = encode(records), encode(eval_records)
    if not train_items:
        raise DataError(
            f"train_uri {spec.train_uri}: every prompt is longer than max_seq_length="
            f"{spec.hyperparams.max_seq_length}, so no answer token is left; raise hyperparams.max_seq_length"
        )
    answer_tokens = sum(sum(t != -100 for t in x["labels"]) for x in train_items)
    stats = {
        "train_records": len(train_items),
        "eval_records": len(eval_items),
        "train_tokens": sum(len(x["input_ids"]) for x in train_items),
        "train_answer_tokens": answer_tokens,
        "truncated_records": counts["truncated"],
        "dropped_records": counts["dropped"],
    }
    return PreparedData(TokenDataset(train_items), TokenDataset(eval_items) if eval_items else None, stats)


def split_chat(
    spec: TrainSpec, train_df: pd.DataFrame, eval_df: pd.DataFrame | None
) -> tuple[list[ChatRecord], list[ChatRecord]]:
    """(train, validation) chat records: the eval set when given, else a seeded split of the train set."""
    eval_records = chat_records(eval_df, spec.eval_uri or "") if eval_df is not None else None
    return hold_out(spec, chat_records(train_df, spec.train_uri), eval_records)


@register
class SftFull(TrainMethod):
    """Supervised fine-tuning of every weight; loss on the answer tokens only."""

    name = "sft_full"

    def prepare(self, spec, tokenizer, train_df, eval_df):
        return encode_sft(spec, tokenizer, *split_chat(spec, train_df, eval_df))


@register
class SftLora(SftFull):
    """SFT of a LoRA adapter on every linear projection; merged into the base unless merge_lora is off."""

    name = "sft_lora"

    def build(self, spec, model):
        from trainers.modeling import add_lora

        return add_lora(model, spec.hyperparams)

    def export(self, spec, trainer, tokenizer, out):
        from trainers.modeling import save_tokenizer

        adapter_dir = out / "adapter"
        trainer.model.save_pretrained(adapter_dir)
        save_tokenizer(tokenizer, adapter_dir)
        if spec.merge_lora:
            return Exported(trainer.model.merge_and_unload(), "merged", {"adapter": adapter_dir})
        return Exported(trainer.model, "peft_adapter", {"adapter": adapter_dir})
