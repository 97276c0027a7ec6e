"""A perplexity model in an S3 lake (an S3-compatible endpoint on 127.0.0.1): trained straight into the
bucket by ``forgeflow lm train``, shipped to Spark under a content digest, fetched once per application."""

from __future__ import annotations

import boto3
import pytest

from spark_ops import lm
from spark_ops.operators import perplexity
from tasks.cli import main
from tasks.storage import Lake


class _Context:
    def __init__(self) -> None:
        self.files: list[str] = []

    def addFile(self, path: str) -> None:  # noqa: N802  (SparkContext's name)
        self.files.append(path)


class _Spark:
    def __init__(self) -> None:
        self.sparkContext = _Context()


def test_model_in_s3_is_shipped_by_content(s3_endpoint, tmp_path, monkeypatch, capsys) -> None:
    from tasks.settings import get_settings

    monkeypatch.setenv("FORGEFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FORGEFLOW_LAKE_URI", "s3://lmodels/lake")
    monkeypatch.setenv("FORGEFLOW_S3_ENDPOINT_URL", s3_endpoint)
    get_settings.cache_clear()
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="lmodels")
    docs = tmp_path / "docs.txt"
    docs.write_text("the cat sat on the mat and looked at the birds outside\n" * 30, encoding="utf-8")
    uri = "s3://lmodels/lake/models/ref.npz"
    try:
        assert main(["lm", "train", str(docs), "--output", uri, "--order", "3"]) == 0
        assert "trained a 3-gram character model" in capsys.readouterr().out

        spark = _Spark()
        name, header = perplexity.ship_model(spark, uri)
        assert header["order"] == 3
        assert perplexity.ship_model(spark, uri) == (name, header)  # once per application
        assert len(spark.sparkContext.files) == 1
        shipped = get_settings().home / "cache" / "lm" / name
        assert lm.CharNGramModel.from_bytes(shipped.read_bytes()).order == 3

        # retrained at the same URI: a new application ships it under a new name
        Lake.from_settings().write_bytes(uri, lm.train(["another corpus entirely"] * 5, order=2).to_bytes())
        other = _Spark()
        name2, header2 = perplexity.ship_model(other, uri)
        assert name2 != name and header2["order"] == 2
        assert not list((get_settings().home / "cache" / "lm").glob("download-*"))  # no leftovers
        with pytest.raises(ValueError, match="not found"):
            perplexity.PerplexityFilter.Params(model=str(tmp_path / "missing.npz"))
    finally:
        get_settings.cache_clear()
