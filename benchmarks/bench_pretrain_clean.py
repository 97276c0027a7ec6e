"""Throughput of a pretrain_clean-like chain: Forgeflow's Spark engine against datatrove, same corpus, same run.

    .venv/bin/python benchmarks/bench_pretrain_clean.py                    # 100 MB, both engines, 2 cores
    .venv/bin/python benchmarks/bench_pretrain_clean.py --mb 25 --scales 1,4 --engines forgeflow

Forgeflow runs ``python -m spark_ops.run SPEC`` on ``local[2]`` with normalize -> desensitize ->
sensitive_words -> exact_dedupe -> near_dedupe (abnormal-character filters live on another branch). datatrove
0.10 runs its closest chain in its own virtualenv (benchmarks/.venv-datatrove, created here if missing):
JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter -> PIIFormatter -> JsonlWriter + MinhashDedupSignature,
then MinhashDedupBuckets, MinhashDedupCluster and MinhashDedupFilter (its 4-stage MinHash), 2 workers.

The corpus is built deterministically from /work/shared/data: sentences of Wikipedia, C4, Alpaca (en, zh) and
Tang poems recombined into documents, shuffled, with 5 % exact copies, 10 % near-duplicates (2-5 % character
edits), 10 % documents with PII and 1 % with (demo) sensitive words. Both engines' near-duplicate precision and
recall are also measured on the labelled set tests/fixtures/spark_ops/near_dupes.jsonl. Prints a Markdown
section; ``--append`` adds it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
DT_VENV = ROOT / "benchmarks" / ".venv-datatrove"
DT_REQUIREMENTS = ["datatrove[processing]>=0.10,<0.11", "orjson", "spacy", "jieba"]
DATA = Path(os.environ.get("FORGEFLOW_SHARED_DATA", "/work/shared/data"))
FIXTURES = ROOT / "tests" / "fixtures" / "spark_ops"
SHARDS = 8
SEED = 7

_spec = importlib.util.spec_from_file_location("quality_sets", FIXTURES / "quality_sets.py")
assert _spec and _spec.loader
qs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qs)

# The saved recipe itself (include/recipes/pretrain_clean.yaml), exactly as `forgeflow process` runs it.
RECIPE = yaml.safe_load((ROOT / "include" / "recipes" / "pretrain_clean.yaml").read_text(encoding="utf-8"))[
    "operators"
]

# ---------------------------------------------------------------------------------------------- corpus


def _sentences() -> tuple[list[str], list[str]]:
    """English and Chinese sentence pools from the shared demo data."""
    en_texts = [line for line in (DATA / "pretrain/wiki_demo.txt").read_text(encoding="utf-8").splitlines()]
    en_texts += [json.loads(x)["text"] for x in (DATA / "pretrain/c4_demo.jsonl").open(encoding="utf-8")]
    en_texts += [
        r["output"] for r in json.loads((DATA / "sft/alpaca_en_demo.json").read_text(encoding="utf-8"))
    ]
    zh_texts = [
        r["output"] for r in json.loads((DATA / "sft/alpaca_zh_demo.json").read_text(encoding="utf-8"))
    ]
    for f in sorted((DATA / "corpus/tang_poems").glob("*.json")):
        zh_texts += ["".join(p["paragraphs"]) for p in json.loads(f.read_text(encoding="utf-8"))]
    en = sorted(
        {s.strip() for t in en_texts for s in re.split(r"(?<=[.!?])\s+|\n+", t) if len(s.strip()) > 30}
    )
    zh = sorted(
        {s.strip() for t in zh_texts for s in re.split(r"(?<=[。！？])|\n+", t) if len(s.strip()) > 8}
    )
    return en, zh


def build_corpus(target_mb: float, directory: Path) -> dict:
    """Write ``SHARDS`` JSONL files of about ``target_mb`` MB in ``directory``; returns counts."""
    marker = directory.with_name(
        directory.name + ".json"
    )  # beside, not inside: the engines read the directory
    if marker.exists():
        return json.loads(marker.read_text())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = random.Random(SEED)
    en, zh = _sentences()
    zh_alphabet = "".join(sorted({c for s in zh[:5000] for c in s if "\u4e00" <= c <= "\u9fff"}))
    demo_words = ["示例暴力词1", "demo-politics-word-2", "示例涉黄词3"]
    docs: list[str] = []
    size = 0
    counts = {"exact": 0, "near": 0, "pii": 0, "sensitive": 0}
    target = target_mb * 1_000_000
    while size < target:
        k = rng.random()
        if docs and k < 0.05:
            doc = rng.choice(docs)
            counts["exact"] += 1
        elif docs and k < 0.15:
            src = rng.choice(docs)
            alpha = zh_alphabet if re.search("[\u4e00-\u9fff]", src) else "abcdefghijklmnopqrstuvwxyz"
            doc = qs.edit(src, rng.uniform(0.02, 0.05), rng, alpha)
            counts["near"] += 1
        else:
            if rng.random() < 0.5:
                doc = " ".join(rng.choice(en) for _ in range(rng.randint(6, 20)))
                templates = qs.EN_TEMPLATES
            else:
                doc = "".join(rng.choice(zh) for _ in range(rng.randint(6, 24)))
                templates = qs.ZH_TEMPLATES
            if rng.random() < 0.10:
                kind = rng.choice(qs.PII_TYPES)
                doc += " " + templates[kind].format(v=qs.make_pii(kind, rng))
                counts["pii"] += 1
            if rng.random() < 0.01:
                doc += " " + rng.choice(demo_words)
                counts["sensitive"] += 1
        docs.append(doc)
        size += len(doc.encode("utf-8")) + 30
    order = list(range(len(docs)))
    rng.shuffle(order)
    files = [(directory / f"part-{i:02d}.jsonl").open("w", encoding="utf-8") for i in range(SHARDS)]
    for n, i in enumerate(order):
        files[n % SHARDS].write(json.dumps({"id": f"d{i:08d}", "text": docs[i]}, ensure_ascii=False) + "\n")
    for f in files:
        f.close()
    info = {"docs": len(docs), "bytes": sum(p.stat().st_size for p in directory.glob("*.jsonl")), **counts}
    marker.write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------------------------------------- running


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, int, int]:
    """Run ``cmd``; returns (wall seconds, exit code, peak RSS in bytes of the whole process tree)."""
    peak = 0
    done = threading.Event()
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        root = psutil.Process(proc.pid)

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    procs = [root, *root.children(recursive=True)]
                    total = 0
                    for p in procs:
                        with contextlib.suppress(psutil.Error):
                            total += p.memory_info().rss
                    peak = max(peak, total)
                except psutil.Error:
                    pass
                done.wait(0.2)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        rc = proc.wait()
        done.set()
        t.join()
    return time.monotonic() - started, rc, peak


def run_forgeflow(corpus: Path, work: Path, recipe: list[dict], tag: str) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = {
        "run_key": f"bench-{tag}",
        "inputs": [{"uri": str(corpus), "format": "jsonl"}],
        "usage": "pretrain",
        "operators": recipe,
        "output_uri": str(work / "out"),
        "max_reject_ratio": 0.0,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "FORGEFLOW_HOME": str(work / "home"),
        "FORGEFLOW_SPARK_MASTER": "local[2]",
        "PYSPARK_PYTHON": sys.executable,
    }
    secs, rc, peak = run_measured(
        [sys.executable, "-m", "spark_ops.run", str(work / "spec.json")], env, work / "engine.log"
    )
    if rc != 0:
        raise RuntimeError(f"forgeflow failed (exit {rc}); see {work / 'engine.log'}")
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    return {"seconds": secs, "peak_rss": peak, "manifest": manifest}


DT_SCRIPT = textwrap.dedent(
    '''
    """datatrove's closest chain to pretrain_clean (written and run by bench_pretrain_clean.py)."""
    import sys
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    def main():
        corpus, work, lang, filters, workers = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
        config = MinhashConfig()
        tasks = workers
        steps = [JsonlReader(corpus)]
        if filters:
            steps += [GopherRepetitionFilter(language=lang), GopherQualityFilter(language=lang), PIIFormatter()]
        steps += [JsonlWriter(f"{work}/filtered"), MinhashDedupSignature(f"{work}/sigs", config=config, language=lang)]
        LocalPipelineExecutor(steps, tasks=tasks, workers=workers, logging_dir=f"{work}/logs/1").run()
        LocalPipelineExecutor(
            [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)],
            tasks=config.num_buckets, workers=workers, logging_dir=f"{work}/logs/2",
        ).run()
        LocalPipelineExecutor(
            [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove_ids", config=config)],
            tasks=1, logging_dir=f"{work}/logs/3",
        ).run()
        LocalPipelineExecutor(
            [JsonlReader(f"{work}/filtered"), MinhashDedupFilter(f"{work}/remove_ids"), JsonlWriter(f"{work}/final")],
            tasks=tasks, workers=workers, logging_dir=f"{work}/logs/4",
        ).run()


    if __name__ == "__main__":  # datatrove's pool starts its workers by re-importing this file
        main()
    '''
)


def ensure_datatrove() -> Path:
    python = DT_VENV / "bin" / "python"
    if not python.exists():
        uv = shutil.which("uv")
        if uv is None:
            raise RuntimeError("uv is needed to create benchmarks/.venv-datatrove")
        subprocess.run([uv, "venv", "-q", "-p", "3.11", str(DT_VENV)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python), *DT_REQUIREMENTS], check=True)
    return python


def run_datatrove(corpus: Path, work: Path, lang: str, filters: bool, workers: int = 2) -> dict:
    python = ensure_datatrove()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = work / "dt_chain.py"
    script.write_text(DT_SCRIPT)
    env = {**os.environ, "DATATROVE_COLORIZE_LOGS": "0"}
    cmd = [str(python), str(script), str(corpus), str(work), lang, "1" if filters else "0", str(workers)]
    secs, rc, peak = run_measured(cmd, env, work / "engine.log")
    if rc != 0:
        raise RuntimeError(f"datatrove failed (exit {rc}); see {work / 'engine.log'}")
    import gzip

    kept = 0
    ids = set()
    for f in sorted((work / "final").glob("*.jsonl*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                kept += 1
                ids.add(json.loads(line)["id"])
    return {"seconds": secs, "peak_rss": peak, "kept": kept, "ids": ids}


def labelled_scores(lang: str, engines: list[str]) -> dict:
    """Near-duplicate precision / recall of both engines on the labelled set."""
    records = qs.read_jsonl(FIXTURES / "near_dupes.jsonl")
    all_ids = {r["id"] for r in records}
    work = OUT / "labelled"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    # two shards so both datatrove tasks get input
    for i in range(2):
        with (corpus / f"part-{i}.jsonl").open("w", encoding="utf-8") as f:
            for r in records[i::2]:
                f.write(json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) + "\n")
    out = {}
    if "forgeflow" in engines:
        run_forgeflow(corpus, work / "forgeflow", [{"name": "near_dedupe"}], "labelled")
        import pyarrow.parquet as pq

        # the engine's id is a content hash; map back through the text
        text_ids: dict[str, list[str]] = {}
        for r in records:
            text_ids.setdefault(r["text"], []).append(r["id"])
        kept_texts = set(
            pq.read_table(work / "forgeflow" / "out" / "data", columns=["text"]).column("text").to_pylist()
        )
        kept = {text_ids[t][0] for t in kept_texts}
        out["forgeflow"] = qs.near_dupe_scores(records, all_ids - kept)
    if "datatrove" in engines:
        dt = run_datatrove(corpus, work / "datatrove", lang, filters=False)
        out["datatrove"] = qs.near_dupe_scores(records, all_ids - dt["ids"])
    return out


def command_line(script: str, argv: list[str] | None) -> str:
    """The RESULTS.md line that says how a section was produced."""
    return (
        "Command: `" + " ".join([".venv/bin/python", f"benchmarks/{script}", *(argv or sys.argv[1:])]) + "`"
    )


def emit(lines: list[str], append: bool) -> None:
    """Print a report section; with ``append``, add it to benchmarks/RESULTS.md too."""
    report = "\n".join(lines) + "\n"
    print(report)
    if append:
        with (ROOT / "benchmarks" / "RESULTS.md").open("a", encoding="utf-8") as f:
            f.write("\n" + report)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100, help="corpus size at scale 1, in MB")
    ap.add_argument("--scales", default="1", help="comma-separated input multiples, e.g. 1,4")
    ap.add_argument("--engines", default="forgeflow,datatrove", help="forgeflow, datatrove or both")
    ap.add_argument("--datatrove-scales", default="1", help="scales datatrove runs at (it is the slow one)")
    ap.add_argument("--dt-language", default="cmn", help="datatrove language (cmn: jieba words for Chinese)")
    ap.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    engines = args.engines.split(",")
    scales = [int(s) for s in args.scales.split(",")]
    dt_scales = {int(s) for s in args.datatrove_scales.split(",")}
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [
        f"## pretrain_clean vs datatrove — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        command_line("bench_pretrain_clean.py", argv),
        f"Machine: {psutil.cpu_count()} CPUs visible, engines on 2 cores (Spark local[2]; datatrove 2 workers).",
        "",
        "| scale | corpus | docs | engine | seconds | docs/s | MB/s | peak RSS (tree) | kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results: dict[tuple[int, str], dict] = {}
    for scale in scales:
        corpus = OUT / f"corpus_{args.mb:g}mb_x{scale}"
        info = build_corpus(args.mb * scale, corpus)
        print(f"corpus x{scale}: {info}", flush=True)
        if "forgeflow" in engines:
            r = run_forgeflow(corpus, OUT / f"ff_x{scale}", RECIPE, f"x{scale}")
            r["kept"] = r["manifest"]["records_out"]
            results[(scale, "forgeflow")] = r
            print(
                f"forgeflow x{scale}: {r['seconds']:.1f}s, steps {[(o['name'], o['seconds'], o['dropped']) for o in r['manifest']['operators']]}",
                flush=True,
            )
        if "datatrove" in engines and scale in dt_scales:
            r = run_datatrove(corpus, OUT / f"dt_x{scale}", args.dt_language, filters=True)
            results[(scale, "datatrove")] = r
            print(f"datatrove x{scale}: {r['seconds']:.1f}s", flush=True)
        for eng in ("forgeflow", "datatrove"):
            r = results.get((scale, eng))
            if r:
                lines.append(
                    f"| {scale}× | {info['bytes'] / 1e6:.0f} MB | {info['docs']} | {eng} | {r['seconds']:.1f} | "
                    f"{info['docs'] / r['seconds']:.0f} | {info['bytes'] / 1e6 / r['seconds']:.2f} | "
                    f"{r['peak_rss'] / 2**30:.2f} GiB | {r['kept']} |"
                )
    lines.append("")
    for scale in scales:
        ff, dt = results.get((scale, "forgeflow")), results.get((scale, "datatrove"))
        if ff and dt:
            lines.append(
                f"- {scale}×: Forgeflow / datatrove docs/s = **{dt['seconds'] / ff['seconds']:.2f}×**"
            )
    if len(scales) > 1 and all((s, "forgeflow") in results for s in scales):
        base = results[(scales[0], "forgeflow")]["seconds"]
        for s in scales[1:]:
            t = results[(s, "forgeflow")]["seconds"]
            lines.append(f"- Forgeflow scaling: {s / scales[0]:g}× input took {t / base:.2f}× the time")
    ff1 = results.get((scales[0], "forgeflow"))
    if ff1:
        steps = ", ".join(f"{o['name']} {o['seconds']:.0f}s" for o in ff1["manifest"]["operators"])
        timings = ff1["manifest"]["timings"]
        lines.append(f"- Forgeflow {scales[0]}× time split: {timings}; operators: {steps}")
    scores = labelled_scores(args.dt_language, engines)
    for eng, s in scores.items():
        lines.append(
            f"- near-duplicate labelled set ({FIXTURES.name}/near_dupes.jsonl), {eng}: precision "
            f"{s['precision']:.3f}, recall {s['recall']:.3f} (tp {s['tp']}, fp {s['fp']}, fn {s['fn']})"
        )
    emit(lines, args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
