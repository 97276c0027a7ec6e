"""The SparkSession of one engine process, built from Settings and the spec's SparkResources."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping

from pyspark.sql import SparkSession

from tasks.settings import get_settings
from tasks.specs import SparkResources

log = logging.getLogger("forgeflow.spark_ops")
_LOCAL_MASTER = re.compile(r"^local(?:\[(?P<n>\*|\d+)(?:,\s*\d+)?\])?$")


def is_local(master: str) -> bool:
    """True for ``local``, ``local[N]``, ``local[*]`` and ``local[N,F]`` masters."""
    return bool(_LOCAL_MASTER.match(master.strip()))


def local_cores(master: str) -> int:
    """Worker threads of a local master (``local[*]`` means every core of this machine)."""
    m = _LOCAL_MASTER.match(master.strip())
    if not m:
        raise ValueError(f"{master!r} is not a local Spark master")
    n = m.group("n")
    if n is None:
        return 1
    if n == "*":
        return os.cpu_count() or 1
    return int(n)


def submitted_conf() -> dict[str, str]:
    """The confs spark-submit started this driver with; empty when this process was not started by it.

    spark-submit starts the driver's JVM first and hands Python its gateway in ``PYSPARK_GATEWAY_PORT``;
    its ``--master``, resource flags, ``--conf`` and ``spark-defaults.conf`` are then JVM system properties,
    which ``SparkConf()`` reads. Without that variable no JVM exists yet and none is started here (local
    mode must start it later with ``spark.driver.memory``).
    """
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def session_conf(
    resources: SparkResources, master: str, submitted: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Spark confs for ``master``: pure, so the SparkResources mapping is testable without a JVM.

    ``submitted`` holds what spark-submit already set (:func:`submitted_conf`): those keys win over what
    is derived here from SparkResources, since they were chosen for this launch (and the driver JVM's own
    settings cannot change any more); only the spec's explicit ``conf`` still wins over them.
    """
    conf = {
        "spark.master": master,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        # JSON with a repeated key is common in scraped data; keep the last value instead of rejecting it.
        "spark.sql.variant.allowDuplicateKeys": "true",
        # A recipe compiles to very deep expression trees; adaptive execution renders the whole plan as a
        # string at every stage update, which took most of the driver's time and 2 GiB of heap (OOM in local
        # mode on pretrain_clean). Truncated plan strings only affect explain() and the UI.
        "spark.sql.maxPlanStringLength": "20000",
        "spark.driver.memory": f"{resources.driver_memory_gb}g",
    }
    if is_local(master):
        # The driver is the only JVM; the default 200 shuffle partitions would mean 200 tiny tasks per shuffle.
        cores = local_cores(master)
        conf["spark.sql.shuffle.partitions"] = str(max(2, 2 * cores))
        conf["spark.default.parallelism"] = str(max(2, 2 * cores))
        # Everything runs in this JVM: listen on loopback only (by default Spark binds the machine's
        # outward address when the hostname resolves to 127.0.0.1).
        conf["spark.driver.host"] = "127.0.0.1"
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    else:
        total_cores = resources.num_executors * resources.executor_cores
        conf.update(
            {
                "spark.executor.instances": str(resources.num_executors),
                "spark.executor.cores": str(resources.executor_cores),
                "spark.executor.memory": f"{resources.executor_memory_gb}g",
                "spark.driver.cores": str(resources.driver_cores),
                "spark.sql.shuffle.partitions": str(max(2, 2 * total_cores)),
                "spark.default.parallelism": str(max(2, 2 * total_cores)),
            }
        )
    conf.update(resources.conf)  # the user's explicit confs win over everything above
    if submitted:
        conf = {k: v for k, v in conf.items() if k not in submitted or k in resources.conf}
    return conf


def build_session(resources: SparkResources, app_name: str, master: str | None = None) -> SparkSession:
    """Start (or join) the process's SparkSession.

    ``master`` defaults to ``FORGEFLOW_SPARK_MASTER``. In local mode the JVM starts inside this process, so
    ``spark.driver.memory`` takes effect here; on a cluster the same confs go to the executors. Under
    spark-submit (``spark_ops/submit.py``) the JVM already runs: its ``--master`` and other settings are
    kept, not overridden by ``master`` or by what SparkResources imply.
    """
    master = master or get_settings().spark_master
    submitted = submitted_conf()
    if submitted.get("spark.master"):
        if submitted["spark.master"] != master:
            log.info(
                "spark-submit chose master %s; not overriding it with %s", submitted["spark.master"], master
            )
        master = submitted["spark.master"]
    if is_local(master):
        # Python workers (pandas UDFs) must import this environment's packages (pandas, pyarrow, opencc,
        # pyahocorasick), not whatever `python3` is first on PATH; PySpark reads the variable at start.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    for key, value in session_conf(resources, master, submitted).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
