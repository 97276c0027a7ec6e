"""``forgeflow process`` end to end in a subprocess: records keep their ids, stats and quarantine are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

RECIPE = """
name: cli-test
operators:
  - name: clean_html
  - name: remove_emoji
  - name: normalize
    params: {keep_cjk_punctuation: true}
  - name: normalize_dates
  - name: empty_filter
  - name: truncation_filter
  - name: exact_dedupe
  - name: tag_language
"""


def forgeflow(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FORGEFLOW_HOME": str(tmp_path / "home"), "FORGEFLOW_SPARK_MASTER": "local[1]"}
    return subprocess.run(
        [sys.executable, "-m", "tasks.cli", "process", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_process_jsonl_keeps_ids_and_writes_stats(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    records = [
        {"id": "a1", "text": "<p>会议于2024年3月5日召开&amp;结束。😀</p>"},
        {"id": 7, "text": "A complete sentence."},
        {"text": "No id, still complete."},
        {"id": "dup", "text": "A complete sentence."},
        {"id": "cut", "text": "这句话没有说完就被"},
        {"id": "bad", "text": 5},
    ]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    proc = forgeflow(
        tmp_path,
        str(src),
        "--recipe",
        str(recipe),
        "--output",
        str(out),
        "--max-reject-ratio",
        "0.5",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert (summary["records_in"], summary["quarantined"], summary["records_out"]) == (6, 1, 3)
    assert [(o["name"], o["dropped"]) for o in summary["operators"]][-3:] == [
        ("truncation_filter", 1),
        ("exact_dedupe", 1),
        ("tag_language", 0),
    ]
    lines = [json.loads(x) for x in (out / "part-00000.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in lines[:2]] == ["a1", "7"]
    assert len(lines[2]["id"]) == 32  # no id of its own: the canonical content hash
    assert lines[0]["text"] == "会议于2024-03-05召开&结束。"
    assert lines[0]["meta"] == {"source": "in.jsonl", "tags": ["lang:zh"]}
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["files"] == {
        "data": ["part-00000.jsonl"],
        "format": "jsonl",
        "quarantine": "quarantine.jsonl",
    }
    assert stats["operators"][0]["samples"]["modified"][0]["id"]  # samples come with the statistics
    quarantined = json.loads((out / "quarantine.jsonl").read_text(encoding="utf-8"))
    assert quarantined["line"] == 6 and "wrong type of field text" in quarantined["reason"]
    assert not [p for p in out.iterdir() if p.name.startswith(".forgeflow-process-")]


def test_process_sft_to_parquet_with_a_saved_recipe(tmp_path: Path) -> None:
    src = tmp_path / "alpaca.json"
    src.write_text(
        json.dumps(
            [
                {"id": "q1", "instruction": "把它翻譯成簡體", "input": "", "output": "好的，這是簡體。"},
                {"id": "q2", "instruction": "Answer", "input": "", "output": "cut mid"},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    proc = forgeflow(
        tmp_path,
        str(src),
        "--recipe",
        "sft_clean",
        "--usage",
        "sft",
        "--format",
        "alpaca",
        "--output",
        str(out),
        "--output-format",
        "parquet",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 2 records" in proc.stdout  # "cut mid" is shorter than the recipe's min_chars: not judged
    df = pd.read_parquet(out / "part-00000.parquet")
    assert df["id"].tolist() == ["q1", "q2"]
    assert df["context"].iloc[0].tolist() == ["把它翻译成简体"]
    assert df["target"].iloc[0] == "好的，这是简体。"


def test_process_rejected_import_points_at_the_quarantine(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "ok"}\n{"text": 1}\n')
    out = tmp_path / "out"
    proc = forgeflow(tmp_path, str(src), "--recipe", "import-only", "--output", str(out))
    assert proc.returncode == 1
    assert f"Quarantine: {out / 'quarantine.jsonl'}" in proc.stderr
    assert "wrong type of field text" in (out / "quarantine.jsonl").read_text()


def test_process_bad_recipe_fails_before_spark(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "x"}\n')
    proc = forgeflow(tmp_path, str(src), "--recipe", "no-such-recipe", "--output", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "RecipeError" in proc.stderr and "pretrain_basic" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("operators:\n  - name: regex_filter\n    params: {patterns: ['(x']}\n")
    proc = forgeflow(tmp_path, str(src), "--recipe", str(bad), "--output", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "operators[0] (regex_filter): invalid params" in proc.stderr
    assert "patterns[0]: invalid regular expression '(x'" in proc.stderr
