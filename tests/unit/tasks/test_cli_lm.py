"""``forgeflow lm train`` / ``score``: inputs of every supported kind, the model file, errors with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spark_ops import lm
from tasks.cli import main

EN = "The cat sat on the mat and looked at the birds outside the window for a long time."
ZH = "今天天气很好，我们一起去公园散步，看见湖面上有很多小船，孩子们在草地上放风筝。"


def _inputs(tmp: Path) -> list[str]:
    txt = tmp / "docs.txt"
    txt.write_text("\n".join([EN] * 12) + "\n\n", encoding="utf-8")
    jsonl = tmp / "sft.jsonl"
    jsonl.write_text("\n".join(json.dumps({"instruction": "q", "output": ZH}) for _ in range(12)), "utf-8")
    js = tmp / "pairs.json"
    js.write_text(json.dumps([{"chosen": {"from": "gpt", "value": ZH + EN}}] * 3), "utf-8")
    return [str(txt), str(jsonl), str(js)]


def test_train_then_score(tmp_path: Path, capsys: pytest.CaptureFixture[str], ff_home: Path) -> None:
    out = tmp_path / "models" / "ref.npz"
    assert main(["lm", "train", *_inputs(tmp_path), "--output", str(out), "--order", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["order"] == 3 and summary["model"] == out.as_uri()
    # 27 texts; every 10th of those with >= 50 characters is held out
    assert summary["info"]["train_texts"] + summary["info"]["held_out_texts"] == 27
    header = lm.read_header(out)
    assert header["info"]["train_texts"] == summary["info"]["train_texts"]

    assert main(["lm", "score", str(out), str(tmp_path / "docs.txt")]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["texts"] == 12 and scored["languages"]["en"]["texts"] == 12
    assert scored["languages"]["en"]["p50"] < 3  # it trained on exactly this sentence

    # a lake URI works as the output too
    lake_out = (ff_home / "lake" / "lm" / "ref.npz").as_uri()
    assert main(["lm", "train", str(tmp_path / "docs.txt"), "--output", lake_out]) == 0
    assert "trained a 5-gram character model on" in capsys.readouterr().out
    assert lm.read_header(ff_home / "lake" / "lm" / "ref.npz")["order"] == 5


def test_bad_inputs_name_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": EN}) + "\n{not json\n", encoding="utf-8")
    assert main(["lm", "train", str(bad), "--output", str(tmp_path / "m.npz")]) == 1
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()

    other = tmp_path / "notes.csv"
    other.write_text("a,b\n", encoding="utf-8")
    assert main(["lm", "train", str(other), "--output", str(tmp_path / "m.npz")]) == 1
    assert "notes.csv: unsupported file type '.csv'" in capsys.readouterr().err

    assert main(["lm", "train", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "m.npz")]) == 1
    assert "missing.txt: no such file or directory" in capsys.readouterr().err


def test_train_on_a_catalogue_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ff_home: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.catalog import Catalog

    version_dir = ff_home / "lake" / "datasets" / "general" / "clean-zh" / "v1"
    (version_dir / "data").mkdir(parents=True)
    pq.write_table(
        pa.table({"id": [f"r{i}" for i in range(20)], "text": [ZH] * 20}),
        version_dir / "data" / "part-0.parquet",
    )
    (version_dir / "manifest.json").write_text("{}", encoding="utf-8")  # not a record file
    cat = Catalog.from_settings()
    cat.ensure_dataset("general", "clean-zh")
    cat.commit_version(
        "general", "clean-zh", run_key="r1", uri=version_dir.as_uri(), usage="pretrain", record_count=20
    )
    out = tmp_path / "m.npz"
    assert main(["lm", "train", "general/clean-zh@V1", "--output", str(out), "--order", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["info"]["datasets"] == ["general/clean-zh@V1"]
    assert summary["info"]["train_texts"] + summary["info"]["held_out_texts"] == 20
    assert main(["lm", "train", "general/clean-zh@V9", "--output", str(out)]) == 1
    assert "general/clean-zh@V9" in capsys.readouterr().err
