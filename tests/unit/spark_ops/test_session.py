"""SparkResources -> Spark confs (no JVM)."""

from __future__ import annotations

import pytest

from spark_ops.session import is_local, local_cores, session_conf
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
