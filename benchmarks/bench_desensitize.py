"""Desensitisation throughput before and after the folded-view detectors (issue 16), same corpus, same run.

    .venv/bin/python benchmarks/bench_desensitize.py                 # 25 MB corpus, 5 interleaved rounds
    .venv/bin/python benchmarks/bench_desensitize.py --mb 5 --rounds 3 --append

*Before* is the pure-Python scan of the ``desensitize`` operator at commit 9513e12 (the last one before the
shared detectors), loaded from git: its module text up to the pandas UDF, without the Spark imports, so both
sides are exactly the code a Python worker runs per text. *After* is ``tasks.pii.desensitize_text``. Both get
the operator's defaults (every type, action ``mask``) and every text of the corpus that
``bench_pretrain_clean.py`` builds (Wikipedia, C4, Alpaca en/zh and Tang-poem sentences; 10 % of documents
with PII written in plain ASCII, as the old detectors expect). The rounds alternate which side runs first; the
figure is the median over rounds of after-time / before-time. The Spark UDF around the scan is the same code
on both sides, so it is left out. Also reports what each side found (after must find at least as much).

A second table scores both sides on *typed forms*: the labelled set's generator (tests/fixtures/spark_ops/
quality_sets.py) with each value rewritten as people type it -- full-width digits and letters, digit groups
split by spaces (incl. no-break and ideographic), dashes of every kind, dots or middle dots, a label glued to
the number, a URL without its scheme -- and decoys beside it: recall per type (the value is gone) and decoys
kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEFORE_COMMIT = "9513e12"

_spec = importlib.util.spec_from_file_location(
    "bench_pretrain_clean", ROOT / "benchmarks" / "bench_pretrain_clean.py"
)
assert _spec and _spec.loader
bpc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bpc)


def load_before() -> types.ModuleType:
    """The old scan: the module text of ``spark_ops/operators/desensitize.py`` at BEFORE_COMMIT up to its
    pandas UDF, with the Spark and operator imports removed (the scan uses none of them)."""
    src = subprocess.run(
        ["git", "show", f"{BEFORE_COMMIT}:spark_ops/operators/desensitize.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    src = src[: src.index("def _scan_udf")]
    keep = [
        line
        for line in src.splitlines()
        if not line.startswith(("from pyspark", "from pydantic", "from spark_ops"))
    ]
    mod = types.ModuleType("desensitize_before")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile("\n".join(keep), f"{BEFORE_COMMIT}:desensitize.py", "exec"), mod.__dict__)  # noqa: S102
    return mod


def load_texts(mb: float) -> list[str]:
    corpus = bpc.OUT / f"corpus_{mb:g}mb_x1"
    bpc.build_corpus(mb, corpus)
    return [
        json.loads(line)["text"] for p in sorted(corpus.glob("*.jsonl")) for line in p.open(encoding="utf-8")
    ]


SEPARATORS = [" ", "\u00a0", "\u3000", "-", "\u2010", "\u2013", "\u2014", "\uff0d", ".", "\u00b7"]
LABELS = {"phone": "Tel", "id_card": "ID", "bank_card": "卡号", "imei": "IMEI", "passport": ""}
GROUPS = {"phone": (3, 4), "id_card": (6, 8), "bank_card": (4, 4, 4), "imei": (2, 6, 6), "passport": (5,)}


def full_width(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


def typed(kind: str, value: str, rng) -> str:
    """``value`` rewritten in one of the forms people type (or as it is, for the other types)."""
    if kind == "url":
        return value.split("://", 1)[1]
    if kind not in GROUPS:
        return full_width(value) if rng.random() < 0.5 else value
    plain = "".join(c for c in value if c.isalnum())
    if kind == "phone":
        plain = plain[-11:]
    form = rng.choice(["full_width", "grouped", "grouped_full_width", "glued"])
    if form.startswith("grouped"):
        sep, cuts, i, parts = rng.choice(SEPARATORS), GROUPS[kind], 0, []
        for n in cuts:
            parts.append(plain[i : i + n])
            i += n
        plain = sep.join([*parts, plain[i:]])
    if "full_width" in form:
        plain = full_width(plain)
    return (LABELS[kind] + plain) if form == "glued" else plain


def forms_set(per_type: int = 80) -> list[dict]:
    import random

    rng = random.Random(16)
    out = []
    for kind in bpc.qs.PII_TYPES:
        for i in range(per_type):
            value = typed(kind, bpc.qs.make_pii(kind, rng), rng)
            zh = i % 2 == 0
            sentence = (bpc.qs.ZH_TEMPLATES if zh else bpc.qs.EN_TEMPLATES)[kind].format(v=value)
            decoys = [bpc.qs.make_decoy(rng) for _ in range(rng.randint(1, 2))]
            parts = [sentence] + [
                rng.choice(bpc.qs.ZH_DECOY if zh else bpc.qs.EN_DECOY).format(d=d) for d in decoys
            ]
            rng.shuffle(parts)
            out.append(
                {
                    "id": f"f{len(out)}",
                    "text": ("" if zh else " ").join(parts),
                    "pii": [{"type": kind, "value": value}],
                    "decoys": decoys,
                }
            )
    return out


def run(fn, cfg, texts: list[str]) -> tuple[float, dict[str, int], int]:
    counts: dict[str, int] = {}
    changed = 0
    t0 = time.perf_counter()
    for t in texts:
        changed += fn(t, cfg, counts) is not t
    return time.perf_counter() - t0, counts, changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=25, help="corpus size in MB")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--append", action="store_true", help="add the section to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    from tasks import pii

    before = load_before()
    texts = load_texts(args.mb)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    sides = {
        "before": (
            before.desensitize_text,
            before.ScanConfig(before.ALL_TYPES, tuple((t, "mask") for t in before.ALL_TYPES), "forgeflow"),
        ),
        "after": (
            pii.desensitize_text,
            pii.ScanConfig(pii.ALL_TYPES, tuple((t, "mask") for t in pii.ALL_TYPES), "forgeflow"),
        ),
    }
    for fn, cfg in sides.values():  # warm: compile the patterns, load the suffix list
        fn(texts[0], cfg, {})
    times: dict[str, list[float]] = {"before": [], "after": []}
    found: dict[str, dict[str, int]] = {}
    changed: dict[str, int] = {}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            fn, cfg = sides[side]
            seconds, counts, n_changed = run(fn, cfg, texts)
            times[side].append(seconds)
            found[side], changed[side] = counts, n_changed
        print(
            f"round {r + 1}: " + ", ".join(f"{s} {times[s][-1]:.2f} s" for s in ("before", "after")),
            flush=True,
        )
    forms = forms_set()
    scores = {
        side: bpc.qs.pii_scores(forms, {r["id"]: fn(r["text"], cfg, {}) for r in forms})
        for side, (fn, cfg) in sides.items()
    }
    ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
    lines = [
        f"## desensitize before/after (issue 16) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        bpc.command_line("bench_desensitize.py", argv),
        "",
        f"Corpus: `bench_pretrain_clean` build at {args.mb:g} MB ({len(texts):,} texts, {mb:.1f} MB UTF-8). "
        f"Before: the scan at commit {BEFORE_COMMIT}; after: `tasks.pii`. Action `mask`, every type, one Python "
        f"process, {args.rounds} interleaved rounds.",
        "",
        "| side | median s | texts/s | MB/s | texts changed | found per type |",
        "|---|---|---|---|---|---|",
    ]
    for side in ("before", "after"):
        med = statistics.median(times[side])
        per_type = ", ".join(f"{k} {v}" for k, v in sorted(found[side].items()))
        lines.append(
            f"| {side} | {med:.2f} | {len(texts) / med:,.0f} | {mb / med:.2f} | {changed[side]:,} | {per_type} |"
        )
    lines += [
        "",
        f"**After / before time: median {statistics.median(ratios):.3f}** (rounds: "
        + ", ".join(f"{x:.3f}" for x in ratios)
        + "; goal ≤ 1.10).",
        "",
        f"Typed forms ({len(forms)} sentences, {len(bpc.qs.PII_TYPES)} types, full-width / grouped / glued / "
        "schemeless, decoys beside): recall per type and decoys kept.",
        "",
        "| side | " + " | ".join(bpc.qs.PII_TYPES) + " | decoys kept |",
        "|---|" + "---|" * (len(bpc.qs.PII_TYPES) + 1),
    ]
    for side in ("before", "after"):
        sc = scores[side]
        lines.append(
            f"| {side} | "
            + " | ".join(f"{sc[t]['recall']:.2f}" for t in bpc.qs.PII_TYPES)
            + f" | {sc['decoys']['kept']:.3f} |"
        )
    bpc.emit(lines, args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
