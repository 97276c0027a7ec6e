"""Quality report statistics, the HTML charts, the expectation suites per usage and the quality engine."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_ops.canonical import schema
from spark_ops.expectations import SuiteError, load_suite, suite_parameters, validate_version
from spark_ops.quality import approx_tokens, quality_report
from tasks.pii import gate_patterns, id18_valid
from tasks.quality import QualityBlocked, gate, require_publishable


def _id_card() -> str:
    base = "11010519491231002"
    return next(base + c for c in "0123456789X" if id18_valid(base + c))


ID_CARD = _id_card()


def write_version(spark: SparkSession, root: Path, usage: str, rows: list[dict[str, Any]]) -> Path:
    """A version directory as the process engine leaves it: data/*.parquet + manifest.json."""
    cols = [f.name for f in schema(usage).fields]
    full = [tuple(r.get(c, {"source": "t", "tags": []} if c == "meta" else None) for c in cols) for r in rows]
    spark.createDataFrame(full, schema(usage)).coalesce(1).write.parquet(str(root / "data"))
    (root / "manifest.json").write_text(json.dumps({"usage": usage, "records_out": len(rows)}))
    return root


def sft(i: int, context: list[str], target: str | None, system: str | None = None) -> dict[str, Any]:
    return {"id": f"r{i}", "system": system, "context": context, "target": target}


SFT_ROWS = [
    sft(1, ["你好世界"], "你好"),
    sft(2, ["What is 2+2?"], "4"),
    sft(3, ["q", " ", "q2"], "   ", system=f"客服工号 {ID_CARD}"),
    sft(4, ["what  is 2+2?"], "4"),  # a duplicate of r2 after normalisation
    sft(5, [], ""),
    sft(6, ["联系"], "call 13812345678 or mail a.b@example.com"),
    sft(7, ["你好世界"], "你好"),  # an exact copy of r1
]


def nearest_rank(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[max(math.ceil(q * len(s)) - 1, 0)]


def power_of_two_histogram(values: list[int]) -> list[dict[str, Any]]:
    def bucket(v: int) -> tuple[int, int]:
        if v == 0:
            return 0, 1
        lo = 1
        while lo * 2 <= v:
            lo *= 2
        return lo, lo * 2

    counts: dict[tuple[int, int], int] = {}
    for v in values:
        counts[bucket(v)] = counts.get(bucket(v), 0) + 1
    lo, hi = min(counts), max(counts)
    out, b = [], lo
    while b <= hi:
        out.append({"lo": b[0], "hi": b[1], "count": counts.get(b, 0)})
        b = (1, 2) if b == (0, 1) else (b[1], b[1] * 2)
    return out


@pytest.fixture(scope="module")
def sft_report(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sft")
    version = write_version(spark, root / "v1", "sft", SFT_ROWS)
    return quality_report(spark, str(version), "sft", str(root / "report"), examples=3)


def test_statistics_are_exact_on_a_known_set(sft_report: dict[str, Any]) -> None:
    r = sft_report
    assert r["records"] == 7
    target_chars = [len(row["target"] or "") for row in SFT_ROWS]
    context_chars = [sum(len(t) for t in row["context"]) for row in SFT_ROWS]
    for col, values in (("target", target_chars), ("context", context_chars)):
        d = r["lengths"][col]["chars"]
        assert (d["min"], d["max"], d["sum"]) == (min(values), max(values), sum(values))
        assert [d["p50"], d["p90"], d["p99"]] == [nearest_rank(values, q) for q in (0.5, 0.9, 0.99)]
        assert d["histogram"] == power_of_two_histogram(values)
    record = [a + b for a, b in zip(target_chars, context_chars, strict=True)]
    assert r["lengths"]["record"]["chars"]["sum"] == sum(record) == r["chars"]

    # approximate tokens: CJK characters one each, other words one each
    assert [approx_tokens(row["target"] or "") for row in SFT_ROWS] == [2, 1, 0, 1, 0, 8, 2]
    target_tokens = r["lengths"]["target"]["tokens"]
    assert (target_tokens["sum"], target_tokens["max"]) == (14, 8)
    assert r["lengths"]["context"]["tokens"]["sum"] == 4 + 4 + 2 + 4 + 0 + 2 + 4
    assert r["tokens"] == 14 + 20
    assert r["tokenizer"]["kind"] == "approximate"

    assert r["languages"] == {
        "zh": {"count": 2, "share": round(2 / 7, 6)},
        "en": {"count": 4, "share": round(4 / 7, 6)},
        "other": {"count": 1, "share": round(1 / 7, 6)},
    }
    ctx = r["items"]["context"]
    assert [(h["value"], h["count"]) for h in ctx["histogram"]] == [(0, 1), (1, 5), (2, 0), (3, 1)]
    assert ctx["blank_items"] == 1

    assert r["empty"]["target"] == {
        "missing": 0,
        "empty": 1,
        "blank": 1,
        "total": 2,
        "share": round(2 / 7, 6),
    }
    assert r["empty"]["context"]["empty"] == 1 and r["empty"]["context"]["blank"] == 0
    assert r["empty"]["system"]["missing"] == 6


def test_duplicates_counted_with_the_normalised_key(sft_report: dict[str, Any]) -> None:
    d = sft_report["duplicates"]
    assert (d["count"], d["groups"]) == (2, 2)
    assert d["share"] == round(2 / 7, 6)
    assert sorted(tuple(e["ids"]) for e in d["examples"]) == [("r1", "r7"), ("r2", "r4")]


def test_pii_left_counted_per_type_and_column(sft_report: dict[str, Any]) -> None:
    p = sft_report["pii_left"]
    assert p["total"] == 3 and p["records"] == 2
    assert {t: (v["count"], v["records"], v["examples"]) for t, v in p["by_type"].items()} == {
        "phone": (1, 1, ["r6"]),
        "email": (1, 1, ["r6"]),
        "id_card": (1, 1, ["r3"]),
    }
    assert p["by_column"]["target"] == {"phone": 1, "email": 1}
    assert p["by_column"]["system"] == {"id_card": 1}
    assert p["by_column"]["context"] == {}


def test_report_files_and_html_charts(sft_report: dict[str, Any]) -> None:
    html_path = Path(sft_report["files"]["html"].removeprefix("file://"))
    json_path = Path(sft_report["files"]["json"].removeprefix("file://"))
    assert json.loads(json_path.read_text())["records"] == 7
    html = html_path.read_text()
    assert (
        html.startswith("<!DOCTYPE html>")
        and "<script" not in html
        and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    charts = dict(re.findall(r'<svg class="chart" data-chart="([^"]+)"(.*?)</svg>', html, re.S))
    assert {"target-chars", "target-tokens", "context-chars", "record-tokens", "context-items"} <= set(charts)
    assert {"languages", "pii", "empty"} <= set(charts)
    assert charts["target-chars"].count('<rect class="bar"') == len(
        sft_report["lengths"]["target"]["chars"]["histogram"]
    )
    assert charts["pii"].count('<rect class="bar"') == 3
    assert "13812345678" not in html  # the report names records, it does not repeat their personal data


def test_tokenizer_counts_with_the_tokenizers_library(spark: SparkSession, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(["a-b c hello world"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    rows = [
        {"id": "p1", "text": "a-b c"},
        {"id": "p2", "text": "hello unseen world"},
        {"id": "p3", "text": ""},
    ]
    version = write_version(spark, tmp_path / "v", "pretrain", rows)
    r = quality_report(
        spark, str(version), "pretrain", str(tmp_path / "out"), tokenizer=str(tmp_path / "tok")
    )
    assert r["tokenizer"]["kind"] == "tokenizers"
    assert r["lengths"]["text"]["tokens"]["sum"] == 2 + 3 + 0  # whitespace pieces; approximation says 3 + 3
    assert r["lengths"]["text"]["tokens"]["max"] == 3


def test_bad_tokenizer_is_a_clear_error(spark: SparkSession, tmp_path: Path) -> None:
    from spark_ops.quality import QualityError

    version = write_version(spark, tmp_path / "v", "pretrain", [{"id": "p1", "text": "x"}])
    (tmp_path / "tok").mkdir()
    with pytest.raises(QualityError, match="no tokenizer.json"):
        quality_report(spark, str(version), "pretrain", str(tmp_path / "o"), tokenizer=str(tmp_path / "tok"))
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    with pytest.raises(QualityError, match="not a tokenizers JSON"):
        quality_report(spark, str(version), "pretrain", str(tmp_path / "o"), tokenizer=str(tmp_path / "tok"))


# ----------------------------------------------------------------------------------- expectation suites


def test_shipped_suites_use_the_desensitize_patterns() -> None:
    required = {"phone", "id_card", "email", "bank_card"}
    patterns = set(gate_patterns(tuple(required)))  # regenerate the suites' lists from tasks.pii.gate_patterns
    for usage in ("pretrain", "sft", "model_test", "rl", "reward_model"):
        suite = load_suite(usage)
        pii = [
            e for e in suite["expectations"] if e["type"] == "expect_column_values_to_not_match_regex_list"
        ]
        assert pii, usage
        for e in pii:
            assert set(e["kwargs"]["regex_list"]) == patterns, (usage, e["kwargs"]["column"])
        assert any(e["type"] == "expect_column_values_to_be_unique" for e in suite["expectations"])
        assert any(e["type"] == "expect_table_columns_to_match_set" for e in suite["expectations"])
        suite_parameters(suite)  # every parameter has a default


def test_suite_parameter_overrides_are_checked() -> None:
    suite = load_suite("sft")
    assert suite_parameters(suite, {"target_max_chars": 10})["target_max_chars"] == 10
    with pytest.raises(SuiteError, match="no parameter.*target_max_char.*it has: context_max_chars"):
        suite_parameters(suite, {"target_max_char": 10})


def test_suite_file_errors_name_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text(
        '{"expectations": [{"type": "expect_column_values_to_be_between", '
        '"kwargs": {"column": "x", "max_value": {"$PARAMETER": "hi"}}}]}'
    )
    with pytest.raises(SuiteError, match=r"expectations\[0\].*hi.*no default"):
        load_suite("sft", bad)
    bad.write_text('{"expectations": [\n{"type": }]}')
    with pytest.raises(SuiteError, match="line 2"):
        load_suite("sft", bad)


def _by_title(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["title"]: e for e in result["expectations"]}


def test_pii_left_fails_the_suite_and_blocks_publication(spark: SparkSession, tmp_path: Path) -> None:
    rows = [
        sft(1, ["你好"], "您好，有什么可以帮您？"),
        sft(2, ["电话多少"], "请拨打13812345678"),
        sft(3, ["hi"], "hello"),
    ]
    version = write_version(spark, tmp_path / "v", "sft", rows)
    result = validate_version(spark, str(version), "sft", examples=3)
    assert result["success"] is False
    failed = [e for e in result["expectations"] if not e["success"]]
    assert [(e["name"], e["column"], e["unexpected_count"], e["examples"]) for e in failed] == [
        ("expect_column_values_to_not_match_regex_list", "target", 1, ["r2"])
    ]
    assert "13812345678" not in json.dumps(result)  # ids, never the text

    quality = {"validation": result}
    decision = gate(quality, None, "alice")
    assert decision["allowed"] is False and decision["override"] is None
    with pytest.raises(QualityBlocked, match=r"no personal data .* left in target.*1 unexpected.*r2"):
        require_publishable(quality, "  ", "alice")
    decision = require_publishable(quality, "phone is the public hotline", "alice")
    assert decision["allowed"] is True
    assert decision["override"]["reason"] == "phone is the public hotline"
    assert decision["override"]["user"] == "alice" and decision["override"]["at"]


def test_length_bounds_are_parameters(spark: SparkSession, tmp_path: Path) -> None:
    rows = [sft(1, ["q"], "a" * 20), sft(2, ["q"], "short")]
    version = write_version(spark, tmp_path / "v", "sft", rows)
    suite = load_suite("sft")
    result = validate_version(spark, str(version), "sft", suite, {"target_max_chars": 10}, examples=3)
    bound = _by_title(result)["target length within bounds (characters)"]
    assert (bound["success"], bound["unexpected_count"], bound["examples"]) == (False, 1, ["r1"])
    assert result["parameters"]["target_max_chars"] == 10
    assert result["failed"] == 1


CLEAN = {
    "pretrain": [{"id": "p1", "text": "一段干净的文本。"}, {"id": "p2", "text": "A clean document."}],
    "sft": [sft(1, ["你好"], "你好！"), sft(2, ["Hi", "Hello", "How are you?"], "Fine.", system="Be brief.")],
    "model_test": [sft(1, ["1+1=?"], "2")],
    "rl": [sft(1, ["写一首诗"], None), sft(2, ["Say hi"], "hi")],
    "reward_model": [
        {
            "id": "m1",
            "context": ["Best fruit?"],
            "answers": [
                {"text": "Apple", "score": 0.9, "rank": 1},
                {"text": "Stone", "score": 0.1, "rank": 2},
            ],
        }
    ],
}


@pytest.mark.parametrize("usage", sorted(CLEAN))
def test_each_usage_suite_passes_a_clean_version(spark: SparkSession, tmp_path: Path, usage: str) -> None:
    version = write_version(spark, tmp_path / "v", usage, CLEAN[usage])
    result = validate_version(spark, str(version), usage)
    assert result["success"], [e for e in result["expectations"] if not e["success"]]
    assert result["evaluated"] == len(load_suite(usage)["expectations"])
    assert all(e["error"] is None for e in result["expectations"])


def test_reward_model_suite_checks_answers(spark: SparkSession, tmp_path: Path) -> None:
    rows = [
        {"id": "m1", "context": ["q"], "answers": [{"text": "a", "score": 1.0, "rank": 1}]},
        {
            "id": "m2",
            "context": ["q"],
            "answers": [{"text": " ", "score": 1.0, "rank": 1}, {"text": "b", "score": 0.5, "rank": 1}],
        },
    ]
    version = write_version(spark, tmp_path / "v", "reward_model", rows)
    result = _by_title(validate_version(spark, str(version), "reward_model", examples=3))
    assert result["answers per record within bounds"]["examples"] == ["m1"]
    assert result["no blank answer"]["examples"] == ["m2"]
    assert result["answer ranks are 1..n, each once"]["examples"] == ["m2"]


def test_schema_and_unique_id(spark: SparkSession, tmp_path: Path) -> None:
    rows = [sft(1, ["q"], "a"), sft(1, ["q2"], "b")]
    version = write_version(spark, tmp_path / "v", "sft", rows)
    result = _by_title(validate_version(spark, str(version), "sft", examples=3))
    assert result["unique id"]["success"] is False and result["unique id"]["examples"] == ["r1"]
    assert (
        result["schema: exactly the canonical sft columns"]["success"] is True
    )  # derived columns not counted
    # the sft suite on pretrain records: the schema expectations fail, naming what is there
    pre = write_version(spark, tmp_path / "p", "pretrain", [{"id": "p1", "text": "x"}])
    schema_check = _by_title(validate_version(spark, str(pre), "sft"))[
        "schema: exactly the canonical sft columns"
    ]
    assert schema_check["success"] is False and schema_check["observed"] == [
        "id",
        "meta",
        "meta.source",
        "meta.tags",
        "text",
    ]


# ----------------------------------------------------------------------------------------------- engine


def test_engine_writes_result_and_report(spark: SparkSession, tmp_path: Path, ff_home: Path) -> None:
    from spark_ops.quality import main
    from tasks.specs import QualitySpec

    version = write_version(spark, tmp_path / "v", "sft", SFT_ROWS[:2])
    spec = QualitySpec(
        run_key="q1",
        version_uri=str(version),
        usage="sft",
        out_uri=str(tmp_path / "quality"),
        suite_parameters={"target_max_chars": 100},
    )
    spec_path = tmp_path / "spec" / "spec.json"
    spec_path.parent.mkdir()
    spec_path.write_text(spec.model_dump_json())
    assert main([str(spec_path)]) == 0
    result = json.loads((tmp_path / "spec" / "result.json").read_text())
    assert result["status"] == "success"
    assert result["validation"]["success"] is True
    assert result["summary"]["records"] == 2
    assert result["html_uri"].endswith("/quality/report.html")
    assert (tmp_path / "quality" / "report.html").is_file()
    assert gate(result, None, None)["allowed"] is True

    # a usage that does not match the version fails before any work, with the reason in result.json
    spec_path.write_text(
        spec.model_copy(update={"usage": "pretrain", "suite_parameters": {}}).model_dump_json()
    )
    assert main([str(spec_path)]) == 1
    result = json.loads((tmp_path / "spec" / "result.json").read_text())
    assert "is a sft version, not pretrain" in result["error"]
