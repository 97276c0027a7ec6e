"""Mixing: exact integer targets, sampling by a seeded hash, origins and the manifest report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pyspark.sql import SparkSession

from spark_ops.canonical import schema
from spark_ops.mix import ORIGIN, PART, OutputConflict, mix, sample_parts
from tasks.mixing import MixError, largest_remainder, load_presets, plan_mix, reduced
from tasks.specs import MixSpec

pytestmark = pytest.mark.slow


def sft_rows(prefix: str, n: int, tags: list[str] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}{i:04d}",
            "system": None,
            "context": [f"{prefix} question {i}"],
            "target": f"{prefix} answer {i}",
            "meta": {"source": prefix, "tags": list(tags or [])},
        }
        for i in range(n)
    ]


def write_version(
    spark: SparkSession, path: Path, rows: list[dict[str, Any]], usage: str = "sft", files: int = 1
) -> str:
    """A dataset version directory as the engines write it: data/*.parquet and manifest.json."""
    df = spark.createDataFrame(rows, schema(usage))  # type: ignore[arg-type]
    df.repartition(files).write.parquet(str(path / "data"))
    (path / "manifest.json").write_text(
        json.dumps({"usage": usage, "run_key": "fixture", "records_out": len(rows)})
    )
    return str(path)


def read_mixed(spark: SparkSession, out: Path) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in spark.read.parquet(str(out / "data")).collect()]


def spec(tmp_path: Path, parts: list[dict[str, Any]], name: str = "out", **kw: Any) -> MixSpec:
    return MixSpec(run_key="test", parts=parts, output_uri=str(tmp_path / name), **kw)


def origin(row: dict[str, Any]) -> str:
    (tag,) = [t for t in row["meta"]["tags"] if t.startswith("mix:")]
    return tag[4:]


@pytest.fixture
def two(spark: SparkSession, tmp_path: Path) -> tuple[str, str]:
    a = write_version(spark, tmp_path / "a", sft_rows("a", 10))
    b = write_version(spark, tmp_path / "b", sft_rows("b", 25), files=3)
    return a, b


# ---------------------------------------------------------------- planning, no Spark


def test_largest_remainder_is_exact_and_ties_go_to_the_first_part() -> None:
    from fractions import Fraction as Fr

    assert largest_remainder(10, [Fr(1), Fr(1), Fr(1)]) == [4, 3, 3]
    assert largest_remainder(1000, [Fr(1), Fr(6)]) == [143, 857]
    assert largest_remainder(7, [Fr(1), Fr(6)]) == [1, 6]
    assert reduced([Fr("0.5"), Fr(3)]) == [1, 6]


def test_presets_are_loaded_from_include() -> None:
    presets = load_presets()
    assert presets["pretrain-industry-general"].roles == {"industry": 1, "general": 6}
    assert (
        presets["pretrain-industry-general"].band.min == 4
        and presets["pretrain-industry-general"].band.max == 9
    )
    assert presets["sft-industry-general"].roles == {"industry": 1, "general": 3}
    assert presets["distill"].roles == {"scene": 1, "domain": 1, "general": 1}


def _parts(*roles_ratios: tuple[str, float | None]) -> list[dict[str, Any]]:
    out = []
    for i, (role, ratio) in enumerate(roles_ratios):
        p: dict[str, Any] = {"uri": f"/v{i}", "ref": f"s/d{i}@V1", "role": role}
        if ratio is not None:
            p["ratio"] = ratio
        out.append(p)
    return out


def test_preset_keeps_the_industry_baseline_and_scales_general(tmp_path: Path) -> None:
    s = spec(tmp_path, _parts(("industry", None), ("general", None)), preset="pretrain-industry-general")
    plan = plan_mix(s, [10, 100])
    assert [p.target for p in plan.parts] == [10, 60]
    assert [r["achieved_proportion"] for r in plan.report()] == ["1/7", "6/7"]
    assert all(r["exact"] for r in plan.report()) and plan.warnings == []


def test_preset_band_warns_outside_1_4_to_1_9(tmp_path: Path) -> None:
    s = spec(tmp_path, _parts(("industry", 1), ("general", 12)), preset="pretrain-industry-general")
    plan = plan_mix(s, [10, 200])
    assert [p.target for p in plan.parts] == [10, 120]
    assert len(plan.warnings) == 1 and "outside the 4-9 band" in plan.warnings[0]
    inside = spec(tmp_path, _parts(("industry", 1), ("general", 9)), preset="pretrain-industry-general")
    assert plan_mix(inside, [10, 200]).warnings == []


def test_preset_roles_and_usage_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="missing: general"):
        spec(tmp_path, _parts(("industry", None), ("industry", None)), preset="sft-industry-general")
    with pytest.raises(ValidationError, match="not a role"):
        spec(tmp_path, _parts(("industry", None), ("web", None)), preset="sft-industry-general")
    with pytest.raises(ValidationError, match="for pretrain data"):
        spec(
            tmp_path,
            _parts(("industry", None), ("general", None)),
            preset="pretrain-industry-general",
            usage="sft",
        )
    with pytest.raises(ValidationError, match="unknown"):
        spec(tmp_path, _parts(("a", None), ("b", None)), preset="nope")


def test_distill_preset_up_samples_to_the_largest(tmp_path: Path) -> None:
    s = spec(tmp_path, _parts(("scene", None), ("domain", None), ("general", None)), preset="distill")
    plan = plan_mix(s, [500, 1500, 1400])
    assert [p.target for p in plan.parts] == [1500, 1500, 1500]
    assert [p.whole_copies for p in plan.parts] == [3, 1, 1]
    assert [p.upsampled_copies for p in plan.parts] == [1000, 0, 100]


def test_sampling_modes_refuse_what_they_do_not_do(tmp_path: Path) -> None:
    parts = [{"uri": "/a", "ref": "s/a@V1", "count": 20}, {"uri": "/b", "ref": "s/b@V1", "count": 5}]
    with pytest.raises(MixError, match=r"part 's/a@V1' needs 20 records but holds 10.*'down' never repeats"):
        plan_mix(spec(tmp_path, parts), [10, 10])
    with pytest.raises(MixError, match=r"part 's/b@V1' would take 5 of its 10.*'up' never drops"):
        plan_mix(spec(tmp_path, parts, sampling="up"), [10, 10])
    assert [p.target for p in plan_mix(spec(tmp_path, parts, sampling="both"), [10, 10]).parts] == [20, 5]
    ratios = [{"uri": "/a", "ref": "s/a@V1", "ratio": 1}, {"uri": "/b", "ref": "s/b@V1", "ratio": 1}]
    with pytest.raises(MixError, match="needs total"):
        plan_mix(spec(tmp_path, ratios, sampling="both"), [10, 10])


def test_spec_shape_errors_name_the_part(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"parts\[1\].*count or ratio, not both"):
        spec(
            tmp_path,
            [
                {"uri": "/a", "ref": "s/a@V1", "count": 1},
                {"uri": "/b", "ref": "s/b@V1", "count": 1, "ratio": 1},
            ],
        )
    with pytest.raises(ValidationError, match="every part a count, or none"):
        spec(
            tmp_path, [{"uri": "/a", "ref": "s/a@V1", "count": 1}, {"uri": "/b", "ref": "s/b@V1", "ratio": 1}]
        )
    with pytest.raises(ValidationError, match="at least 2"):
        spec(tmp_path, [{"uri": "/a", "ref": "s/a@V1", "count": 1}])
    with pytest.raises(ValidationError, match=r"parts\[0\].*needs tags"):
        spec(
            tmp_path,
            [{"uri": "/a", "ref": "s/a@V1", "count": 1}, {"tags": ["x"], "count": 1}],
            by="tag",
            inputs=[{"uri": "/a", "ref": "s/a@V1"}],
        )


# ---------------------------------------------------------------- the engine on Spark


def test_counts_are_taken_exactly_without_repetition(spark, ff_home, tmp_path, two) -> None:
    a, b = two
    parts = [{"uri": a, "ref": "s/a@V1", "count": 4}, {"uri": b, "ref": "s/b@V2", "count": 15}]
    result = mix(spark, spec(tmp_path, parts))
    rows = read_mixed(spark, tmp_path / "out")
    assert Counter(origin(r) for r in rows) == {"s/a@V1": 4, "s/b@V2": 15}
    assert len({r["id"] for r in rows}) == 19  # down-sampling never repeats
    assert all(r["id"].startswith(origin(r)[2]) for r in rows)  # the tag says where each record came from
    assert all(r["target"] == r["context"][0].replace("question", "answer") for r in rows)  # text unchanged
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["records_out"] == result["records_out"] == 19
    assert manifest["parents"] == ["s/a@V1", "s/b@V2"]
    report = {p["part"]: p for p in manifest["mix"]["parts"]}
    assert (
        report["s/a@V1"].items() >= {"available": 10, "target": 4, "taken": 4, "upsampled_copies": 0}.items()
    )
    assert report["s/a@V1"]["achieved_proportion"] == "4/19" and report["s/b@V2"]["available"] == 25
    assert manifest["records_in"] - manifest["dropped"] + manifest["repeated"] == manifest["records_out"]


def test_ratios_give_exact_proportions(spark, ff_home, tmp_path, two) -> None:
    a, b = two
    parts = [{"uri": a, "ref": "s/a@V1", "ratio": 1}, {"uri": b, "ref": "s/b@V1", "ratio": 3}]
    result = mix(spark, spec(tmp_path, parts))  # down: the largest exact mix, 8 + 24 of 10 + 25
    assert [(p["taken"], p["achieved_proportion"], p["exact"]) for p in result["parts"]] == [
        (8, "1/4", True),
        (24, "3/4", True),
    ]
    rows = read_mixed(spark, tmp_path / "out")
    assert Counter(origin(r) for r in rows) == {"s/a@V1": 8, "s/b@V1": 24}
    result = mix(
        spark, spec(tmp_path, parts, name="total", total=30)
    )  # 7.5 : 22.5 -> first part gets the tie
    assert [p["taken"] for p in result["parts"]] == [8, 22]


def test_up_sampling_repeats_whole_records_then_a_seeded_remainder(spark, ff_home, tmp_path) -> None:
    small = write_version(spark, tmp_path / "small", sft_rows("s", 3))
    big = write_version(spark, tmp_path / "big", sft_rows("b", 10))
    parts = [{"uri": small, "ref": "x/small@V1", "count": 8}, {"uri": big, "ref": "x/big@V1", "count": 10}]
    result = mix(spark, spec(tmp_path, parts, sampling="both"))
    rows = read_mixed(spark, tmp_path / "out")
    copies = Counter(r["id"] for r in rows if origin(r) == "x/small@V1")
    assert sum(copies.values()) == 8 and sorted(copies.values()) == [2, 3, 3]  # 2 whole copies + 2 sampled
    originals = {r["id"]: r for r in sft_rows("s", 3)}
    for r in rows:
        if r["id"] in originals:
            assert (r["context"], r["target"]) == (
                originals[r["id"]]["context"],
                originals[r["id"]]["target"],
            )
    small_report = result["parts"][0]
    assert (small_report["whole_copies"], small_report["sampled"], small_report["upsampled_copies"]) == (
        2,
        2,
        5,
    )


def test_by_tag_parts_select_from_the_union_first_match_wins(spark, ff_home, tmp_path) -> None:
    one = write_version(
        spark,
        tmp_path / "one",
        sft_rows("m", 6, ["domain:med"]) + sft_rows("l", 4, ["domain:law", "lang:zh"]),
    )
    two = write_version(
        spark, tmp_path / "two", sft_rows("u", 5) + sft_rows("k", 2, ["domain:med", "lang:zh"])
    )
    inputs = [{"uri": one, "ref": "t/one@V1"}, {"uri": two, "ref": "t/two@V1"}]
    parts = [{"tags": ["domain:med"], "ratio": 1, "name": "med"}, {"tags": [], "ratio": 1, "name": "rest"}]
    result = mix(spark, spec(tmp_path, parts, by="tag", inputs=inputs))
    assert [(p["available"], p["taken"]) for p in result["parts"]] == [(8, 8), (9, 8)]
    rows = read_mixed(spark, tmp_path / "out")
    med = [r for r in rows if "domain:med" in r["meta"]["tags"]]
    assert len(med) == 8 and len(rows) == 16
    assert {origin(r) for r in med} == {"t/one@V1", "t/two@V1"}

    parts = [{"tags": ["domain:law", "lang:zh"], "count": 2}, {"tags": ["lang:zh"], "count": 2}]
    mix(spark, spec(tmp_path, parts, name="and", by="tag", inputs=inputs))
    manifest = json.loads((tmp_path / "and" / "manifest.json").read_text())
    assert [p["available"] for p in manifest["mix"]["parts"]] == [
        4,
        2,
    ]  # the zh med records, not the law ones
    assert manifest["mix"]["unmatched"] == 17 - 6
    rows = read_mixed(spark, tmp_path / "and")
    assert sum("domain:law" in r["meta"]["tags"] for r in rows) == 2


def test_same_seed_same_records_other_seed_others_any_partitioning(spark, ff_home, tmp_path) -> None:
    rows = sft_rows("a", 40)
    one_file = write_version(spark, tmp_path / "v1", rows, files=1)
    four_files = write_version(spark, tmp_path / "v4", rows, files=4)
    other = write_version(spark, tmp_path / "o", sft_rows("o", 40))

    def picked(uri: str, name: str, seed: int) -> list[tuple[str, str]]:
        parts = [{"uri": uri, "ref": "d/a@V1", "count": 7}, {"uri": other, "ref": "d/o@V1", "count": 50}]
        mix(spark, spec(tmp_path, parts, name=name, seed=seed, sampling="both"))
        out = spark.read.parquet(str(tmp_path / name / "data"))
        return [(r["id"], r["meta"]["source"]) for r in out.collect()]  # in file order

    first = picked(one_file, "s1", seed=1)
    assert picked(four_files, "s1-4files", seed=1) == first  # same records, same order
    assert picked(one_file, "s2", seed=2) != first
    # the sampler itself, on one partition or seven
    df = spark.createDataFrame(rows, schema("sft")).selectExpr("*", "0 as _mix_part", "'r' as _mix_origin")
    assert PART == "_mix_part" and ORIGIN == "_mix_origin"
    got = [
        sorted((r["id"], r["_mix_copy"]) for r in sample_parts(df.repartition(p), {0: (1, 13)}, 5).collect())
        for p in (1, 7)
    ]
    assert got[0] == got[1] and len(got[0]) == 53


def test_parts_of_different_usages_are_refused(spark, ff_home, tmp_path) -> None:
    a = write_version(spark, tmp_path / "a", sft_rows("a", 3))
    p = write_version(
        spark,
        tmp_path / "p",
        [{"id": "p1", "text": "t", "meta": {"source": "x", "tags": []}}],
        usage="pretrain",
    )
    parts = [{"uri": a, "ref": "s/a@V1", "count": 1}, {"uri": p, "ref": "s/p@V3", "count": 1}]
    with pytest.raises(
        MixError, match=r"share one usage \(sft, that of parts\[0\].*parts\[1\] \(s/p@V3\) is pretrain"
    ):
        mix(spark, spec(tmp_path, parts))
    with pytest.raises(MixError, match=r"parts\[0\] \(s/a@V1\) is sft"):
        mix(spark, spec(tmp_path, parts, usage="pretrain"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_retry_is_a_no_op_and_a_different_spec_is_refused(spark, ff_home, tmp_path, two) -> None:
    a, b = two
    parts = [{"uri": a, "ref": "s/a@V1", "count": 2}, {"uri": b, "ref": "s/b@V1", "count": 3}]
    first = mix(spark, spec(tmp_path, parts))
    written = (tmp_path / "out" / "manifest.json").stat().st_mtime_ns
    assert mix(spark, spec(tmp_path, parts)) == first
    assert (tmp_path / "out" / "manifest.json").stat().st_mtime_ns == written
    with pytest.raises(OutputConflict, match="different mix spec"):
        mix(spark, spec(tmp_path, parts, seed=9))
