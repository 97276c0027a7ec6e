"""``forgeflow dataset ...`` against a real catalogue and the Spark engine, in this process.

One SparkSession serves all commands (the engine leaves a session it did not start running), so the
commands cost seconds, not a JVM start each. Concurrency: 20 importers on threads into one dataset, on
SQLite and on the local PostgreSQL service."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spark_ops.session import build_session
from tasks import datasets
from tasks.catalog import Catalog
from tasks.cli import main
from tasks.settings import get_settings
from tasks.specs import SparkResources

pytestmark = pytest.mark.slow
SHARED_SFT = Path(get_settings().shared_data) / "sft" / "alpaca_zh_demo.json"


@pytest.fixture(scope="module")
def spark():
    session = build_session(
        SparkResources(
            num_executors=1, executor_cores=1, executor_memory_gb=4, driver_cores=1, driver_memory_gb=2
        ),
        "cli-dataset-tests",
        master="local[2]",
    )
    yield session
    session.stop()
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spark) -> Iterator[Path]:
    monkeypatch.setenv("FORGEFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FORGEFLOW_CATALOG_URL", raising=False)
    monkeypatch.delenv("FORGEFLOW_LAKE_URI", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *args: str):
    rc, out, err = cli(capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def test_create_import_show_preview_lineage(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = cli_json(capsys, "dataset", "create", "law/contracts", "--note", "合同问答", "--tags", "law,zh")
    assert ds["ref"] == "law/contracts" and ds["tags"] == ["law", "zh"]
    rc, _, err = cli(capsys, "dataset", "create", "law/contracts")
    assert rc == 1 and "already exists" in err

    v1 = cli_json(
        capsys, "dataset", "import", "law/contracts", str(SHARED_SFT), "--usage", "sft", "--format", "alpaca"
    )
    assert v1["ref"] == "law/contracts@V1" and v1["number"] == 1
    assert v1["accepted"] == v1["record_count"] == 1000 and v1["quarantined_count"] == 0

    # a second file with bad records: quarantined with line numbers, the good ones kept
    bad = home / "mixed.jsonl"
    lines = [
        json.dumps(
            {"context": ["什么是合同？"], "target": "合同是当事人之间设立、变更、终止民事关系的协议。"},
            ensure_ascii=False,
        ),
        '{"context": ["broken json"',
        json.dumps({"context": ["缺少答案"]}, ensure_ascii=False),
        json.dumps({"context": ["答案类型错误"], "target": 42}, ensure_ascii=False),
        json.dumps(
            {"context": ["要约是什么？"], "target": "要约是希望与他人订立合同的意思表示。"},
            ensure_ascii=False,
        ),
    ]
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc, out, err = cli(
        capsys, "dataset", "import", "law/contracts", str(bad), "--usage", "sft", "--max-reject-ratio", "0.7"
    )
    assert rc == 0, err
    assert "law/contracts@V2: 2 accepted, 3 quarantined" in out and "quarantine: file://" in out
    v2 = datasets.show("law/contracts@V2")
    assert v2["stats"]["records_in"] == 5 == v2["accepted"] + v2["quarantined_count"]

    # too many rejects: a clear failure and no version
    rc, _, err = cli(capsys, "dataset", "import", "law/contracts", str(bad), "--usage", "sft")
    assert rc == 1 and "above max_reject_ratio" in err
    assert [v["number"] for v in datasets.show("law/contracts")["versions"]] == [1, 2]

    listing = cli_json(capsys, "dataset", "list")
    assert listing == [
        {"scene": "law", "name": "contracts", "note": "合同问答", "tags": ["law", "zh"], "versions": 2}
    ]
    rc, out, _ = cli(capsys, "dataset", "show", "law/contracts")
    assert "law/contracts@V1  sft" in out and "law/contracts@V2" in out and "3 quarantined" in out

    pv = cli_json(capsys, "dataset", "preview", "law/contracts@V2", "-n", "3")
    assert [r["target"] for r in pv["records"]][0].startswith("合同是")
    assert len(pv["records"]) == 2
    assert [q["line"] for q in pv["quarantined"]] == [2, 3, 4]
    assert "target" in pv["quarantined"][1]["reason"]

    rc, out, _ = cli(capsys, "dataset", "lineage", "law/contracts@V2")
    assert rc == 0 and out.startswith("law/contracts@V2  [sft, ready]  2 records, 3 quarantined")
    assert f"source: {bad}" in out

    rc, _, err = cli(capsys, "dataset", "show", "law/contracts@V7")
    assert rc == 1 and "no such version" in err
    rc, _, err = cli(capsys, "dataset", "import", "law/missing", str(bad), "--usage", "sft")
    assert rc == 1 and "forgeflow dataset create law/missing" in err


def test_import_is_idempotent_per_run_key(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_json(capsys, "dataset", "create", "general/poems")
    src = home / "p.jsonl"
    src.write_text(
        '{"text": "床前明月光，疑是地上霜。"}\n{"text": "举头望明月，低头思故乡。"}\n', encoding="utf-8"
    )
    args = ("dataset", "import", "general/poems", str(src), "--usage", "pretrain", "--run-key", "nightly-1")
    first = cli_json(capsys, *args)
    again = cli_json(capsys, *args)
    assert first["ref"] == again["ref"] == "general/poems@V1" and again["record_count"] == 2
    assert len(datasets.show("general/poems")["versions"]) == 1


def _concurrent_imports(home: Path, catalog: Catalog, n: int = 20) -> None:
    catalog.migrate()
    datasets.create("general/crowd", catalog=catalog)
    files = []
    for i in range(n):
        f = home / f"part{i}.jsonl"
        f.write_text(
            "".join(
                json.dumps({"text": f"文件{i}的第{j}行：并发导入测试。"}, ensure_ascii=False) + "\n"
                for j in range(i + 1)
            ),
            encoding="utf-8",
        )
        files.append(f)
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = datasets.import_file(
                "general/crowd", str(files[i]), usage="pretrain", catalog=catalog, quality=False
            )
        except BaseException as e:  # collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not errors, errors
    numbers = sorted(r["number"] for r in results.values())
    assert numbers == list(range(1, n + 1))  # distinct, no gaps
    for i, r in results.items():  # each version holds exactly its own file
        assert r["record_count"] == i + 1
        assert r["source"] == str(files[i])
    versions = catalog.list_versions("general", "crowd")
    assert sum(v.record_count for v in versions) == n * (n + 1) // 2


def test_twenty_concurrent_importers_sqlite(home: Path) -> None:
    get_settings().home.mkdir(parents=True, exist_ok=True)
    _concurrent_imports(home, Catalog(get_settings().catalog_url))


def test_twenty_concurrent_importers_postgres(
    home: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGEFLOW_CATALOG_URL", pg_url)
    get_settings.cache_clear()
    _concurrent_imports(home, Catalog(pg_url))


def test_lineage_walks_parents_and_finds_models(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.registry import client

    cat = Catalog.from_settings()
    cat.ensure_dataset("general", "raw")
    cat.ensure_dataset("general", "clean")
    recipe = [{"name": "exact_dedupe", "params": {}}]
    ops = [{"name": "exact_dedupe", "kept": 9, "dropped": 1, "modified": 0}]
    cat.commit_version("general", "raw", run_key="a", uri="file:///a", usage="sft", record_count=10)
    cat.commit_version(
        "general",
        "clean",
        run_key="b",
        uri="file:///b",
        usage="sft",
        record_count=9,
        parents=["general/raw@V1"],
        recipe=recipe,
        stats={"operators": ops},
    )
    c = client()
    c.create_registered_model("tiny-chat")
    run = c.create_run(c.get_experiment_by_name("Default").experiment_id)
    c.create_model_version(
        "tiny-chat",
        "file:///m",
        run_id=run.info.run_id,
        tags={"dataset_ref": "general/clean@V1", "method": "sft_lora"},
    )

    rc, out, err = cli(capsys, "dataset", "lineage", "general/clean@V1", "--models")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("general/clean@V1  [sft, ready]  9 records")
    assert "recipe: exact_dedupe" in lines[1] and "exact_dedupe: kept 9, dropped 1" in out
    assert any(line.startswith("  <- general/raw@V1") for line in lines)
    assert lines[-1].startswith("-> models:/tiny-chat/1  (sft_lora, MLflow run ")
    tree = cli_json(capsys, "dataset", "lineage", "general/clean@V1")
    assert tree["parents"][0]["ref"] == "general/raw@V1" and tree["parents"][0]["parents"] == []


def test_mix_publish_and_usage_rules(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, n in (("industry", 20), ("general", 200)):
        cli_json(capsys, "dataset", "create", f"law/{name}")
        f = home / f"{name}.jsonl"
        f.write_text(
            "".join(
                json.dumps(
                    {"context": [f"{name} 问题 {i}"], "target": f"{name} 答案 {i}。"}, ensure_ascii=False
                )
                + "\n"
                for i in range(n)
            ),
            encoding="utf-8",
        )
        cli_json(capsys, "dataset", "import", f"law/{name}", str(f), "--usage", "sft")
    mixed = cli_json(
        capsys,
        "dataset",
        "mix",
        "law/mixed",
        "--preset",
        "sft-industry-general",
        "--part",
        "ref=law/industry@V1,role=industry",
        "--part",
        "ref=law/general@latest,role=general",
    )
    assert mixed["ref"] == "law/mixed@V1" and mixed["parents"] == ["law/industry@V1", "law/general@V1"]
    shares = {p["part"]: p for p in mixed["mix"]["parts"]}
    assert shares["law/industry@V1"]["taken"] == 20 and shares["law/general@V1"]["taken"] == 60  # 1:3
    assert all(p["exact"] for p in shares.values())

    # not published yet: training refuses it; publishing makes it selectable, once
    cat = Catalog.from_settings()
    with pytest.raises(Exception, match="not published"):
        cat.select_for("law/mixed@V1", "sft_lora")
    pub = cli_json(
        capsys, "dataset", "publish", "law/mixed@V1", "--format", "openai", "--validation-count", "8"
    )
    assert pub["status"] == "published" and pub["export"]["counts"] == {"train": 72, "validation": 8}
    first = Path(pub["export"]["output_uri"].removeprefix("file://")) / "train"
    line = json.loads(next(first.glob("*.jsonl")).read_text(encoding="utf-8").splitlines()[0])
    assert [m["role"] for m in line["messages"]] == ["user", "assistant"]
    assert cat.select_for("law/mixed@V1", "sft_lora").publication["format"] == "openai"
    with pytest.raises(Exception, match="pretrain can only use pretrain data"):
        cat.select_for("law/mixed@V1", "pretrain")
    again = cli_json(
        capsys, "dataset", "publish", "law/mixed@V1", "--format", "openai", "--validation-count", "8"
    )
    assert again["published_at"] == pub["published_at"]
    rc, _, err = cli(capsys, "dataset", "publish", "law/mixed@V1", "--format", "sharegpt")
    assert rc == 1 and "already published" in err
    rc, out, _ = cli(capsys, "dataset", "lineage", "law/mixed@V1")
    assert "mix by dataset, seed 0: law/industry@V1 20/20 = 1/4, law/general@V1 60/200 = 3/4" in out
