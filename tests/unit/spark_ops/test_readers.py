"""Readers: every format onto the canonical schema, bad records to the quarantine with line and reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_ops.readers import Import, ReaderError, read_inputs, resolve_input
from tasks.specs import InputSource, Usage
from tests.unit.spark_ops.conftest import write_jsonl


def load(spark: SparkSession, path: Path, usage: Usage, **source: Any) -> Import:
    resolved = resolve_input(InputSource(uri=str(path), **source), usage, 0)
    return read_inputs(spark, [resolved], usage)


def records(imp: Import) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in imp.accepted.orderBy("_pos").drop("_pos").collect()]


def rejects(imp: Import) -> list[tuple[int | None, str]]:
    return [(r["line"], r["reason"]) for r in imp.quarantine.orderBy("line").collect()]


def test_jsonl_pretrain_with_bom_blank_and_bad_lines(spark: SparkSession, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"text": "first"},
            "",
            '{"text": broken',
            {"text": 3},
            {"body": "x"},
            '["a"]',
            {"text": "  "},
            {"text": ["a", "b"]},
        ],
        bom=True,
    )
    imp = load(spark, path, "pretrain")
    assert [r["text"] for r in records(imp)] == ["first", "a\nb"]
    assert rejects(imp) == [
        (3, "not valid JSON"),
        (4, "wrong type of field text: expected a string or a list of strings, got number"),
        (5, "missing required field text"),
        (6, "record is a JSON array, expected an object"),
        (7, "empty text"),
    ]
    assert imp.records_in == 7 and imp.accepted_count == 2 and imp.quarantined == 5
    q = imp.quarantine.orderBy("line").first()
    assert q["source_file"] == str(path) and q["raw"] == '{"text": broken'
    meta = records(imp)[0]["meta"]
    assert meta == {"source": "docs.jsonl", "tags": []}


def test_ids_are_stable_content_hashes(spark: SparkSession, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "same"}, {"text": "same"}, {"text": "other"}])
    ids = [r["id"] for r in records(load(spark, path, "pretrain", source="wiki"))]
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) == 32
    assert records(load(spark, path, "pretrain"))[0]["id"] == ids[0]


def test_an_input_of_only_empty_files_fails_before_spark(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ReaderError, match=r"holds only empty files .*: empty.jsonl"):
        resolve_input(InputSource(uri=str(path)), "pretrain", 0)


def test_json_array_uses_record_numbers(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "sft.json"
    data = [
        {"context": "q1", "target": "a1"},
        5,
        {"context": ["q", "a", "q2"], "target": "a2", "system": "s"},
    ]
    path.write_text("\ufeff" + json.dumps(data), encoding="utf-8")
    imp = load(spark, path, "sft")
    assert [(r["system"], r["context"], r["target"]) for r in records(imp)] == [
        (None, ["q1"], "a1"),
        ("s", ["q", "a", "q2"], "a2"),
    ]
    assert rejects(imp) == [(2, "record is a JSON number, expected an object")]


def test_corrupt_json_array_is_one_quarantined_record(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"text": "a"}, {"text": ')
    imp = load(spark, path, "pretrain")
    assert imp.records_in == 1 and imp.quarantined == 1
    assert "not a valid JSON array" in rejects(imp)[0][1]


def test_json_lines_in_a_json_file(spark: SparkSession, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lines.json", [{"text": "a"}, {"text": "b"}])
    assert [r["text"] for r in records(load(spark, path, "pretrain", format="json"))] == ["a", "b"]


def test_context_must_end_with_a_user_turn(spark: SparkSession, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"context": ["q", "a"], "target": "x"}, {"context": "q", "target": ""}]
    )
    assert [reason for _, reason in rejects(load(spark, path, "sft"))] == [
        "field context holds 2 turns; it must alternate user/assistant turns and end with a user turn (an odd count)",
        "empty target",
    ]


def test_csv_with_bom_field_map_and_multiline_field(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text('\ufeffquestion,answer\nq1,a1\n"q2\nmore",a2\nq3,\n', encoding="utf-8")
    imp = load(spark, path, "model_test", field_map={"context": "question", "target": "answer"})
    assert [(r["context"], r["target"]) for r in records(imp)] == [(["q1"], "a1"), (["q2\nmore"], "a2")]
    assert rejects(imp) == [(4, "missing required field answer")]


def test_header_only_csv_has_no_records(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("context,target\n")
    assert load(spark, path, "sft", format="csv").records_in == 0


def test_parquet_round_trip(spark: SparkSession, tmp_path: Path) -> None:
    src = spark.createDataFrame([("t1",), ("t2",), (None,)], "text string")
    src.coalesce(1).write.parquet(str(tmp_path / "pq"))
    imp = load(spark, tmp_path / "pq", "pretrain", format="parquet")
    assert sorted(r["text"] for r in records(imp)) == ["t1", "t2"]
    assert rejects(imp) == [(3, "missing required field text")]


def test_txt_one_document_per_line(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "wiki.txt"
    path.write_text("\ufeffdoc one\n\ndoc two\n", encoding="utf-8")
    imp = load(spark, path, "pretrain", source="wiki")
    assert [(r["text"], r["meta"]["source"]) for r in records(imp)] == [
        ("doc one", "wiki"),
        ("doc two", "wiki"),
    ]
    assert imp.accepted.orderBy("_pos").collect()[1]["_pos"]["line"] == 3


def test_alpaca(spark: SparkSession, tmp_path: Path) -> None:
    data = [
        {"instruction": "translate", "input": "hello", "output": "你好"},
        {"instruction": "q2", "input": "", "output": "a2", "system": "be brief", "history": [["q0", "a0"]]},
        {"instruction": "q3", "input": "", "output": ""},
        {"instruction": "q4", "output": "a4", "history": ["bad"]},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    imp = load(spark, path, "sft", format="alpaca")
    assert [(r["system"], r["context"], r["target"]) for r in records(imp)] == [
        (None, ["translate\nhello"], "你好"),
        ("be brief", ["q0", "a0", "q2"], "a2"),
    ]
    assert rejects(imp) == [
        (3, "empty output"),
        (4, "wrong type of field history: expected a list of [instruction, response] pairs"),
    ]


def test_sharegpt(spark: SparkSession, tmp_path: Path) -> None:
    turns = [
        {
            "conversations": [
                {"from": "system", "value": "sys"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "yo"},
            ]
        },
        {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q again"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 1}]},
        {"conversations": [{"from": "human", "value": "q"}]},
        {"conversations": "nope"},
    ]
    imp = load(spark, write_jsonl(tmp_path / "sg.jsonl", turns), "sft", format="sharegpt")
    assert [(r["system"], r["context"], r["target"]) for r in records(imp)] == [("sys", ["hi"], "yo")]
    assert rejects(imp) == [
        (2, "turn 2 of conversations: from 'human' where gpt or assistant was expected"),
        (3, "turn 2 of conversations: value must be a string"),
        (4, "field conversations must end with an assistant turn (the target)"),
        (5, "wrong type of field conversations: expected a list of {from, value} objects, got string"),
    ]


def test_openai_messages(spark: SparkSession, tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"},
            ]
        },
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
    ]
    imp = load(spark, write_jsonl(tmp_path / "oa.jsonl", rows), "sft", format="openai")
    assert [(r["context"], r["target"]) for r in records(imp)] == [(["q1", "a1", "q2"], "a2")]
    assert rejects(imp) == [(2, "empty target (the last assistant turn)")]


def test_field_map_joins_lists(spark: SparkSession, tmp_path: Path) -> None:
    poems = [{"author": "李白", "paragraphs": ["床前明月光，", "疑是地上霜。"], "title": "靜夜思"}]
    path = tmp_path / "poet.tang.0.json"
    path.write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    imp = load(spark, path, "pretrain", field_map={"text": "paragraphs"})
    assert records(imp)[0]["text"] == "床前明月光，\n疑是地上霜。"


def test_multiple_inputs_keep_their_own_counts(spark: SparkSession, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}, "oops"])
    b = tmp_path / "b.txt"
    b.write_text("y\n")
    resolved = [resolve_input(InputSource(uri=str(p)), "pretrain", i) for i, p in enumerate([a, b])]
    imp = read_inputs(spark, resolved, "pretrain")
    assert [(s.records_in, s.accepted, s.quarantined, s.format) for s in imp.inputs] == [
        (2, 1, 1, "lines"),
        (1, 1, 0, "text"),
    ]


@pytest.mark.parametrize(
    ("name", "usage", "source", "message"),
    [
        ("x.xml", "pretrain", {}, "cannot tell the format of x.xml"),
        ("x.jsonl", "pretrain", {"field_map": {"question": "q"}}, "field_map key 'question' is not a field"),
        ("x.txt", "sft", {"format": "txt"}, "only makes pretrain records"),
        ("x.json", "pretrain", {"format": "alpaca"}, "usage pretrain cannot hold"),
    ],
)
def test_unusable_inputs_fail_before_spark(
    tmp_path: Path, name: str, usage: Usage, source: dict[str, Any], message: str
) -> None:
    path = tmp_path / name
    path.write_text("[]")
    with pytest.raises(ReaderError, match=message):
        resolve_input(InputSource(uri=str(path), **source), usage, 0)


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(ReaderError, match=r"inputs\[2\].*does not exist"):
        resolve_input(InputSource(uri=str(tmp_path / "nope.jsonl")), "pretrain", 2)


def test_source_ids_are_kept_only_when_asked(spark: SparkSession, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "ids.jsonl",
        [{"id": "a1", "text": "x"}, {"id": 7, "text": "y"}, {"text": "z"}, {"uid": "u", "text": "w"}],
    )
    resolved = resolve_input(InputSource(uri=str(path)), "pretrain", 0)
    assert "_source_id" not in read_inputs(spark, [resolved], "pretrain").accepted.columns
    imp = read_inputs(spark, [resolved], "pretrain", source_ids=True)
    rows = imp.accepted.orderBy("_pos").collect()
    assert [r["_source_id"] for r in rows] == ["a1", "7", None, None]
    assert all(len(r["id"]) == 32 for r in rows)  # the canonical id stays the content hash
