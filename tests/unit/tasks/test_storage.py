from __future__ import annotations

import os

import pytest

from tasks.storage import Lake, LakeError, local_path, to_uri


@pytest.fixture
def lake(tmp_path):
    return Lake(tmp_path.as_uri())


def test_uri_joins_parts(lake, tmp_path):
    assert lake.uri("datasets", "/a/", "b") == f"{tmp_path.as_uri()}/datasets/a/b"


def test_text_json_round_trip(lake):
    uri = lake.uri("x", "y.json")
    lake.write_json(uri, {"a": "中文"})
    assert lake.read_json(uri) == {"a": "中文"}
    assert lake.exists(uri)


def test_write_is_atomic_no_temp_files_left(lake, tmp_path):
    uri = lake.uri("f.txt")
    lake.write_text(uri, "one")
    lake.write_text(uri, "two")
    assert lake.read_text(uri) == "two"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_missing_object_says_which(lake):
    with pytest.raises(LakeError, match="does not exist"):
        lake.read_text(lake.uri("nope.txt"))


def test_list_delete_and_move(lake):
    lake.write_text(lake.uri("d", "a.txt"), "a")
    lake.write_text(lake.uri("d", "sub", "b.txt"), "b")
    assert [u.rsplit("/", 1)[-1] for u in lake.list(lake.uri("d"))] == ["a.txt", "b.txt"]
    lake.move_dir(lake.uri("d"), lake.uri("e"))
    assert not lake.exists(lake.uri("d")) and lake.read_text(lake.uri("e", "sub", "b.txt")) == "b"
    with pytest.raises(LakeError, match="already exists"):
        lake.write_text(lake.uri("d", "x"), "x")
        lake.move_dir(lake.uri("d"), lake.uri("e"))
    lake.delete(lake.uri("e"))
    assert lake.list(lake.uri("e")) == []


def test_stage_and_fetch_are_the_lake_path_on_file(lake):
    with lake.stage(lake.uri("out")) as d:
        (d / "x.txt").write_text("x")
    with lake.fetch(lake.uri("out")) as p:
        assert (p / "x.txt").read_text() == "x"


def test_to_uri_and_local_path(tmp_path):
    assert to_uri(tmp_path) == tmp_path.resolve().as_uri()
    assert to_uri("s3://b/k") == "s3://b/k"
    assert local_path(tmp_path.as_uri()) == tmp_path
    with pytest.raises(LakeError):
        local_path("s3://b/k")
