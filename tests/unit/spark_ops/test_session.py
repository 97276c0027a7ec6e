"""SparkResources -> Spark confs (no JVM)."""

from __future__ import annotations

import pytest

from spark_ops.session import is_local, local_cores, session_conf, submitted_conf
from tasks.specs import SparkResources


def test_local_master_sets_driver_memory_and_few_shuffle_partitions() -> None:
    conf = session_conf(SparkResources(driver_cores=2, driver_memory_gb=6), "local[3]")
    assert conf["spark.master"] == "local[3]"
    assert conf["spark.driver.memory"] == "6g"
    assert conf["spark.sql.shuffle.partitions"] == "6"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert "spark.executor.instances" not in conf


def test_cluster_master_gets_executor_resources() -> None:
    res = SparkResources(
        num_executors=3, executor_cores=2, executor_memory_gb=5, driver_cores=1, driver_memory_gb=3
    )
    conf = session_conf(res, "spark://head:7077")
    assert conf["spark.executor.instances"] == "3"
    assert conf["spark.executor.cores"] == "2"
    assert conf["spark.executor.memory"] == "5g"
    assert conf["spark.driver.cores"] == "1"
    assert conf["spark.driver.memory"] == "3g"
    assert conf["spark.sql.shuffle.partitions"] == "12"


def test_user_conf_is_applied_last() -> None:
    res = SparkResources(conf={"spark.sql.shuffle.partitions": "7", "spark.ui.enabled": "true"})
    conf = session_conf(res, "local[2]")
    assert conf["spark.sql.shuffle.partitions"] == "7"
    assert conf["spark.ui.enabled"] == "true"


@pytest.mark.parametrize(
    ("master", "local", "cores"), [("local", True, 1), ("local[4]", True, 4), ("local[2,3]", True, 2)]
)
def test_local_masters(master: str, local: bool, cores: int) -> None:
    assert is_local(master) is local
    assert local_cores(master) == cores


def test_cluster_masters_are_not_local() -> None:
    assert not is_local("yarn")
    assert not is_local("k8s://https://api:6443")
    with pytest.raises(ValueError):
        local_cores("yarn")


def test_spark_submit_settings_win_over_derived_ones() -> None:
    res = SparkResources(
        num_executors=2, executor_cores=2, executor_memory_gb=4, conf={"spark.sql.shuffle.partitions": "3"}
    )
    submitted = {
        "spark.master": "spark://head:7077",
        "spark.executor.memory": "1g",
        "spark.cores.max": "1",
        "spark.sql.shuffle.partitions": "9",
    }
    conf = session_conf(res, "spark://head:7077", submitted)
    assert "spark.master" not in conf  # the JVM already has it; nothing to override
    assert "spark.executor.memory" not in conf
    assert conf["spark.executor.cores"] == "2"  # not given to spark-submit: the spec's value
    assert conf["spark.sql.shuffle.partitions"] == "3"  # the spec's explicit conf still wins


def test_no_spark_submit_means_no_submitted_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert submitted_conf() == {}  # and no JVM was started to find that out
