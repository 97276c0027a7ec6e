"""The lake on S3 through boto3, against an S3-compatible endpoint on 127.0.0.1."""

from __future__ import annotations

import boto3
import pytest

from tasks.storage import Lake, LakeError


@pytest.fixture
def lake(s3_endpoint):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="forgeflow")
    return Lake("s3://forgeflow/lake", s3_endpoint)


def test_objects_round_trip(lake):
    uri = lake.uri("a", "b.json")
    lake.write_json(uri, {"中文": 1})
    assert lake.exists(uri) and lake.read_json(uri) == {"中文": 1}
    with pytest.raises(LakeError, match="does not exist"):
        lake.read_text(lake.uri("missing.txt"))


def test_directories_stage_fetch_move_delete(lake, tmp_path):
    with lake.stage(lake.uri("staged")) as d:
        (d / "data").mkdir()
        (d / "data" / "part-0.parquet").write_bytes(b"PAR1")
        (d / "manifest.json").write_text("{}")
    assert [u.rsplit("/", 1)[-1] for u in lake.list(lake.uri("staged"))] == ["part-0.parquet", "manifest.json"]
    with lake.fetch(lake.uri("staged")) as local:
        assert (local / "data" / "part-0.parquet").read_bytes() == b"PAR1"
    with lake.fetch(lake.uri("staged", "manifest.json")) as f:
        assert f.read_text() == "{}"
    lake.move_dir(lake.uri("staged"), lake.uri("final"))
    assert not lake.exists(lake.uri("staged")) and lake.exists(lake.uri("final", "manifest.json"))
    lake.delete(lake.uri("final"))
    assert lake.list(lake.uri("final")) == []


def test_failed_stage_publishes_nothing(lake):
    with pytest.raises(RuntimeError), lake.stage(lake.uri("broken")) as d:
        (d / "x").write_text("x")
        raise RuntimeError("engine crashed")
    assert not lake.exists(lake.uri("broken"))


def test_settings_select_s3(lake, s3_endpoint, ff_home, monkeypatch):
    from tasks.settings import get_settings

    monkeypatch.setenv("FORGEFLOW_LAKE_URI", "s3://forgeflow/lake2")
    monkeypatch.setenv("FORGEFLOW_S3_ENDPOINT_URL", s3_endpoint)
    get_settings.cache_clear()
    configured = Lake.from_settings()
    configured.write_text(configured.uri("probe.txt"), "ok")
    assert lake.read_text("s3://forgeflow/lake2/probe.txt") == "ok"
