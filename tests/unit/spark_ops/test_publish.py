"""Publishing: each export format's records, the seeded split, reward_model rules, exactly-once output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pyspark.sql import SparkSession

from spark_ops.canonical import schema
from spark_ops.publish import (
    SUCCESS,
    OutputConflict,
    PublishError,
    completed_publication,
    publish,
)
from tasks.specs import PublishSpec
from tasks.storage import Lake

pytestmark = pytest.mark.slow

SINGLE = {
    "id": "single",
    "system": "你是一名客服",
    "context": ["怎么改还款日？"],
    "target": "<think>\n客户想改日期\n</think>可以在 App 中修改。",
    "meta": {"source": "fixture", "tags": ["lang:zh"]},
}
MULTI = {
    "id": "multi",
    "system": None,
    "context": ["Q1", "A1", "Q2"],
    "target": "A2",
    "meta": {"source": "fixture", "tags": []},
}
RANKING = {
    "id": "rank",
    "system": None,
    "context": ["Which is best?"],
    "answers": [{"text": f"answer {i}", "score": 5.0 - i, "rank": i + 1} for i in range(5)],
    "meta": {"source": "fixture", "tags": []},
}


def write_version(
    spark: SparkSession, path: Path, rows: list[dict[str, Any]], usage: str = "sft", files: int = 1
) -> str:
    df = spark.createDataFrame(rows, schema(usage))  # type: ignore[arg-type]
    df.repartition(files).write.parquet(str(path / "data"))
    (path / "manifest.json").write_text(
        json.dumps({"usage": usage, "run_key": "fixture", "records_out": len(rows)})
    )
    return str(path)


def many(n: int, copies: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "id": f"r{i:03d}",
            "system": None,
            "context": [f"q{i}"],
            "target": f"a{i}",
            "meta": {"source": "s", "tags": []},
        }
        for i in range(n)
        for _ in range(copies)
    ]


def spec(version: str, out: Path, **kw: Any) -> PublishSpec:
    return PublishSpec(run_key="test", version_uri=version, output_uri=str(out), **kw)


def lines(out: Path, split: str = "train") -> list[dict[str, Any]]:
    return [
        json.loads(x) for f in sorted((out / split).glob("part-*.jsonl")) for x in f.read_text().splitlines()
    ]


@pytest.fixture
def chat(spark: SparkSession, tmp_path: Path) -> str:
    return write_version(spark, tmp_path / "chat", [SINGLE, MULTI])


def test_openai_messages_single_and_multi_turn(spark, ff_home, tmp_path, chat) -> None:
    result = publish(spark, spec(chat, tmp_path / "openai", format="openai"))
    got = sorted(lines(tmp_path / "openai"), key=lambda r: len(r["messages"]))
    assert got[0] == {
        "messages": [
            {"role": "system", "content": "你是一名客服"},
            {"role": "user", "content": "怎么改还款日？"},
            {"role": "assistant", "content": "<think>\n客户想改日期\n</think>可以在 App 中修改。"},
        ]
    }
    assert got[1] == {
        "messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"},
        ]
    }
    assert result["counts"] == {"train": 2, "validation": 0} and result["format"] == "openai"
    assert result["files"] == ["train/part-00000.jsonl"] and result["asset_uri"] == "forgeflow://datasets/sft"


def test_sharegpt_conversations_with_system(spark, ff_home, tmp_path, chat) -> None:
    publish(spark, spec(chat, tmp_path / "sg", format="sharegpt"))
    got = sorted(lines(tmp_path / "sg"), key=lambda r: len(r["conversations"]))
    assert got[0] == {
        "system": "你是一名客服",
        "conversations": [
            {"from": "human", "value": "怎么改还款日？"},
            {"from": "gpt", "value": "<think>\n客户想改日期\n</think>可以在 App 中修改。"},
        ],
    }
    assert got[1] == {
        "conversations": [
            {"from": "human", "value": "Q1"},
            {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"},
            {"from": "gpt", "value": "A2"},
        ]
    }


def test_standard_is_the_canonical_record(spark, ff_home, tmp_path, chat) -> None:
    publish(spark, spec(chat, tmp_path / "std"))
    got = {r["id"]: r for r in lines(tmp_path / "std")}
    assert got["single"] == SINGLE
    assert got["multi"] == {k: v for k, v in MULTI.items() if v is not None}  # null fields are left out


def test_reward_model_exports_its_ranking_in_standard_only(spark, ff_home, tmp_path) -> None:
    version = write_version(spark, tmp_path / "rm", [RANKING], usage="reward_model")
    publish(spark, spec(version, tmp_path / "std"))
    (row,) = lines(tmp_path / "std")
    assert row["answers"] == RANKING["answers"] and row["context"] == ["Which is best?"]
    for fmt in ("openai", "sharegpt"):
        with pytest.raises(
            PublishError, match=f"reward_model data exports its ranking.*standard' only; '{fmt}'"
        ):
            publish(spark, spec(version, tmp_path / fmt, format=fmt))
        assert not (tmp_path / fmt).exists()


def test_pretrain_text_has_no_chat_format(spark, ff_home, tmp_path) -> None:
    version = write_version(
        spark,
        tmp_path / "pt",
        [{"id": "t", "text": "正文", "meta": {"source": "s", "tags": []}}],
        usage="pretrain",
    )
    with pytest.raises(PublishError, match="pretrain data has no conversation"):
        publish(spark, spec(version, tmp_path / "o", format="openai"))
    publish(spark, spec(version, tmp_path / "s"))
    assert lines(tmp_path / "s") == [{"id": "t", "text": "正文", "meta": {"source": "s", "tags": []}}]


def test_a_context_ending_on_an_assistant_turn_is_named(spark, ff_home, tmp_path) -> None:
    bad = {**MULTI, "id": "even", "context": ["Q1", "A1"]}
    version = write_version(spark, tmp_path / "v", [SINGLE, bad])
    with pytest.raises(PublishError, match="1 record.*even number of turns.*first ids: even"):
        publish(spark, spec(version, tmp_path / "o", format="openai"))


def test_split_sizes_are_exact_and_stable(spark, ff_home, tmp_path) -> None:
    one = write_version(spark, tmp_path / "v1", many(40), files=1)
    four = write_version(spark, tmp_path / "v4", many(40), files=4)

    def held_out(version: str, name: str, **kw: Any) -> list[str]:
        result = publish(spark, spec(version, tmp_path / name, **kw))
        ids = [r["id"] for r in lines(tmp_path / name, "validation")]
        train = [r["id"] for r in lines(tmp_path / name)]
        assert result["counts"] == {"train": len(train), "validation": len(ids)}
        assert not set(ids) & set(train) and len(ids) + len(train) == 40
        return ids

    a = held_out(one, "a", validation_ratio=0.25, seed=3)
    assert len(a) == 10
    assert held_out(four, "b", validation_ratio=0.25, seed=3) == a  # same records, same order
    assert len(held_out(one, "c", validation_count=3, seed=3)) == 3
    assert set(held_out(one, "c3", validation_count=3, seed=3)) <= set(a)  # the smallest keys first
    assert held_out(one, "d", validation_ratio=0.25, seed=4) != a
    assert len(held_out(one, "e", validation_ratio=0.01)) == 0  # 0.4 rounds to 0: no validation split
    assert not (tmp_path / "e" / "validation").exists()
    with pytest.raises(PublishError, match="validation_count 41 is more than the 40 records"):
        publish(spark, spec(one, tmp_path / "f", validation_count=41))
    with pytest.raises(ValidationError, match="not both"):
        spec(one, tmp_path / "g", validation_count=1, validation_ratio=0.1)


def test_copies_of_one_record_stay_in_one_split(spark, ff_home, tmp_path) -> None:
    version = write_version(spark, tmp_path / "v", many(10, copies=3), files=3)
    result = publish(spark, spec(version, tmp_path / "o", validation_count=7))
    val = [r["id"] for r in lines(tmp_path / "o", "validation")]
    train = {r["id"] for r in lines(tmp_path / "o")}
    assert result["counts"]["validation"] == len(val) == 6  # two whole ids; a third would make 9 > 7
    assert not set(val) & train


def test_publishing_is_exactly_once(spark, ff_home, tmp_path, chat) -> None:
    out = tmp_path / "exp"
    stale = tmp_path / ".exp.staging-deadbeef"  # what a killed attempt leaves
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "part-00000.jsonl").write_text("{}\n")
    first = publish(spark, spec(chat, out, validation_count=1, visibility="public"))
    assert not stale.exists() and (out / SUCCESS).exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "_SUCCESS",
        "publication.json",
        "train/part-00000.jsonl",
        "validation/part-00000.jsonl",
    ]
    assert first["already_published"] is False and first["visibility"] == "public"
    written = (out / "publication.json").stat().st_mtime_ns
    again = publish(spark, spec(chat, out, validation_count=1, visibility="public"))
    assert again == {**first, "already_published": True}
    assert (out / "publication.json").stat().st_mtime_ns == written
    with pytest.raises(OutputConflict, match="different spec"):
        publish(spark, spec(chat, out, validation_count=1, format="openai"))
    assert completed_publication(Lake.from_settings(), out.as_uri())["counts"] == {
        "train": 1,
        "validation": 1,
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".exp")] == []
