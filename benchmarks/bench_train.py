"""Training throughput: Forgeflow's training engine against a bare transformers Trainer, same model, same data.

    .venv/bin/python benchmarks/bench_train.py                 # 3 interleaved rounds, 40 steps each
    .venv/bin/python benchmarks/bench_train.py --rounds 5 --steps 60 --append

Both sides pretrain the same tiny Llama (built from one config with one seed) on the same text (the bundled
Wikipedia and C4 samples), with the same tokenizer (BPE trained once on that text), sequence length, batch
size, learning rate, schedule and number of steps, in this process, one after the other, alternating which
goes first in each round:

- **forgeflow**: ``trainers.train.run(spec)`` — the engine as the DAG and ``forgeflow train`` run it: MLflow run,
  per-step metrics callback, non-padding token counting, packed blocks, saving and registration.
- **bare**: the transformers ``run_clm`` recipe — ``datasets`` map to tokenise, ``group_texts`` into blocks,
  ``DataCollatorForLanguageModeling(mlm=False)``, a plain ``Trainer`` with ``report_to="none"``.

Throughput is tokens per second of the training loop (the Trainer's ``train_runtime``; setup, tokenising and
saving are outside it on both sides). The ratio per round is forgeflow / bare; the median over rounds is
reported. Also reports the packing waste (tokens not trained on) of the engine's packer on this corpus at
several sequence lengths. Prints a Markdown section; ``--append`` adds it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("FORGEFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))

TINY = {
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 4000,
    "max_position_embeddings": 512,
}


def corpus(max_docs: int) -> list[str]:
    texts = [
        t for t in (DATA / "pretrain" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines() if t.strip()
    ]
    with open(DATA / "pretrain" / "c4_demo.jsonl", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts[:max_docs]


def hyper(args: argparse.Namespace) -> dict:
    return {
        "max_steps": args.steps,
        "batch_size": args.batch,
        "max_seq_length": args.seq,
        "learning_rate": 5e-4,
        "warmup_ratio": 0.05,
        "lr_scheduler": "cosine",
        "logging_steps": 10,
        "save_strategy": "no",
    }


def run_forgeflow(version_uri: str, args: argparse.Namespace, i: int) -> dict:
    from tasks.specs import TinyModelConfig, TrainSpec, default_hyperparams
    from tasks.storage import Lake
    from trainers.train import run

    spec = TrainSpec(
        run_key=f"bench-train-{i}-{time.time_ns()}",
        method="pretrain",
        base_model="tiny",
        tiny=TinyModelConfig(**TINY),
        train_uri=version_uri,
        validation_split=0,
        hyperparams=default_hyperparams("pretrain", **hyper(args)),
        output_uri=Lake.from_settings().uri("models", f"bench-{i}"),
        experiment="bench-train",
    )
    r = run(spec)
    return {"tokens_per_second": r["metrics"]["tokens_per_second"], "steps": r["steps"]}


def run_bare(texts: list[str], args: argparse.Namespace, i: int, workdir: Path) -> dict:
    """The transformers run_clm recipe with the same tokenizer, model config, seed and hyperparameters."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    from tasks.specs import TinyModelConfig
    from trainers.data import train_tokenizer
    from trainers.modeling import build_tiny_model

    set_seed(42)
    tokenizer = train_tokenizer(texts, TINY["vocab_size"])
    model = build_tiny_model(TinyModelConfig(**TINY), tokenizer, 42)
    block = args.seq

    def tokenize(batch):
        out = tokenizer(batch["text"], add_special_tokens=False)
        out["input_ids"] = [ids + [tokenizer.eos_token_id] for ids in out["input_ids"]]
        out["attention_mask"] = [m + [1] for m in out["attention_mask"]]
        return out

    def group_texts(examples):
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = (len(concatenated["input_ids"]) // block) * block
        return {k: [t[j : j + block] for j in range(0, total, block)] for k, t in concatenated.items()}

    ds = Dataset.from_dict({"text": texts}).map(tokenize, batched=True, remove_columns=["text"])
    ds = ds.map(group_texts, batched=True, batch_size=len(ds))
    hp = hyper(args)
    targs = TrainingArguments(
        output_dir=str(workdir / f"bare-{i}"),
        max_steps=hp["max_steps"],
        per_device_train_batch_size=hp["batch_size"],
        learning_rate=hp["learning_rate"],
        warmup_steps=hp["warmup_ratio"],
        lr_scheduler_type="cosine",
        weight_decay=0.1,
        optim="adamw_torch",  # the engine's optimizer (transformers 5 defaults to the fused variant)
        logging_steps=hp["logging_steps"],
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=ds,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    out = trainer.train()
    runtime = out.metrics["train_runtime"]
    tokens = trainer.state.global_step * args.batch * block
    return {"tokens_per_second": tokens / runtime, "steps": trainer.state.global_step}


def write_version(texts: list[str], root: Path) -> str:
    import pandas as pd

    (root / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts}).to_parquet(
        root / "data" / "part-0.parquet"
    )
    (root / "manifest.json").write_text(json.dumps({"records": len(texts)}))
    return root.as_uri()


def packing_waste(texts: list[str], lengths: list[int]) -> list[tuple[int, int, int, float]]:
    from trainers.data import pack_sequences, train_tokenizer

    tok = train_tokenizer(texts, TINY["vocab_size"])
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    rows = []
    for n in lengths:
        p = pack_sequences(ids, n, tok.eos_token_id)
        rows.append((n, p.total_tokens, len(p.blocks), p.waste))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--docs", type=int, default=1500)
    ap.add_argument("--append", action="store_true", help="append the section to benchmarks/RESULTS.md")
    args = ap.parse_args()

    import logging

    import torch

    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        os.environ["FORGEFLOW_HOME"] = str(work / "home")
        os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
        from tasks.settings import get_settings

        get_settings.cache_clear()
        texts = corpus(args.docs)
        uri = write_version(texts, work / "version")
        rows = []
        for i in range(args.rounds):
            order = ("forgeflow", "bare") if i % 2 == 0 else ("bare", "forgeflow")
            got = {}
            for side in order:
                got[side] = (
                    run_forgeflow(uri, args, i) if side == "forgeflow" else run_bare(texts, args, i, work)
                )
                print(f"round {i + 1} {side}: {got[side]['tokens_per_second']:.0f} tokens/s", flush=True)
            assert got["forgeflow"]["steps"] == got["bare"]["steps"] == args.steps
            rows.append(
                (i + 1, order[0], got["forgeflow"]["tokens_per_second"], got["bare"]["tokens_per_second"])
            )
        waste = packing_waste(texts, [128, 256, 512, 1024, 2048])

    ratios = [f / b for _, _, f, b in rows]
    median = statistics.median(ratios)
    verdict = "meets" if median >= 0.97 else "MISSES"
    cmd = "`.venv/bin/python benchmarks/bench_train.py " + " ".join(sys.argv[1:]) + "`"
    lines = [
        f"## Training throughput: engine vs bare transformers Trainer — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Command: {cmd.replace(' `', '`')}",
        f"Model: tiny Llama {TINY['num_hidden_layers']} layers × {TINY['hidden_size']} (vocab {TINY['vocab_size']}); "
        f"{args.steps} steps, batch {args.batch}, {args.seq}-token packed blocks, {len(texts)} documents "
        f"(wiki_demo + c4_demo); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU'}.",
        "",
        "| round | first | forgeflow tokens/s | bare Trainer tokens/s | ratio |",
        "|---|---|---|---|---|",
        *(f"| {r} | {first} | {f:.0f} | {b:.0f} | {f / b:.3f} |" for r, first, f, b in rows),
        "",
        f"**Median ratio {median:.3f}** (goal ≥ 0.97: {verdict}); range {min(ratios):.3f}–{max(ratios):.3f}.",
        "",
        "Packing waste of the engine's packer on this corpus (documents joined with eos and cut into blocks; only "
        "the last partial block is dropped):",
        "",
        "| block | tokens | blocks | waste |",
        "|---|---|---|---|",
        *(f"| {n} | {t} | {b} | {w:.3%} |" for n, t, b, w in waste),
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + section)
    return 0 if median >= 0.97 else 1


if __name__ == "__main__":
    raise SystemExit(main())
