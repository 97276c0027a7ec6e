"""``Operator.fusable`` is declared by hand; this checks every registered operator against its real plan.

A step whose plan holds a Python or Arrow UDF must not fuse with its neighbours: Catalyst's projection
collapsing around Python UDFs grows exponentially with the fused depth (the web_text recipe once sat in
planning for minutes because clean_html's pandas UDF fused with seven other steps). A step without one
should fuse, or it pays a pass of its own for nothing."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from spark_ops.canonical import schema
from spark_ops.operators import OperatorContext
from spark_ops.operators.base import OPERATORS, Operator

PYTHON_NODES = ("ArrowEvalPython", "BatchEvalPython", "MapInArrow", "MapInPandas", "FlatMapGroupsInPandas")

# Params for operators without usable defaults, and variants that switch a Python path on or off.
VARIANTS: dict[str, list[dict]] = {
    "add_tags": [{"tags": ["domain:law"]}],
    "regex_filter": [{"patterns": ["广告"]}],
    "regex_replace": [{"rules": [{"pattern": "（完）$", "replacement": ""}]}],
    "clean_html": [{"entities": "full"}, {"entities": "common"}, {"entities": "none"}],
    "normalize": [{}, {"unicode_form": "NFKC"}, {"unicode_form": "none"}],
}
# decontaminate needs evaluation sets on disk and is not row-local (covered in test_privacy_dedupe);
# perplexity_filter needs a trained model file (its plan is checked in test_perplexity).
SKIP = {"decontaminate", "perplexity_filter"}


def _cases() -> list[tuple[str, dict]]:
    return [
        (name, params)
        for name in sorted(OPERATORS)
        if name not in SKIP
        for params in VARIANTS.get(name, [{}])
    ]


def _has_python(plan: str) -> bool:
    return any(node in plan for node in PYTHON_NODES)


@pytest.mark.parametrize(("name", "params"), _cases(), ids=lambda v: v if isinstance(v, str) else repr(v))
def test_fusable_matches_the_plan(spark: SparkSession, name: str, params: dict) -> None:
    op: Operator = OPERATORS[name](OPERATORS[name].Params(**params))
    if not op.row_local:
        assert not op.fusable, f"{name} is not row-local but claims to fuse"
        return
    df = spark.createDataFrame([("id0", "<p>text &amp; 2024年1月2日</p>", ("src", []))], schema("pretrain"))
    plan = op.annotate(df, OperatorContext(usage="pretrain"))._jdf.queryExecution().optimizedPlan().toString()
    assert op.fusable != _has_python(plan), (
        f"{name} {params}: fusable={op.fusable} but its plan "
        f"{'holds' if _has_python(plan) else 'has no'} Python UDF"
    )
