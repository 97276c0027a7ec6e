"""Mixing and publishing on an s3:// lake (moto's S3 server on 127.0.0.1): staging prefix, _SUCCESS last."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from spark_ops.mix import mix
from spark_ops.publish import SUCCESS, completed_publication, publish
from spark_ops.session import build_session
from tasks.specs import MixSpec, PublishSpec, SparkResources
from tasks.storage import Lake

pytestmark = pytest.mark.slow
PRETRAIN = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("meta", pa.struct([("source", pa.string()), ("tags", pa.list_(pa.string()))])),
    ]
)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    resources = SparkResources(
        num_executors=1, executor_cores=1, executor_memory_gb=4, driver_cores=1, driver_memory_gb=2
    )
    session = build_session(resources, "mix-publish-s3", master="local[1]")
    yield session
    session.stop()


@pytest.fixture
def lake(s3_endpoint: str, ff_home: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    from tasks.settings import get_settings

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mixlake")
    monkeypatch.setenv("FORGEFLOW_LAKE_URI", "s3://mixlake/lake")
    monkeypatch.setenv("FORGEFLOW_S3_ENDPOINT_URL", s3_endpoint)
    get_settings.cache_clear()
    return Lake.from_settings()


def put_version(lake: Lake, tmp_path: Path, name: str, n: int) -> str:
    local = tmp_path / name
    (local / "data").mkdir(parents=True)
    rows = [
        {"id": f"{name}{i:03d}", "text": f"{name} 文本 {i}", "meta": {"source": name, "tags": []}}
        for i in range(n)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=PRETRAIN), local / "data" / "part-00000.parquet")
    (local / "manifest.json").write_text(json.dumps({"usage": "pretrain", "run_key": "fixture"}))
    uri = lake.uri("versions", name)
    lake.put_dir(local, uri)
    return uri


def test_mix_then_publish_on_s3(spark: SparkSession, lake: Lake, tmp_path: Path) -> None:
    industry = put_version(lake, tmp_path, "ind", 5)
    general = put_version(lake, tmp_path, "gen", 40)
    mixed_uri = lake.uri("versions", "mixed")
    parts = [
        {"uri": industry, "ref": "s/ind@V1", "role": "industry"},
        {"uri": general, "ref": "s/gen@V1", "role": "general"},
    ]
    spec = MixSpec(run_key="r1", parts=parts, preset="pretrain-industry-general", output_uri=mixed_uri)
    result = mix(spark, spec)
    assert [p["taken"] for p in result["parts"]] == [5, 30] and result["records_out"] == 35
    assert lake.read_json(f"{mixed_uri}/manifest.json")["parents"] == ["s/ind@V1", "s/gen@V1"]

    export = lake.uri("exports", "mixed")
    # what a publication killed while copying into place leaves: a staging prefix and a final without _SUCCESS
    lake.write_text(lake.uri("exports", ".mixed.staging-dead", "train", "part-00000.jsonl"), "{}\n")
    lake.write_text(f"{export}/train/part-00003.jsonl", "{}\n")
    assert completed_publication(lake, export) is None
    pub = publish(
        spark, PublishSpec(run_key="r1", version_uri=mixed_uri, output_uri=export, validation_count=5)
    )
    assert pub["counts"] == {"train": 30, "validation": 5}
    names = [u.removeprefix(lake.uri("exports") + "/") for u in lake.list(lake.uri("exports"))]
    assert sorted(names) == [
        "mixed/_SUCCESS",
        "mixed/publication.json",
        "mixed/train/part-00000.jsonl",
        "mixed/validation/part-00000.jsonl",
    ]
    assert lake.exists(f"{export}/{SUCCESS}")
    rows = lake.read_text(f"{export}/train/part-00000.jsonl").splitlines()
    assert len(rows) == 30 and all(
        t.startswith("mix:s/") for r in rows for t in json.loads(r)["meta"]["tags"]
    )
    again = publish(
        spark, PublishSpec(run_key="r1", version_uri=mixed_uri, output_uri=export, validation_count=5)
    )
    assert again["already_published"] is True
