"""``forgeflow lm ...``: train the character n-gram model that ``perplexity_filter`` scores with, and score text.

    forgeflow lm train ../shared/data/pretrain/wiki_demo.txt ../shared/data/sft/alpaca_zh_demo.json \\
        --output .forgeflow/lm/reference.npz
    forgeflow lm score .forgeflow/lm/reference.npz some.jsonl

Inputs are catalogue versions (``SCENE/NAME@Vn``: the version's records, e.g. a cleaned and published
corpus), or files or directories of ``.txt`` (one document per line), ``.jsonl`` / ``.json`` (records; the
text is the first of ``--field`` present, by default text, content, output, target, response, answer,
chosen) and ``.parquet`` (the same fields). Train on clean text of the kind the filter should keep.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_FIELDS = ("text", "content", "output", "target", "response", "answer", "chosen")
SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


class InputError(ValueError):
    """An input file that cannot be read as documents; the message names the file and line."""


def version_data(ref: str) -> Path:
    """The local directory of a catalogue version's record files (an s3:// lake is fetched once)."""
    import hashlib

    from tasks.catalog import Catalog
    from tasks.records import DATA_DIR
    from tasks.settings import get_settings
    from tasks.storage import Lake, local_path

    version = Catalog.from_settings().get_version(ref)
    data_uri = f"{version.uri.rstrip('/')}/{DATA_DIR}"
    if not data_uri.startswith("s3://"):
        return local_path(data_uri)
    target = get_settings().path("cache", "lm-data") / hashlib.sha256(data_uri.encode()).hexdigest()[:16]
    if not (target / ".complete").exists():
        Lake.from_settings().get_dir(data_uri, target)
        (target / ".complete").touch()
    return target


def resolve_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """(local paths, catalogue refs among the inputs): each ``SCENE/NAME@Vn`` becomes its version's data."""
    from tasks.catalog import REF_RE

    paths: list[str] = []
    refs: list[str] = []
    for raw in inputs:
        m = REF_RE.match(raw)
        if m and m["version"] and not Path(raw).exists():
            paths.append(str(version_data(raw)))
            refs.append(raw)
        else:
            paths.append(raw)
    return paths, refs


def _files(inputs: list[str]) -> list[Path]:
    out: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise InputError(f"{p}: unsupported file type {p.suffix!r}; use {', '.join(SUFFIXES)}")
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    if not out:
        raise InputError(f"no {'/'.join(SUFFIXES)} files in {', '.join(inputs)}")
    return out


def _text_of(record: Any, fields: tuple[str, ...]) -> str | None:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        return None
    for f in fields:
        v = record.get(f)
        if isinstance(v, str) and v.strip():
            return v
        if isinstance(v, dict) and isinstance(v.get("value"), str):  # ShareGPT-style {"from", "value"}
            return v["value"]
    return None


def documents(inputs: list[str], fields: tuple[str, ...] = DEFAULT_FIELDS) -> Iterator[str]:
    """Every document of the inputs, in file order; records without one of ``fields`` are skipped."""
    for path in _files(inputs):
        if path.suffix == ".txt":
            with path.open(encoding="utf-8") as f:
                yield from (line.rstrip("\n") for line in f if line.strip())
        elif path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from e
                    text = _text_of(record, fields)
                    if text:
                        yield text
        elif path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
            for record in data if isinstance(data, list) else [data]:
                text = _text_of(record, fields)
                if text:
                    yield text
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            present = [f for f in fields if f in table.column_names]
            if not present:
                raise InputError(f"{path}: none of the fields {', '.join(fields)} is a column")
            for record in table.select(present).to_pylist():
                text = _text_of(record, tuple(present))
                if text:
                    yield text


