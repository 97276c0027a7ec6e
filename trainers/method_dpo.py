"""DPO: direct preference optimisation of a causal LM with TRL's DPOTrainer.

Data: the canonical ranking records a reward model trains on (``{system?, context, answers: [{text,
score, rank}]}``; preference pairs imported with format 'preference' become two-answer records). Each
record's best answer (rank 1) is the chosen answer against every worse one; ties with it are skipped.
The pairs go to TRL in its conversational format (``prompt`` messages, ``chosen`` / ``rejected``
assistant turns), so TRL applies the model's chat template and masks the prompt.

Model: the base (usually the SFT model; 'tiny' works for debug runs) is the policy; a frozen copy of it is
the reference model. ``dpo_beta`` and ``dpo_loss_type`` come from the hyperparameters; every other
training argument is the engine's (``training_arguments``), copied into TRL's ``DPOConfig``.

Metrics: TRL's ``rewards/{chosen,rejected,accuracies,margins}`` and ``logps/{chosen,rejected}`` at every
log step (``eval_`` prefixed after the final evaluation, and in result.json). Saved as format ``full``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from trainers.data import DataError, RankingRecord, preferred, ranking_records
from trainers.method_reward import Pair, RewardModel
from trainers.methods import PreparedData, TrainMethod, hold_out, register

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedModel, TrainingArguments

    from tasks.specs import HyperParams


def best_vs_rest(record: RankingRecord) -> list[Pair]:
    """The best answer (none is preferred over it; the first such) against each answer it beats."""
    answers = record.answers
    best = next((a for a in answers if not any(preferred(b, a) > 0 for b in answers)), None)
    if best is None:
        return []
    return [Pair(record, best.text, b.text) for b in answers if b is not best and preferred(best, b) > 0]


def dpo_records(df: pd.DataFrame, source: str) -> list[RankingRecord]:
    """The ranking records of ``df``; single-answer (SFT / rl) data is refused with what DPO needs."""
    if "answers" not in df.columns and "target" in df.columns:
        raise DataError(
            f"{source}: dpo needs ranked answers (columns context and answers, usage reward_model); these "
            "records have one target each, so there is no rejected answer. Import preference pairs with "
            "format 'preference', or annotate a ranking dataset"
        )
    return ranking_records(df, source)


def dpo_example(pair: Pair) -> dict[str, Any]:
    """A pair in TRL's conversational preference format."""
    return {
        "prompt": pair.record.messages(),
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
    }


def dpo_config(args: TrainingArguments, hp: HyperParams) -> Any:
    """TRL's DPOConfig carrying every engine training argument, plus the DPO ones.

    Copying the dataclass fields keeps whatever the engine sets (schedule, precision, checkpoints,
    distributed settings) and overrides TRL's own defaults (gradient checkpointing on, bf16 on).
    """
    import dataclasses

    from transformers import TrainingArguments
    from trl import DPOConfig

    engine_args = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return DPOConfig(
        **engine_args,
        beta=hp.dpo_beta,
        loss_type=[hp.dpo_loss_type],
        max_length=hp.max_seq_length,
        precompute_ref_log_probs=False,
    )


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The reference model: a copy of the policy before training, in eval mode, without gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@register
class Dpo(TrainMethod):
    """DPO on ranked answers against a frozen copy of the base; exported as a full causal LM."""

    name = "dpo"
    objective = "pairwise"
    extra_metrics = ("rewards/", "logps/", "eval_rewards/", "eval_logps/")

    def corpus(self, train_df, source):
        dpo_records(train_df, source)  # the clear error for single-answer data, before the tokenizer
        return RewardModel().corpus(train_df, source)

    def prepare(self, spec, tokenizer, train_df, eval_df):
        from datasets import Dataset

        eval_records = dpo_records(eval_df, spec.eval_uri or "") if eval_df is not None else None
        records = dpo_records(train_df, spec.train_uri)
        train_records, eval_records = hold_out(spec, records, eval_records)
        train_pairs = [dpo_example(p) for r in train_records for p in best_vs_rest(r)]
        eval_pairs = [dpo_example(p) for r in eval_records for p in best_vs_rest(r)]
        if not train_pairs:
            raise DataError(
                f"train_uri {spec.train_uri}: no preference pairs: every record needs a best answer and at "
                "least one worse one (different ranks or scores); check the answers column"
            )
        stats = {
            "train_records": len(train_records),
            "eval_records": len(eval_records),
            "train_pairs": len(train_pairs),
            "eval_pairs": len(eval_pairs),
            "records_without_pairs": sum(not best_vs_rest(r) for r in records),
        }
        return PreparedData(
            Dataset.from_list(train_pairs), Dataset.from_list(eval_pairs) if eval_pairs else None, stats
        )

    def trainer(self, spec, model, tokenizer, data, args, callbacks):
        from trl import DPOTrainer

        return DPOTrainer(
            model=model,
            ref_model=frozen_copy(model),
            args=dpo_config(args, spec.hyperparams),
            train_dataset=data.train,
            eval_dataset=data.eval,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
