"""The pure parts of prompt tuning, the reward model, DPO and distillation: ranking records, pair building,
the pairwise loss and accuracy, teacher-answer rules, spec validation and the MLflow step logger."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from tasks.specs import AnswerRules, HyperParams, KeyMissing, TrainSpec
from trainers.data import DataError, RankedAnswer, RankingRecord, preferred, ranking_records
from trainers.evaluate import Completion


def _record(*answers: tuple[str, float | None, int | None]) -> RankingRecord:
    return RankingRecord(None, ["q"], [RankedAnswer(t, s, r) for t, s, r in answers])


# ---------------------------------------------------------------- ranking records


def test_ranking_records_read_parquet_struct_lists(tmp_path):
    import numpy as np
    import pandas as pd

    rows = [
        {
            "id": "a",
            "system": "sys",
            "context": ["q1"],
            "answers": [
                {"text": "best", "score": 9.0, "rank": 1},
                {"text": "", "score": 5.0, "rank": 2},  # an unfilled slot: dropped
                {"text": "worst", "score": None, "rank": 3},
            ],
        },
        {"id": "b", "system": None, "context": ["q1", "a1", "q2"], "answers": [{"text": "x", "score": 1.0}]},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    df = pd.read_parquet(tmp_path / "r.parquet")
    assert isinstance(df["answers"].iloc[0], np.ndarray)  # what the reader must handle
    recs = ranking_records(df, "r.parquet")
    assert recs[0].system == "sys" and [a.text for a in recs[0].answers] == ["best", "worst"]
    assert recs[0].answers[1] == RankedAnswer("worst", None, 3)
    assert recs[1].answers == [RankedAnswer("x", 1.0, None)] and recs[1].context == ["q1", "a1", "q2"]
    assert recs[1].messages("y")[-1] == {"role": "assistant", "content": "y"}
    assert [m["role"] for m in recs[1].messages()] == ["user", "assistant", "user"]


def test_ranking_records_name_the_problem():
    import pandas as pd

    with pytest.raises(DataError, match=r"d\.parquet: expected the ranking schema .*format 'preference'"):
        ranking_records(pd.DataFrame([{"context": ["q"], "target": "t"}]), "d.parquet")
    with pytest.raises(DataError, match=r"record 0 \(id z\): context must hold alternating turns"):
        ranking_records(pd.DataFrame([{"id": "z", "context": ["q", "a"], "answers": []}]), "d")
    with pytest.raises(DataError, match=r"record 0 .* answer 1: score and rank must be numbers"):
        ranking_records(
            pd.DataFrame([{"context": ["q"], "answers": [{"text": "a"}, {"text": "b", "rank": "x"}]}]), "d"
        )
    with pytest.raises(DataError, match="answers must be a list"):
        ranking_records(pd.DataFrame([{"context": ["q"], "answers": "just text"}]), "d")


def test_preferred_uses_ranks_then_scores():
    assert preferred(RankedAnswer("a", 1.0, 1), RankedAnswer("b", 9.0, 2)) == 1  # rank beats score
    assert preferred(RankedAnswer("a", 1.0, 3), RankedAnswer("b", 9.0, 2)) == -1
    assert preferred(RankedAnswer("a", 2.0, 2), RankedAnswer("b", 9.0, 2)) == 0  # a rank tie is a tie
    assert preferred(RankedAnswer("a", 2.0, None), RankedAnswer("b", 9.0, 1)) == -1  # score fallback
    assert preferred(RankedAnswer("a", None, None), RankedAnswer("b", 9.0, 1)) == 0  # incomparable


# ---------------------------------------------------------------- pairs


def test_reward_pairs_take_every_better_worse_combination_and_skip_ties():
    from trainers.method_reward import ranked_pairs

    five = _record(*[(f"a{r}", None, r) for r in (3, 1, 5, 2, 4)])
    pairs = ranked_pairs(five)
    assert len(pairs) == 10
    assert all(int(p.chosen[1]) < int(p.rejected[1]) for p in pairs)
    tied = _record(("a", 5.0, 1), ("b", 3.0, 2), ("c", 3.0, 2))
    assert {(p.chosen, p.rejected) for p in ranked_pairs(tied)} == {("a", "b"), ("a", "c")}
    assert ranked_pairs(_record(("only", 1.0, 1))) == []


def test_dpo_pairs_are_the_best_answer_against_each_worse_one():
    from trainers.method_dpo import best_vs_rest, dpo_example

    rec = _record(("second", None, 2), ("best", None, 1), ("third", None, 3), ("tie", None, 1))
    pairs = best_vs_rest(rec)
    assert [(p.chosen, p.rejected) for p in pairs] == [("best", "second"), ("best", "third")]
    assert best_vs_rest(_record(("x", 1.0, 1), ("y", 1.0, 1))) == []  # all tied: nothing to prefer
    ex = dpo_example(pairs[0])
    assert ex["prompt"] == [{"role": "user", "content": "q"}]
    assert ex["chosen"] == [{"role": "assistant", "content": "best"}]
    assert ex["rejected"] == [{"role": "assistant", "content": "second"}]


def test_dpo_refuses_single_answer_data_by_name():
    import pandas as pd

    from trainers.method_dpo import dpo_records

    with pytest.raises(DataError, match="sft@V1: dpo needs ranked answers"):
        dpo_records(pd.DataFrame([{"context": ["q"], "target": "t"}]), "sft@V1")


def test_records_split_keeps_a_conversation_on_one_side():
    from trainers.methods import split_records

    recs = [RankingRecord(None, [f"q{i}"], []) for i in range(20)]
    train, val = split_records(recs, 0.25, seed=1)
    assert len(val) == 5 and len(train) == 15
    assert not {r.context[0] for r in train} & {r.context[0] for r in val}
    assert split_records(recs, 0.25, seed=1) == (train, val)


def test_conversation_ids_cut_from_the_left_keep_the_answer_end(tokenizer):
    from trainers.method_reward import conversation_ids

    msgs = [{"role": "user", "content": "今天天气很好" * 5}, {"role": "assistant", "content": "春眠不觉晓"}]
    full, cut = conversation_ids(tokenizer, msgs, 10_000)
    short, cut2 = conversation_ids(tokenizer, msgs, 8)
    assert not cut and cut2 and short == full[-8:]


# ---------------------------------------------------------------- loss, metric, collator


def test_pairwise_loss_and_accuracy():
    import math

    import torch

    from trainers.method_reward import pairwise_accuracy, pairwise_loss

    zeros = torch.zeros(4)
    assert pairwise_loss(zeros, zeros).item() == pytest.approx(math.log(2))
    assert pairwise_loss(torch.full((2,), 20.0), torch.zeros(2)).item() < 1e-6
    assert pairwise_loss(torch.zeros(2), torch.full((2,), 5.0)).item() == pytest.approx(5.0, abs=0.01)
    chosen = torch.zeros(3, requires_grad=True)
    pairwise_loss(chosen, torch.zeros(3)).backward()
    assert (chosen.grad < 0).all()  # descending the loss raises the chosen reward

    class Pred:
        predictions = [[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0]]

    assert pairwise_accuracy(Pred()) == {"accuracy": 0.5}  # a tie is not a win


def test_pair_collator_puts_the_chosen_half_first():
    from trainers.method_reward import PairCollator

    batch = PairCollator(pad_id=0)(
        [{"chosen_ids": [5, 6, 7], "rejected_ids": [8]}, {"chosen_ids": [9], "rejected_ids": [4, 3]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0], [8, 0, 0], [4, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]


def test_reward_trainer_loss_reads_chosen_and_rejected_halves():
    import torch

    from trainers.method_reward import _reward_trainer_class

    class Scores(torch.nn.Module):  # the reward is the first token id
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": input_ids[:, :1].float()})()

    trainer_cls = _reward_trainer_class()
    inputs = {"input_ids": torch.tensor([[4], [1], [0], [3]]), "attention_mask": torch.ones(4, 1)}
    loss, rewards = trainer_cls.compute_loss(None, Scores(), inputs, return_outputs=True)
    assert rewards.tolist() == [[4.0, 0.0], [1.0, 3.0]]
    expected = -(torch.nn.functional.logsigmoid(torch.tensor([4.0, -2.0]))).mean()
    assert loss.item() == pytest.approx(expected.item())


# ---------------------------------------------------------------- prompt tuning


def test_prompt_init_text_is_repeated_or_cut_to_length(tokenizer):
    from trainers.method_prompt_tuning import init_token_ids

    ids = tokenizer("春眠不觉晓", add_special_tokens=False)["input_ids"]
    assert init_token_ids(tokenizer, "春眠不觉晓", 2 * len(ids) + 1) == ids + ids + ids[:1]
    assert init_token_ids(tokenizer, "春眠不觉晓", 1) == ids[:1]
    with pytest.raises(DataError, match="encodes to no tokens"):
        init_token_ids(tokenizer, "", 4)


def test_prompt_init_text_sets_the_virtual_tokens_to_the_text_embeddings(tokenizer):
    import torch

    from tasks.specs import TinyModelConfig
    from trainers.method_prompt_tuning import PromptTuning, init_from_text, init_token_ids
    from trainers.modeling import build_tiny_model

    cfg = TinyModelConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=300,
        max_position_embeddings=64,
    )
    spec = TrainSpec(
        run_key="p",
        method="prompt_tuning",
        train_uri="file:///d",
        output_uri="file:///o",
        hyperparams=HyperParams(num_virtual_tokens=6),
    )
    model = PromptTuning().build(spec, build_tiny_model(cfg, tokenizer, seed=0))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "prompt_encoder.default.embedding.weight"
    ]
    init_from_text(model, tokenizer, "今天天气")
    words = model.get_input_embeddings()(torch.tensor(init_token_ids(tokenizer, "今天天气", 6)))
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, words)


def test_adapter_base_dir_from_forgeflow_json(tmp_path):
    from trainers.modeling import adapter_base_dir

    model_dir = tmp_path / "model"
    assert adapter_base_dir(model_dir, {"adapter_base": {"dir": "base"}}) == model_dir / "base"
    (tmp_path / "kept-base").mkdir()
    kept = {"base_model": str(tmp_path / "kept-base"), "spec": {"base_model": "models:/x/latest"}}
    assert adapter_base_dir(model_dir, kept) == tmp_path / "kept-base"  # the pinned reference wins
    with pytest.raises(FileNotFoundError, match="names no stored base model"):
        adapter_base_dir(model_dir, {"base_model": "tiny", "spec": {"base_model": "tiny"}})


# ---------------------------------------------------------------- DPO config


def test_dpo_config_keeps_the_engine_arguments(tmp_path):
    from trainers.method_dpo import dpo_config
    from trainers.train import training_arguments

    hp = HyperParams(
        learning_rate=3e-5, seed=7, batch_size=4, max_seq_length=96, dpo_beta=0.3, dpo_loss_type="ipo"
    )
    args = training_arguments(hp, tmp_path)
    cfg = dpo_config(args, hp)
    assert cfg.beta == 0.3 and cfg.loss_type == ["ipo"] and cfg.max_length == 96
    assert cfg.learning_rate == 3e-5 and cfg.seed == 7 and cfg.per_device_train_batch_size == 4
    # TRL's own defaults (checkpointing on, bf16 on) do not override the engine's
    assert cfg.gradient_checkpointing is False and cfg.report_to == [] and cfg.bf16 == args.bf16
    assert cfg.lr_scheduler_type.value == "cosine_with_min_lr" and cfg.output_dir == str(tmp_path)


# ---------------------------------------------------------------- distillation rules


def test_language_of_and_repeat_ratio():
    from trainers.method_distill import language_of, repeat_ratio

    assert language_of("中国的首都是北京。") == "zh"
    assert language_of("用Python写一个排序函数") == "zh"  # Chinese with an English term
    assert language_of("The capital of China is Beijing.") == "en"
    assert language_of("こんにちは、世界") == "other" and language_of("12345") == "other"
    assert repeat_ratio("春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。") == 0.0
    assert repeat_ratio("好的" * 50) > 0.9
    assert repeat_ratio("short") == 0.0


@pytest.mark.parametrize(
    ("question", "text", "finish", "rules", "reason"),
    [
        ("一加一？", "一加一等于二。", "stop", {}, None),
        ("一加一？", "  \n", "stop", {}, "empty"),
        ("一加一？", "一加一等于", "length", {}, "truncated"),
        ("一加一？", "一加一等于", "length", {"reject_truncated": False}, None),
        ("一加一？", "二", "stop", {"min_chars": 2}, "too_short"),
        ("一加一？", "二" * 30, "stop", {"max_chars": 20, "max_repeat_ratio": 1}, "too_long"),
        ("一加一？", "抱歉，我无法回答这个问题。", "stop", {}, "refusal"),
        ("1+1?", "I'm sorry, but I can't help with that.", "stop", {}, "refusal"),
        ("1+1?", "As an AI language model, I think 2.", "stop", {}, "refusal"),
        ("1+1?", "Two.", "stop", {"refusal_patterns": []}, None),
        ("一加一？", "等于二等于二等于二等于二等于二等于二等于二等于二", "stop", {}, "repetitive"),
        ("一加一？", "It is two.", "stop", {"match_language": True}, "language_mismatch"),
        ("一加一？", "It is two.", "stop", {}, None),
    ],
)
def test_check_answer(question, text, finish, rules, reason):
    from trainers.method_distill import REASONS, check_answer

    assert check_answer(question, Completion(text, finish), AnswerRules(**rules)) == reason
    assert reason is None or reason in REASONS


def test_teacher_metrics_report_every_reason():
    from trainers.method_distill import REASONS, teacher_metrics

    m = teacher_metrics({"questions": 10, "records": 7, "rejected_by_reason": {"refusal": 2, "empty": 1}})
    assert m["teacher_accepted"] == 7 and m["teacher_rejected"] == 3 and m["teacher_accept_ratio"] == 0.7
    assert m["teacher_rejected_refusal"] == 2 and m["teacher_rejected_truncated"] == 0
    assert all(f"teacher_rejected_{r}" in m for r in REASONS)


def test_complete_choice_returns_the_finish_reason():
    import trainers.evaluate as ev

    def handler(request):
        body = {"choices": [{"message": {"content": "答"}, "finish_reason": "length"}]}
        return httpx.Response(200, json=body)

    http = httpx.Client(transport=httpx.MockTransport(handler))
    assert ev.complete_choice(http, "http://x/v1/chat/completions", {}) == Completion("答", "length")
    no_reason = httpx.Client(
        transport=httpx.MockTransport(
            lambda r: httpx.Response(200, json={"choices": [{"message": {"content": None}}]})
        )
    )
    assert ev.complete_choice(no_reason, "http://x", {}) == Completion("", None)


# ---------------------------------------------------------------- spec validation


def _train(**kw) -> TrainSpec:
    return TrainSpec(run_key="t", train_uri="file:///d", output_uri="file:///o", **kw)


def test_distill_spec_needs_a_teacher_and_masks_its_key():
    with pytest.raises(ValidationError, match="method distill needs a teacher"):
        _train(method="distill")
    with pytest.raises(ValidationError, match="api_key: a key is never written into a spec"):
        _train(method="distill", teacher={"base_url": "http://t/v1", "model": "big", "api_key": "sk-1"})
    spec = _train(method="distill", teacher={"base_url": "http://t/v1", "model": "big", "api_key_env": "K1"})
    assert spec.distill.generation.max_tokens == 512 and spec.distill.student == "full"
    assert spec.redacted()["teacher"]["api_key_env"] == "K1"
    with pytest.raises(KeyMissing, match="environment variable K1"):
        spec.teacher.bearer_key()
    conn = _train(
        method="distill", teacher={"base_url": "http://t/v1", "model": "big", "api_key_conn_id": "my-llm"}
    )
    assert conn.teacher.api_key_env == "FORGEFLOW_KEY_MY_LLM"
    # a spec written before keys left specs (masked or null) still loads, without the key
    assert _train(
        method="distill", teacher={"base_url": "http://t/v1", "model": "b", "api_key": "***"}
    ).teacher
    assert _train(method="sft_full").redacted()["teacher"] is None
    with pytest.raises(ValidationError, match="merge_lora=false keeps only the adapter"):
        _train(
            method="distill",
            teacher={"base_url": "http://t/v1", "model": "m"},
            distill={"student": "lora"},
            merge_lora=False,
        )


def test_answer_rules_and_prompt_tuning_hyperparams_are_validated():
    with pytest.raises(
        ValidationError, match="refusal pattern '\\(unclosed' is not a valid regular expression"
    ):
        AnswerRules(refusal_patterns=["(unclosed"])
    with pytest.raises(ValidationError, match=r"min_chars \(10\) is larger than max_chars \(5\)"):
        AnswerRules(min_chars=10, max_chars=5)
    with pytest.raises(ValidationError, match="prompt_tuning_init 'text' needs prompt_tuning_init_text"):
        HyperParams(prompt_tuning_init="text")
    with pytest.raises(ValidationError):
        HyperParams(num_virtual_tokens=0)
    with pytest.raises(ValidationError):
        HyperParams(dpo_beta=0)
    hp = HyperParams()
    assert (hp.num_virtual_tokens, hp.dpo_beta, hp.dpo_loss_type, hp.prompt_tuning_init) == (
        20,
        0.1,
        "sigmoid",
        "random",
    )


# ---------------------------------------------------------------- step logger


def test_step_logger_logs_method_metrics_and_skips_perplexity_for_pairwise():
    from transformers import TrainerState

    from trainers.tracking import MlflowStepLogger

    class Client:
        def __init__(self):
            self.logged: dict[str, float] = {}

        def log_batch(self, run_id, metrics, synchronous):
            self.logged.update({m.key: m.value for m in metrics})

    state = TrainerState()
    state.global_step = 3
    logs = {
        "loss": 0.5,
        "rewards/accuracies": 0.75,
        "logits/chosen": 1.0,
        "eval_loss": 0.6,
        "eval_accuracy": 0.8,
    }
    pairwise = Client()
    MlflowStepLogger(pairwise, "r", ("rewards/", "eval_accuracy"), with_perplexity=False).on_log(
        None, state, None, logs
    )
    assert pairwise.logged == {
        "loss": 0.5,
        "rewards/accuracies": 0.75,
        "eval_loss": 0.6,
        "eval_accuracy": 0.8,
    }
    lm = Client()
    MlflowStepLogger(lm, "r").on_log(None, state, None, logs)
    assert set(lm.logged) == {"loss", "eval_loss", "perplexity"}