def cmd_train(args: argparse.Namespace) -> int:
    from spark_ops import lm
    from tasks.storage import Lake, to_uri

    fields = tuple(args.field) if args.field else DEFAULT_FIELDS
    paths, refs = resolve_inputs(args.inputs)
    model = lm.train(
        documents(paths, fields),
        order=args.order,
        max_chars=args.max_chars,
        holdout_every=args.holdout_every,
        min_chars=args.min_chars,
    )
    model.info["inputs"] = [str(Path(p).resolve()) for p in paths]
    model.info["datasets"] = refs  # lineage: the catalogue versions it was trained on
    data = model.to_bytes()
    if "://" in args.output:
        Lake.from_settings().write_bytes(args.output, data)
        where = args.output
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(out)
        where = to_uri(out)
    summary = {"model": where, "bytes": len(data), **model.header()}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        info = model.info
        print(
            f"trained a {model.order}-gram character model on {info['train_texts']} texts "
            f"({info['train_chars']} characters) in {info['train_seconds']} s: {where} ({len(data) / 1e6:.1f} MB)"
        )
        print(f"n-grams per order: {info['ngrams']}")
        if not model.reference:
            print("no language had 5 held-out texts: perplexity_filter will need max_perplexity")
        for language, ref in model.reference.items():
            quantiles = ", ".join(f"{k} {v}" for k, v in ref.items() if k != "docs")
            print(f"reference perplexity {language} ({ref['docs']} held-out texts): {quantiles}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import numpy as np

    from spark_ops import lm
    from tasks.storage import Lake

    if "://" in args.model:
        model = lm.CharNGramModel.from_bytes(Lake.from_settings().read_bytes(args.model), where=args.model)
    else:
        model = lm.load(args.model)
    fields = tuple(args.field) if args.field else DEFAULT_FIELDS
    texts = list(documents(resolve_inputs(args.inputs)[0], fields))
    ppl, language = model.score(texts, args.min_chars)
    if args.per_text:
        for text, p, lang in zip(texts, ppl, language, strict=True):
            row = {"perplexity": None if np.isnan(p) else round(float(p), 3), "language": lang}
            print(json.dumps({**row, "text": text[:80]}, ensure_ascii=False))
        return 0
    summary: dict[str, Any] = {"texts": len(texts), "unscored": int(np.isnan(ppl).sum()), "languages": {}}
    for lang in lm.LANGUAGES:
        values = ppl[(language == lang) & np.isfinite(ppl)]
        if len(values):
            summary["languages"][lang] = {
                "texts": int(len(values)),
                **lm.quantiles(values),
                "reference": model.reference.get(lang),
            }
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="the character n-gram model of perplexity_filter: train, score")
    lsub = p.add_subparsers(dest="lm_command", required=True)
    t = lsub.add_parser("train", help="train a character n-gram model (Kneser-Ney) on clean text")
    t.add_argument(
        "inputs",
        nargs="+",
        help="catalogue versions SCENE/NAME@Vn, .txt/.jsonl/.json/.parquet files or directories",
    )
    t.add_argument("--output", required=True, help="model file (.npz): a path or a lake URI")
    t.add_argument("--order", type=int, default=5, help="n-gram order in characters (1-10)")
    t.add_argument("--max-chars", type=int, default=20_000_000, help="train on at most this many characters")
    t.add_argument(
        "--holdout-every",
        type=int,
        default=10,
        help="hold out every k-th text (of >= --min-chars) for the per-language reference perplexities",
    )
    t.add_argument("--min-chars", type=int, default=50, help="shortest text that gets a reference score")
    t.add_argument("--field", action="append", help="record field holding the text (repeatable)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train)
    s = lsub.add_parser("score", help="perplexity of texts under a model: quantiles per language")
    s.add_argument("model", help="model file (.npz): a path or a lake URI")
    s.add_argument(
        "inputs",
        nargs="+",
        help="catalogue versions SCENE/NAME@Vn, .txt/.jsonl/.json/.parquet files or directories",
    )
    s.add_argument("--min-chars", type=int, default=50, help="shorter texts are not scored")
    s.add_argument("--field", action="append", help="record field holding the text (repeatable)")
    s.add_argument("--per-text", action="store_true", help="one JSON line per text instead of a summary")
    s.set_defaults(func=cmd_score)
