"""Every saved recipe runs end to end on a small mixed frame: counts reconcile and nothing is lost.

Catches what validating the YAML cannot: operator combinations that fail at run time, and plans that grow
too large to optimise (a fused segment once spent minutes in Catalyst before reading a row)."""

from __future__ import annotations

import time

import pytest
from pyspark.sql import SparkSession

from spark_ops.canonical import schema
from spark_ops.operators import OperatorContext, build_operators
from spark_ops.pipeline import run_operators
from tasks.recipes import load_recipe, recipe_names

TEXTS = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。白日依山尽，黄河入海流。欲穷千里目，更上一层楼。" * 2,
    "<p>The quick brown fox &amp; the lazy dog</p> jumps over the fence again and again, said the farmer.",
    "联系电话 13812345678，邮箱 zhang.san@example.com，身份证 11010519491231002X。" * 2,
    "Ｆｕｌｌ－ｗｉｄｔｈ　ｔｅｘｔ ①第一 ②第二 with emoji 😀 and symbols ■◆ 2023年5月1日",
    "重复的行\n重复的行\n重复的行\n重复的行\n重复的行",
    "",
    "Copyright © 2020 All rights reserved\nReal content line that should stay in the record.",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。白日依山尽，黄河入海流。欲穷千里目，更上一层楼。" * 2,
]
SFT_RECIPES = {"sft_clean"}
# A generous bound on one recipe over a handful of records on one core: a planning blow-up takes minutes.
BUDGET_S = 240


@pytest.mark.parametrize("name", recipe_names())
def test_saved_recipe_runs(spark: SparkSession, name: str) -> None:
    usage = "sft" if name in SFT_RECIPES else "pretrain"
    if usage == "sft":
        rows = [(f"id{i}", None, [t or "问题"], t, ("src", [])) for i, t in enumerate(TEXTS)]
    else:
        rows = [(f"id{i}", t, ("src", [])) for i, t in enumerate(TEXTS)]
    df = spark.createDataFrame(rows, schema(usage))
    ops = build_operators(load_recipe(name), usage)
    started = time.monotonic()
    res = run_operators(df, ops, OperatorContext(usage=usage))
    out = res.df.count()
    assert time.monotonic() - started < BUDGET_S, f"{name} took {time.monotonic() - started:.0f}s"
    assert out == len(TEXTS) - sum(s.dropped for s in res.steps)
    assert [s.name for s in res.steps] == [op.name for op in ops]
    for prev, nxt in zip(res.steps, res.steps[1:], strict=False):
        assert nxt.records_in == prev.kept
    res.release()
