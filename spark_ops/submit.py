"""The engine on a Spark cluster, through spark-submit.

Build the executors' copy of the code once per code version, then submit this file with the spec::

    python -m spark_ops.submit --build-pyfiles build/forgeflow-pyfiles.zip
    spark-submit --master spark://HOST:7077 \\
        --conf spark.pyspark.python=/path/to/.venv/bin/python \\
        --py-files build/forgeflow-pyfiles.zip \\
        --executor-memory 4g --executor-cores 2 --total-executor-cores 4 \\
        spark_ops/submit.py SPEC_URI

The driver (client mode: PySpark cannot run its driver inside a standalone cluster) runs from the checkout
that holds this file, so recipes and word lists resolve against it; executors import ``spark_ops`` and
``tasks`` from the zip and need only the Python packages of ``spark.pyspark.python``. spark-submit's master
and resource flags win over ``FORGEFLOW_SPARK_MASTER`` and the spec's SparkResources (see
``spark_ops.session.build_session``). Executors read the inputs and write the version themselves, so
``output_uri`` and the inputs must be paths every node sees at the same place (a shared filesystem).
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _ROOT / "spark_ops":
    # Run as a script, sys.path[0] is spark_ops/ itself (its modules would shadow top-level names) and the
    # --py-files zip comes next; the driver must import this checkout instead.
    sys.path[0] = str(_ROOT)

PACKAGES = ("spark_ops", "tasks")


def build_pyfiles(target: str | Path) -> Path:
    """Zip the packages executors import (``spark_ops``, ``tasks``; sources only) for ``--py-files``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in PACKAGES:
            for path in sorted((_ROOT / package).rglob("*.py")):
                if "__pycache__" not in path.parts:
                    zf.write(path, path.relative_to(_ROOT).as_posix())
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--build-pyfiles"]:
        if len(argv) != 2:
            print("usage: python -m spark_ops.submit --build-pyfiles ZIP", file=sys.stderr)
            return 2
        print(build_pyfiles(argv[1]))
        return 0

    from spark_ops.session import submitted_conf

    master = submitted_conf().get("spark.master")
    if master:  # the settings (and so the manifest) name the master the job really runs on
        os.environ["FORGEFLOW_SPARK_MASTER"] = master
    from spark_ops import run
    from tasks.settings import get_settings

    get_settings.cache_clear()
    return run.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
