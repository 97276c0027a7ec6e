"""Desensitisation quality on the labelled PII set, Forgeflow's ``desensitize`` against datatrove's PIIFormatter.

    .venv/bin/python benchmarks/bench_quality_sets.py [--engines forgeflow,datatrove] [--append]

The set (tests/fixtures/spark_ops/pii.jsonl, built by quality_sets.py) holds realistic Chinese and English
sentences with valid PII of 11 types and look-alikes that must stay: failed checksums, order numbers,
prices, dates, serials. Recall per type = share of PII values gone from the output; decoys kept = share of
look-alikes still there. The issue's bar: recall >= 0.99 per type and >= 0.99 of decoys untouched.
Forgeflow runs the ``desensitize`` operator (placeholder action) in Spark; datatrove 0.10's PIIFormatter
(email and public IPv4 only) runs in benchmarks/.venv-datatrove, which bench_pretrain_clean.py creates.
The near-duplicate labelled set is scored by bench_pretrain_clean.py, which needs whole engine runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_pretrain_clean as bpc  # noqa: E402  (the datatrove venv and the quality-set module)

qs = bpc.qs
PII = bpc.FIXTURES / "pii.jsonl"

DT_PII = textwrap.dedent(
    """
    import json, sys
    from datatrove.data import Document
    from datatrove.pipeline.formatters import PIIFormatter

    fmt = PIIFormatter()
    with open(sys.argv[1], encoding="utf-8") as f, open(sys.argv[2], "w", encoding="utf-8") as out:
        for line in f:
            r = json.loads(line)
            out.write(json.dumps({"id": r["id"], "text": fmt.format(r["text"])}, ensure_ascii=False) + "\\n")
    """
)


def forgeflow_outputs(records: list[dict]) -> dict[str, str]:
    from spark_ops.canonical import schema
    from spark_ops.operators import OperatorContext
    from spark_ops.operators.desensitize import Desensitizer
    from spark_ops.session import build_session
    from tasks.specs import SparkResources

    resources = SparkResources(
        num_executors=1, executor_cores=2, executor_memory_gb=4, driver_cores=1, driver_memory_gb=2
    )
    spark = build_session(resources, "bench-quality-sets", master="local[2]")
    try:
        df = spark.createDataFrame([(r["id"], r["text"], ("pii", [])) for r in records], schema("pretrain"))
        op = Desensitizer(Desensitizer.Params(default_action="placeholder"))
        return {r["id"]: r["text"] for r in op.apply(df, OperatorContext(usage="pretrain")).collect()}
    finally:
        spark.stop()


def datatrove_outputs(records: list[dict]) -> dict[str, str]:
    python = bpc.ensure_datatrove()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, script = Path(tmp, "in.jsonl"), Path(tmp, "out.jsonl"), Path(tmp, "dt_pii.py")
        src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
        script.write_text(DT_PII)
        subprocess.run([str(python), str(script), str(src), str(dst)], check=True)
        return {r["id"]: r["text"] for r in map(json.loads, dst.read_text("utf-8").splitlines())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="forgeflow,datatrove", help="forgeflow, datatrove or both")
    ap.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    records = qs.read_jsonl(PII)
    runs = {"forgeflow": forgeflow_outputs, "datatrove": datatrove_outputs}
    scores = {eng: qs.pii_scores(records, runs[eng](records)) for eng in args.engines.split(",")}
    types = sorted({t for s in scores.values() for t in s if t != "decoys"})
    engines = list(scores)
    lines = [
        f"## Desensitisation on the labelled PII set — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        bpc.command_line("bench_quality_sets.py", argv),
        f"Set: {PII.relative_to(ROOT)}, {len(records)} sentences. Bar: recall >= 0.99 per type, decoys kept >= 0.99.",
        "",
        "| type | n | " + " | ".join(f"{e} recall" for e in engines) + " |",
        "|---|---|" + "---|" * len(engines),
    ]
    for t in types:
        n = next(s[t]["n"] for s in scores.values() if t in s)
        cells = " | ".join(f"{scores[e][t]['recall']:.3f}" if t in scores[e] else "-" for e in engines)
        lines.append(f"| {t} | {n} | {cells} |")
    n = scores[engines[0]]["decoys"]["n"]
    cells = " | ".join(f"{scores[e]['decoys']['kept']:.3f} kept" for e in engines)
    lines += [f"| decoys | {n} | {cells} |", ""]
    ff = scores.get("forgeflow")
    if ff:
        low = {t: s["recall"] for t, s in ff.items() if t != "decoys" and s["recall"] < 0.99}
        verdict = "meets" if not low and ff["decoys"]["kept"] >= 0.99 else f"misses ({low})"
        lines.append(
            f"- Forgeflow {verdict} the bar; lowest recall {min(s['recall'] for t, s in ff.items() if t != 'decoys'):.3f}"
        )
    bpc.emit(lines, args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
