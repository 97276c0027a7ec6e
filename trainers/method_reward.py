"""Reward model: a sequence-classification head with one output, trained on ranked answers.

Data: canonical ranking records ``{system?, context, answers: [{text, score, rank}]}`` (usage
reward_model). Every two answers of a record where one has the better rank make a (chosen, rejected)
pair, so five ranked answers give ten pairs; ties are skipped. The held-out share is split by record,
so no conversation is on both sides.

Model: ``LlamaForSequenceClassification`` (base 'tiny') or ``AutoModelForSequenceClassification`` over a
base model's weights (a new, randomly initialised score head), ``num_labels=1`` and ``pad_token_id``
set: the head reads the last non-padding token of the chat-templated conversation with its answer.

Loss: the Bradley-Terry pairwise loss ``-log sigmoid(r_chosen - r_rejected)``; the evaluation reports
it as eval_loss and the share of held-out pairs ranked the right way round as eval_accuracy.

Saved as format ``reward_model``: ``AutoModelForSequenceClassification.from_pretrained(dir)`` loads it and
``reward_scores`` scores conversations the way training saw them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainers.data import (
    DataError,
    RankingRecord,
    TokenDataset,
    preferred,
    ranking_records,
)
from trainers.methods import Exported, PreparedData, TrainMethod, hold_out, register

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


# ---------------------------------------------------------------- pairs (pure)


@dataclass(frozen=True)
class Pair:
    """A preference pair: the same conversation with a better and a worse answer."""

    record: RankingRecord
    chosen: str
    rejected: str


def ranked_pairs(record: RankingRecord) -> list[Pair]:
    """Every (better, worse) combination of a record's answers; ties and incomparable answers are skipped."""
    pairs = []
    answers = record.answers
    for i, a in enumerate(answers):
        for b in answers[i + 1 :]:
            order = preferred(a, b)
            if order > 0:
                pairs.append(Pair(record, a.text, b.text))
            elif order < 0:
                pairs.append(Pair(record, b.text, a.text))
    return pairs


def conversation_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int
) -> tuple[list[int], bool]:
    """Token ids of a chat-templated conversation, cut from the left to ``max_length`` (the reward is read
    at the last token, so the end of the answer must survive); and whether it was cut."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:], len(ids) > max_length


# ---------------------------------------------------------------- loss and metric (torch, pure)


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean ``-log sigmoid(r_chosen - r_rejected)``: minimal when every chosen answer scores higher."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics``: the share of pairs whose chosen answer got the higher reward."""
    import numpy as np

    rewards = np.asarray(eval_pred.predictions)
    return {"accuracy": float((rewards[:, 0] > rewards[:, 1]).mean()) if len(rewards) else 0.0}


@dataclass
class PairCollator:
    """A batch of pairs as one (2B, L) batch: the B chosen sequences first, then the B rejected ones,
    right-padded with ``pad_id``; the model scores all 2B in one forward pass."""

    pad_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        seqs = [x["chosen_ids"] for x in batch] + [x["rejected_ids"] for x in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _reward_trainer_class() -> type:
    """The Trainer subclass with the pairwise loss (built lazily: transformers is heavy to import)."""
    import torch
    from transformers import Trainer

    class PairwiseRewardTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            chosen, rejected = rewards.squeeze(-1).float().chunk(2)  # PairCollator: chosen half first
            loss = pairwise_loss(chosen, rejected)
            return (loss, torch.stack([chosen, rejected], dim=1)) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
            # Labels only so the Trainer calls compute_metrics; the pair order carries the preference.
            return loss.detach(), rewards.detach(), torch.zeros(len(rewards), device=rewards.device)

    return PairwiseRewardTrainer


def reward_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    max_length: int = 1024,
) -> list[float]:
    """Rewards of whole conversations (ending with the assistant answer), rendered as in training."""
    import torch

    out = []
    with torch.no_grad():
        for messages in conversations:
            ids = torch.tensor([conversation_ids(tokenizer, messages, max_length)[0]])
            out.append(float(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]))
    return out


# ---------------------------------------------------------------- the method


@register
class RewardModel(TrainMethod):
    """Pairwise reward model on ranked answers; exported as a one-output sequence classifier."""

    name = "reward_model"
    objective = "pairwise"
    extra_metrics = ("eval_accuracy",)

    def corpus(self, train_df, source):
        texts: list[str] = []
        for r in ranking_records(train_df, source):
            texts.extend([*(s for s in [r.system] if s), *r.context, *(a.text for a in r.answers)])
        return texts

    def prepare(self, spec, tokenizer, train_df, eval_df):
        eval_records = ranking_records(eval_df, spec.eval_uri or "") if eval_df is not None else None
        records = ranking_records(train_df, spec.train_uri)
        train_records, eval_records = hold_out(spec, records, eval_records)
        max_len = spec.hyperparams.max_seq_length
        truncated = 0

        def encode(rs: list[RankingRecord]) -> list[dict[str, list[int]]]:
            nonlocal truncated
            items = []
            for pair in (p for r in rs for p in ranked_pairs(r)):
                chosen, cut_c = conversation_ids(tokenizer, pair.record.messages(pair.chosen), max_len)
                rejected, cut_r = conversation_ids(tokenizer, pair.record.messages(pair.rejected), max_len)
                truncated += cut_c or cut_r
                items.append({"chosen_ids": chosen, "rejected_ids": rejected})
            return items

        train_items, eval_items = encode(train_records), encode(eval_records)
        if not train_items:
            raise DataError(
                f"train_uri {spec.train_uri}: no preference pairs: every record needs at least two answers "
                "with different ranks (or scores); check the answers column"
            )
        stats = {
            "train_records": len(train_records),
            "eval_records": len(eval_records),
            "train_pairs": len(train_items),
            "eval_pairs": len(eval_items),
            "records_without_pairs": sum(not ranked_pairs(r) for r in records),
            "truncated_pairs": truncated,
        }
        return PreparedData(
            TokenDataset(train_items), TokenDataset(eval_items) if eval_items else None, stats
        )

    def load_base(self, path):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:  # the head finds the last real token by the pad id
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, pad_token_id=tokenizer.pad_token_id
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer

    def build_tiny(self, spec, tokenizer):
        import torch
        from transformers import LlamaForSequenceClassification

        from trainers.modeling import tiny_llama_config

        torch.manual_seed(spec.hyperparams.seed)
        config = tiny_llama_config(spec.tiny, tokenizer, num_labels=1, tie_word_embeddings=False)
        return LlamaForSequenceClassification(config).to(torch.float32)

    def trainer(self, spec, model, tokenizer, data, args, callbacks):
        return _reward_trainer_class()(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=PairCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            compute_metrics=pairwise_accuracy,
            callbacks=callbacks,
        )

    def export(self, spec, trainer, tokenizer, out):
        return Exported(trainer.model, "reward_model")
