"""Import, format by format and bad-input class by class: records onto the canonical schemas, every bad record
in the quarantine with its line and a reason a user understands, the good records next to it kept, and
records_in == accepted + quarantined always. The samples under include/samples/ import cleanly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from spark_ops import readers
from spark_ops.readers import NOT_UTF8, Import, ReaderError, image_check, read_inputs, resolve_input
from tasks.settings import PROJECT_ROOT
from tasks.specs import InputSource, Usage

SAMPLES = PROJECT_ROOT / "include" / "samples"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
GBK = "中文问题".encode("gbk")
PRETTY = (
    "; the file looks like one JSON object spread over several lines — a JSON file must hold an array of "
    "records or one record per line"
)


def load(
    spark: SparkSession, path: Path, usage: Usage, modality: str = "text", labelled: bool = True, **src: Any
) -> Import:
    resolved = resolve_input(
        InputSource(uri=str(path), **src), usage, 0, modality=modality, labelled=labelled
    )
    imp = read_inputs(spark, [resolved], usage)
    n_accepted, n_quarantined = imp.accepted.count(), imp.quarantine.count()
    # Counts reconcile, and the counted numbers are the written ones.
    assert imp.records_in == imp.accepted_count + imp.quarantined
    assert (imp.accepted_count, imp.quarantined) == (n_accepted, n_quarantined)
    return imp


def records(imp: Import) -> list[dict[str, Any]]:
    return [
        r.asDict(recursive=True) for r in imp.accepted.orderBy("_pos").drop("_pos", "id", "meta").collect()
    ]


def rejects(imp: Import) -> list[tuple[str, int, str]]:
    rows = imp.quarantine.orderBy("source_file", "line").collect()
    return [(Path(r["source_file"]).name, r["line"], r["reason"]) for r in rows]


def jsonl(*rows: Any) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n" for r in rows
    )


# ---------------------------------------------------------------- every format


FORMATS: list[tuple[str, str, bytes, Usage, dict[str, Any], list[dict[str, Any]]]] = [
    (
        "jsonl",
        "d.jsonl",
        jsonl({"text": "一"}, {"text": "two"}),
        "pretrain",
        {},
        [{"text": "一"}, {"text": "two"}],
    ),
    (
        "json-array",
        "d.json",
        json.dumps([{"context": "q", "target": "a"}]).encode(),
        "sft",
        {},
        [{"system": None, "context": ["q"], "target": "a"}],
    ),
    ("json-lines", "d.json", jsonl({"text": "a"}), "pretrain", {"format": "json"}, [{"text": "a"}]),
    (
        "csv",
        "d.csv",
        b"context,target,system\nq,a,\n",
        "model_test",
        {},
        [{"system": None, "context": ["q"], "target": "a"}],
    ),
    ("txt", "d.txt", b"doc one\n\ndoc two\n", "pretrain", {}, [{"text": "doc one"}, {"text": "doc two"}]),
    (
        "alpaca",
        "d.json",
        json.dumps([{"instruction": "i", "input": "x", "output": "o"}]).encode(),
        "sft",
        {"format": "alpaca"},
        [{"system": None, "context": ["i\nx"], "target": "o"}],
    ),
    (
        "sharegpt",
        "d.jsonl",
        jsonl({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}),
        "sft",
        {"format": "sharegpt"},
        [{"system": None, "context": ["q"], "target": "a"}],
    ),
    (
        "openai",
        "d.jsonl",
        jsonl(
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ),
        "rl",
        {"format": "openai"},
        [{"system": "s", "context": ["q"], "target": "a"}],
    ),
    (
        "csv_qa",
        "qa.csv",
        b'Question,Answer\nq1,a1\n"q2\nmore",a2\n',
        "sft",
        {"format": "csv_qa"},
        [
            {"system": None, "context": ["q1"], "target": "a1"},
            {"system": None, "context": ["q2\nmore"], "target": "a2"},
        ],
    ),
    (
        "csv_qa-chinese-headers-bom",
        "qa.csv",
        "\ufeff问题,答案\n天空是什么颜色？,蓝色。\n".encode(),
        "model_test",
        {"format": "csv_qa"},
        [{"system": None, "context": ["天空是什么颜色？"], "target": "蓝色。"}],
    ),
    (
        "csv_qa-field-map",
        "qa.csv",
        b"ask,reply\nq,a\n",
        "sft",
        {"format": "csv_qa", "field_map": {"question": "ask", "answer": "reply"}},
        [{"system": None, "context": ["q"], "target": "a"}],
    ),
    (
        "ranking",
        "rm.jsonl",
        jsonl(
            {
                "context": "q",
                "answers": [{"text": "b", "score": 0.2, "rank": 2}, {"text": "a", "score": 0.9, "rank": 1}],
            }
        ),
        "reward_model",
        {},
        [
            {
                "system": None,
                "context": ["q"],
                "answers": [{"text": "b", "score": 0.2, "rank": 2}, {"text": "a", "score": 0.9, "rank": 1}],
            }
        ],
    ),
    (
        "preference",
        "p.jsonl",
        jsonl(
            {"prompt": "q", "chosen": "good", "rejected": "bad"},
            {
                "conversations": [{"from": "human", "value": "q2"}],
                "chosen": {"from": "gpt", "value": "g"},
                "rejected": {"from": "gpt", "value": "b"},
            },
        ),
        "reward_model",
        {"format": "preference"},
        [
            {
                "system": None,
                "context": ["q"],
                "answers": [
                    {"text": "good", "score": 1.0, "rank": 1},
                    {"text": "bad", "score": 0.0, "rank": 2},
                ],
            },
            {
                "system": None,
                "context": ["q2"],
                "answers": [{"text": "g", "score": 1.0, "rank": 1}, {"text": "b", "score": 0.0, "rank": 2}],
            },
        ],
    ),
    ("gzip-jsonl", "d.jsonl.gz", b"", "pretrain", {}, [{"text": "zipped"}]),
]


@pytest.mark.parametrize(
    ("case", "name", "content", "usage", "source", "expected"), FORMATS, ids=[f[0] for f in FORMATS]
)
def test_every_format(
    spark: SparkSession,
    tmp_path: Path,
    case: str,
    name: str,
    content: bytes,
    usage: Usage,
    source: dict[str, Any],
    expected: list[dict[str, Any]],
) -> None:
    path = tmp_path / name
    if case == "gzip-jsonl":
        import gzip

        path.write_bytes(gzip.compress(jsonl({"text": "zipped"})))
    else:
        path.write_bytes(content)
    imp = load(spark, path, usage, **source)
    assert rejects(imp) == []
    assert records(imp) == expected


def test_parquet(spark: SparkSession, tmp_path: Path) -> None:
    spark.createDataFrame([("t1",), (None,), ("t3",)], "text string").coalesce(1).write.parquet(
        str(tmp_path / "pq")
    )
    imp = load(spark, tmp_path / "pq", "pretrain")
    assert [r["text"] for r in records(imp)] == ["t1", "t3"]
    assert [(line, reason) for _, line, reason in rejects(imp)] == [(2, "missing required field text")]


def test_vision_records_resolve_and_check_their_images(spark: SparkSession, tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(PNG)
    (tmp_path / "img" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 12)
    (tmp_path / "img" / "fake.png").write_text("not an image")
    path = tmp_path / "v.jsonl"
    path.write_bytes(
        jsonl(
            {"context": "q1", "image": "img/a.png", "target": "a1"},
            {"context": "q2", "image": str(tmp_path / "img" / "b.jpg"), "target": "a2"},
            {"context": "q3", "image": "img/missing.png", "target": "a3"},
            {"context": "q4", "image": "img/fake.png", "target": "a4"},
            {"context": "q5", "target": "a5"},
            {"context": "q6", "image": "img/a.png", "target": "a6"},
            {"context": "q7", "images": ["img/a.png"], "target": "a7"},
            {"context": "q8", "images": ["img/a.png", "img/b.jpg"], "target": "a8"},
        )
    )
    imp = load(spark, path, "sft", modality="image")
    assert [(r["context"], r["image"]) for r in records(imp)] == [
        (["q1"], str(tmp_path / "img" / "a.png")),
        (["q2"], str(tmp_path / "img" / "b.jpg")),
        (["q6"], str(tmp_path / "img" / "a.png")),
        (["q7"], str(tmp_path / "img" / "a.png")),
    ]
    assert imp.accepted.columns[:5] == ["id", "system", "context", "image", "target"]
    assert rejects(imp) == [
        ("v.jsonl", 3, f"field image: image file not found: {tmp_path}/img/missing.png"),
        (
            "v.jsonl",
            4,
            f"field image: {tmp_path}/img/fake.png is not a PNG, JPEG, WebP or GIF file (by its first bytes)",
        ),
        ("v.jsonl", 5, "missing required field image"),
        ("v.jsonl", 8, "field images holds 2 images; one image per record is supported"),
    ]


def test_text_usages_keep_their_schema(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(jsonl({"context": "q", "image": "x.png", "target": "a"}))
    assert load(spark, path, "sft").accepted.columns == ["id", "system", "context", "target", "meta", "_pos"]


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        (PNG, None),
        (b"\xff\xd8\xff\xdb" + b"\x00" * 12, None),
        (b"GIF89a" + b"\x00" * 10, None),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", None),
        (b"<svg></svg>", "is not a PNG, JPEG, WebP or GIF file"),
        (b"", "is not a PNG"),
    ],
)
def test_image_magic_bytes(tmp_path: Path, head: bytes, problem: str | None) -> None:
    p = tmp_path / "x.img"
    p.write_bytes(head)
    stored, found = image_check(f"file://{p}")
    assert stored == str(p)
    assert (found is None) if problem is None else (problem in found)
    assert image_check("s3://bucket/x.png") == ("s3://bucket/x.png", None)  # remote images are not fetched
    assert "is a directory" in image_check(str(tmp_path))[1]


def test_unlabelled_questions(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_bytes(jsonl({"context": "q1"}, {"context": "q2", "target": "pre-annotated"}, {"target": "a"}))
    imp = load(spark, path, "sft", labelled=False)
    assert [(r["context"], r["target"]) for r in records(imp)] == [(["q1"], None), (["q2"], "pre-annotated")]
    assert rejects(imp) == [("u.jsonl", 3, "missing required field context")]
    # Labelled (the default), a question alone is a missing target.
    assert rejects(load(spark, path, "sft"))[0] == ("u.jsonl", 1, "missing required field target")


# ---------------------------------------------------------------- every bad-input class


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


BAD: list[tuple[str, str, bytes, Usage, dict[str, Any], int, list[tuple[int, str]]]] = [
    (
        "broken-json",
        "d.jsonl",
        jsonl({"text": "ok"}, b'{"text": "unterminated', {"text": "ok2"}),
        "pretrain",
        {},
        2,
        [(2, "not valid JSON")],
    ),
    (
        "missing-and-mistyped-fields",
        "d.jsonl",
        jsonl(
            {"context": "q", "target": "a"},
            {"context": "q"},
            {"context": "q", "target": 7},
            {"context": [1], "target": "a"},
        ),
        "sft",
        {},
        1,
        [
            (2, "missing required field target"),
            (3, "wrong type of field target: expected a string, got number"),
            (4, "wrong type of field context: expected a string or a list of strings, got array"),
        ],
    ),
    (
        "gbk-jsonl",
        "d.jsonl",
        jsonl({"text": "好"}, b'{"text": "' + GBK + b'"}', {"text": "ok"}),
        "pretrain",
        {},
        2,
        [(2, NOT_UTF8)],
    ),
    (
        "gbk-json-array",
        "d.json",
        b'[{"text": "a"},\n {"text": "' + GBK + b'"},\n {"text": "c"}]',
        "pretrain",
        {},
        2,
        [(2, NOT_UTF8)],
    ),
    ("gbk-csv", "d.csv", b"context,target\nq1,a1\n" + GBK + b",a2\nq3,a3\n", "sft", {}, 2, [(3, NOT_UTF8)]),
    ("gbk-txt", "d.txt", b"one\n" + GBK + b"\nthree\n", "pretrain", {}, 2, [(2, NOT_UTF8)]),
    (
        "jsonl-holding-csv",
        "d.jsonl",
        b"context,target\nq,a\n",
        "sft",
        {},
        0,
        [
            (1, "not valid JSON; the file looks like CSV — declare format csv (or csv_qa)?"),
            (2, "not valid JSON; the file looks like CSV — declare format csv (or csv_qa)?"),
        ],
    ),
    (
        "json-neither-array-nor-lines",
        "d.json",
        b'{\n  "text": "pretty printed"\n}\n',
        "pretrain",
        {},
        0,
        [
            (1, "not valid JSON" + PRETTY),
            # Spark's JSON parser reads the leading string of '"text": "..."' and stops there.
            (2, "record is a JSON string, expected an object" + PRETTY),
            (3, "not valid JSON" + PRETTY),
        ],
    ),
    (
        "jsonl-holding-an-array",
        "d.jsonl",
        b'[{"text": "a"},\n{"text": "b"}]\n',
        "pretrain",
        {},
        0,
        [
            (1, "not valid JSON; the file looks like a JSON array — declare format json?"),
            (2, "not valid JSON; the file looks like a JSON array — declare format json?"),
        ],
    ),
    (
        "alpaca-declared-on-sharegpt",
        "d.jsonl",
        jsonl({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}),
        "sft",
        {"format": "alpaca"},
        0,
        [
            (
                1,
                "missing required field instruction; the record looks like ShareGPT — declare format sharegpt?",
            )
        ],
    ),
    (
        "canonical-declared-on-alpaca",
        "d.jsonl",
        jsonl({"instruction": "i", "input": "", "output": "o"}),
        "sft",
        {},
        0,
        [(1, "missing required field context; the record looks like Alpaca — declare format alpaca?")],
    ),
    (
        "csv-with-question-answer-headers",
        "d.csv",
        b"question,answer\nq,a\n",
        "sft",
        {},
        0,
        [
            (
                2,
                "missing required field context; the record looks like question/answer — declare format csv_qa (or map them with field_map)?",
            )
        ],
    ),
    (
        "csv-qa-missing-answer",
        "d.csv",
        b"question,answer\nq1,a1\nq2,\n,a3\n",
        "sft",
        {"format": "csv_qa"},
        1,
        [(3, "missing required field answer"), (4, "missing required field question")],
    ),
    (
        "ranking",
        "rm.jsonl",
        jsonl(
            {
                "context": "q",
                "answers": [{"text": "a", "score": 2, "rank": 1}, {"text": "b", "score": 1, "rank": 2}],
            },
            {"context": "q", "answers": [{"text": str(i), "score": 6 - i, "rank": i} for i in range(1, 7)]},
            {
                "context": "q",
                "answers": [{"text": "a", "score": 2, "rank": 1}, {"text": "b", "score": 1, "rank": 1}],
            },
            {
                "context": "q",
                "answers": [{"text": "a", "score": 0.5, "rank": 1}, {"text": "b", "score": 0.9, "rank": 2}],
            },
            {"context": "q", "answers": [{"text": "a", "rank": 1}, {"text": "b", "score": 1, "rank": 2}]},
            {"context": "q", "answers": [{"text": "a", "score": 2, "rank": 1}, {"text": "b", "score": 1}]},
            {
                "context": "q",
                "answers": [{"text": "a", "score": "high", "rank": 1}, {"text": "b", "score": 1, "rank": 2}],
            },
            {"context": "q", "answers": [{"text": "a", "score": 2, "rank": 1}]},
            {
                "context": "q",
                "answers": [{"text": "a", "score": 2, "rank": 0}, {"text": "b", "score": 1, "rank": 1}],
            },
            {"context": "q", "answers": "a"},
        ),
        "reward_model",
        {},
        1,
        [
            (2, "field answers holds 6 answers; a ranking holds at most 5"),
            (3, "duplicate rank 1 in field answers"),
            (
                4,
                "answer 2 has a higher score than answer 1 (0.9 > 0.5) but a worse rank (2 > 1); rank 1 is the best",
            ),
            (5, "answer 1 of answers: missing score"),
            (6, "answer 2 of answers: missing rank"),
            (7, "answer 1 of answers: score must be a number, got string"),
            (8, "field answers holds 1 answer; a ranking needs at least 2"),
            (9, "answer 1 of answers: rank must be 1 or more (1 is the best)"),
            (10, "wrong type of field answers: expected a list of {text, score, rank} objects, got string"),
        ],
    ),
    (
        "preference",
        "p.jsonl",
        jsonl(
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "a", "rejected": "a"},
            {"prompt": "q", "chosen": "a"},
            {"chosen": "a", "rejected": "b"},
        ),
        "reward_model",
        {"format": "preference"},
        1,
        [
            (2, "chosen and rejected are the same answer"),
            (3, "missing required field rejected"),
            (4, "missing required field prompt (or conversations / messages)"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("case", "name", "content", "usage", "source", "kept", "expected"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_input_is_quarantined_with_line_and_reason(
    spark: SparkSession,
    tmp_path: Path,
    case: str,
    name: str,
    content: bytes,
    usage: Usage,
    source: dict[str, Any],
    kept: int,
    expected: list[tuple[int, str]],
) -> None:
    imp = load(spark, write(tmp_path, name, content), usage, **source)
    assert [(line, reason) for _, line, reason in rejects(imp)] == expected
    assert imp.accepted_count == kept
    texts = json.dumps(records(imp), ensure_ascii=False)
    assert "\ufffd" not in texts  # never a silently replaced character in an accepted record


@pytest.mark.parametrize(
    ("name", "content", "usage", "first"),
    [
        ("b.jsonl", "\ufeff" + '{"text": "x"}\n', "pretrain", {"text": "x"}),
        ("b.json", "\ufeff" + '[{"text": "x"}]', "pretrain", {"text": "x"}),
        ("b.csv", "\ufeffcontext,target\nq,a\n", "sft", {"system": None, "context": ["q"], "target": "a"}),
        ("b.txt", "\ufeffx\n", "pretrain", {"text": "x"}),
    ],
)
def test_a_byte_order_mark_is_stripped(
    spark: SparkSession, tmp_path: Path, name: str, content: str, usage: Usage, first: dict[str, Any]
) -> None:
    imp = load(spark, write(tmp_path, name, content.encode()), usage)
    assert rejects(imp) == [] and records(imp) == [first]


def test_gbk_files_read_on_purpose(spark: SparkSession, tmp_path: Path) -> None:
    path = write(tmp_path, "gbk.jsonl", ('{"text": "中文"}\n{"text": "問題 ok"}\n').encode("gb18030"))
    imp = load(spark, path, "pretrain", encoding="gb18030")
    assert [r["text"] for r in records(imp)] == ["中文", "問題 ok"]
    arr = write(tmp_path, "gbk.json", json.dumps([{"text": "数据"}], ensure_ascii=False).encode("gbk"))
    assert records(load(spark, arr, "pretrain", encoding="gb18030")) == [{"text": "数据"}]
    with pytest.raises(ReaderError, match="CSV must be UTF-8|convert it to UTF-8"):
        resolve_input(InputSource(uri=str(write(tmp_path, "g.csv", b"a\n")), encoding="gb18030"), "sft", 0)


def test_empty_files_are_one_entry_each_and_the_rest_is_read(spark: SparkSession, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    write(d, "a.jsonl", jsonl({"text": "x"}, {"text": "y"}))
    write(d, "b.jsonl", b"")
    write(d, "c.jsonl", b" \n\t\n")
    write(d, "d.csv", "\ufeff\n".encode())
    write(d, "e.txt", b"z\n")
    imp = load(spark, d, "pretrain")
    assert sorted(r["text"] for r in records(imp)) == ["x", "y", "z"]
    assert rejects(imp) == [
        ("b.jsonl", 0, "empty file"),
        ("c.jsonl", 0, "empty file"),
        ("d.csv", 0, "empty file"),
    ]
    assert imp.records_in == 6


def test_an_input_of_only_empty_files_fails(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    write(d, "a.jsonl", b"")
    write(d, "b.json", b"\n\n")
    with pytest.raises(ReaderError, match=r"inputs\[0\] .*holds only empty files .*: a.jsonl, b.json"):
        resolve_input(InputSource(uri=str(d)), "pretrain", 0)


def test_a_parquet_suffix_on_other_content(spark: SparkSession, tmp_path: Path) -> None:
    d = tmp_path / "in"
    spark.createDataFrame([("t1",)], "text string").coalesce(1).write.parquet(str(d))
    write(d, "zz.parquet", jsonl({"text": "not parquet"}))
    imp = load(spark, d, "pretrain")
    assert [r["text"] for r in records(imp)] == ["t1"]
    assert rejects(imp) == [
        (
            "zz.parquet",
            0,
            "not a Parquet file (it does not start and end with PAR1); the file looks like JSON Lines — declare format jsonl?",
        )
    ]


def test_csv_qa_files_over_50_mb_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert readers.CSV_QA_MAX_BYTES == 50 * 1024 * 1024
    monkeypatch.setattr(readers, "CSV_QA_MAX_BYTES", 16)
    path = write(tmp_path, "big.csv", b"question,answer\n" + b"q,a\n" * 10)
    with pytest.raises(
        ReaderError, match=r"big.csv is 0.0 MB; a CSV question/answer file may be at most 0 MB"
    ):
        resolve_input(InputSource(uri=str(path), format="csv_qa"), "sft", 0)


@pytest.mark.parametrize(
    ("usage", "source", "kwargs", "message"),
    [
        ("pretrain", {"format": "csv_qa"}, {}, "format csv_qa makes conversation records"),
        (
            "sft",
            {"format": "preference"},
            {},
            "format preference makes ranked answers .* use usage reward_model",
        ),
        ("sft", {"format": "alpaca"}, {"labelled": False}, "unlabelled data .* canonical records or csv_qa"),
        ("reward_model", {}, {"modality": "image"}, "modality image .* needs usage sft, rl or model_test"),
    ],
)
def test_unusable_combinations_fail_before_spark(
    tmp_path: Path, usage: Usage, source: dict[str, Any], kwargs: dict[str, Any], message: str
) -> None:
    path = write(tmp_path, "x.jsonl", jsonl({"a": 1}))
    with pytest.raises(ReaderError, match=message):
        resolve_input(InputSource(uri=str(path), **source), usage, 0, **kwargs)


def test_reasons_and_the_reject_threshold_end_to_end(
    spark: SparkSession, tmp_path: Path, ff_home: Path
) -> None:
    from spark_ops.run import ImportRejected, run
    from tasks.specs import ProcessSpec

    src = write(tmp_path, "mixed.jsonl", jsonl({"text": "a"}, b"oops", {"text": "b"}))
    spec = ProcessSpec(
        run_key="t1",
        inputs=[InputSource(uri=str(src))],
        usage="pretrain",
        output_uri=str(tmp_path / "v1"),
        max_reject_ratio=0.5,
    )
    result = run(spec)
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert (manifest["records_in"], manifest["accepted"], manifest["quarantined"]) == (3, 2, 1)
    assert manifest["records_in"] == manifest["accepted"] + manifest["quarantined"] == result["records_in"]
    assert (manifest["modality"], manifest["labelled"]) == ("text", True)
    q = [
        json.loads(line)
        for line in (tmp_path / "v1" / "quarantine" / "quarantine.jsonl").read_text().splitlines()
    ]
    assert [(r["line"], r["reason"], r["raw"]) for r in q] == [(2, "not valid JSON", "oops")]
    strict = spec.model_copy(
        update={"run_key": "t2", "output_uri": str(tmp_path / "v2"), "max_reject_ratio": 0.2}
    )
    with pytest.raises(
        ImportRejected,
        match=r"1 of 3 records \(33.3%\) were rejected on import, above max_reject_ratio 20.0%",
    ):
        run(strict)


# ---------------------------------------------------------------- samples


SAMPLE_IMPORTS: dict[str, tuple[Usage, dict[str, Any], dict[str, Any]]] = {
    "pretrain.jsonl": ("pretrain", {}, {}),
    "pretrain.txt": ("pretrain", {}, {}),
    "pretrain.parquet": ("pretrain", {}, {}),
    "sft.jsonl": ("sft", {}, {}),
    "sft.json": ("sft", {}, {}),
    "sft_qa.csv": ("sft", {"format": "csv_qa"}, {}),
    "sft_qa_zh.csv": ("sft", {"format": "csv_qa"}, {}),
    "alpaca.json": ("sft", {"format": "alpaca"}, {}),
    "sharegpt.json": ("sft", {"format": "sharegpt"}, {}),
    "openai.jsonl": ("sft", {"format": "openai"}, {}),
    "multiturn.jsonl": ("sft", {}, {}),
    "reasoning.jsonl": ("sft", {}, {}),
    "unlabelled.jsonl": ("sft", {}, {"labelled": False}),
    "ranking.jsonl": ("reward_model", {}, {}),
    "preference.json": ("reward_model", {"format": "preference"}, {}),
    "vision.jsonl": ("sft", {}, {"modality": "image"}),
}
SAMPLE_CHECKS: dict[str, Callable[[list[dict[str, Any]]], bool]] = {
    "multiturn.jsonl": lambda rs: all(len(r["context"]) == 3 for r in rs),
    "reasoning.jsonl": lambda rs: all(
        r["target"].startswith("<think>\n") and "</think>" in r["target"] for r in rs
    ),
    "unlabelled.jsonl": lambda rs: all(r["target"] is None for r in rs),
    "ranking.jsonl": lambda rs: max(len(r["answers"]) for r in rs) == 5,
    "vision.jsonl": lambda rs: all(Path(r["image"]).is_file() for r in rs),
}


def test_every_sample_is_listed_and_documented() -> None:
    data = {p.name for p in SAMPLES.iterdir() if p.is_file() and p.name != "README.md"}
    assert data == set(SAMPLE_IMPORTS)
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    for name, (usage, source, _) in SAMPLE_IMPORTS.items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {usage} |" in row and (
            source.get("format") is None or f"--format {source['format']}" in row
        )


@pytest.mark.parametrize("name", sorted(SAMPLE_IMPORTS))
def test_every_sample_imports_with_zero_quarantine(spark: SparkSession, name: str) -> None:
    usage, source, kwargs = SAMPLE_IMPORTS[name]
    imp = load(spark, SAMPLES / name, usage, **source, **kwargs)
    rows = records(imp)
    assert rejects(imp) == [] and len(rows) >= 2
    assert SAMPLE_CHECKS.get(name, lambda _: True)(rows)
