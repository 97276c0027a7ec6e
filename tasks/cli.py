"""The ``forgeflow`` command line. ``forgeflow --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, get_args

from tasks.specs import FORMAT_HELP, InputFormat, Modality, Usage

STATS_FILE = "stats.json"
QUARANTINE_FILE = "quarantine.jsonl"


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))
    else:
        print(obj)


def cmd_up(args: argparse.Namespace) -> int:
    from tasks import stack

    stack.start(timeout_s=args.timeout)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from tasks import stack

    stack.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tasks import stack

    _print(stack.status(), True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tasks.demo import run_demo

    return run_demo(max_eval_samples=args.eval_samples, keep_running=not args.stop_after)


def _process_summary(result: dict[str, Any], manifest: dict[str, Any], out: Path) -> str:
    lines = [
        f"read {manifest['records_in']} records: {manifest['accepted']} accepted, "
        f"{manifest['quarantined']} quarantined"
    ]
    for i, op in enumerate(result["operators"]):
        lines.append(
            f"  [{i}] {op['name']}: kept {op['kept']}, dropped {op['dropped']}, modified {op['modified']}"
        )
    lines.append(f"wrote {result['records_out']} records to {out} ({result['export']['format']})")
    lines.append(f"stats: {out / STATS_FILE}")
    if manifest["quarantined"]:
        lines.append(f"quarantine: {out / QUARANTINE_FILE}")
    return "\n".join(lines)


def cmd_process(args: argparse.Namespace) -> int:
    """Run a recipe on a local input with the Spark engine; records, stats and quarantine go to --output."""
    from spark_ops.output import Export
    from spark_ops.run import ImportRejected, run
    from tasks.recipes import load_recipe
    from tasks.records import MANIFEST, QUARANTINE_DIR
    from tasks.specs import InputSource, ProcessSpec

    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"input {args.input} does not exist")
    out = Path(args.output).resolve()
    spec_args = {
        "inputs": [
            InputSource(
                uri=str(source.resolve()), format=args.format, source=args.source, encoding=args.encoding
            )
        ],
        "usage": args.usage,
        "modality": args.modality,
        "labelled": not args.unlabelled,
        "operators": load_recipe(args.recipe),  # a bad recipe fails here, before Spark starts
        "max_reject_ratio": args.max_reject_ratio,
    }
    out.mkdir(parents=True, exist_ok=True)
    # The engine writes a full dataset version (Parquet + manifest); it lives in a scratch directory and
    # only the export, the statistics and the quarantine are kept.
    with tempfile.TemporaryDirectory(prefix=".forgeflow-process-", dir=out) as tmp:
        version = Path(tmp) / "version"
        spec = ProcessSpec(run_key=f"cli-{uuid.uuid4().hex[:12]}", output_uri=str(version), **spec_args)
        (out / QUARANTINE_FILE).unlink(missing_ok=True)
        try:
            result = run(spec, export=Export(out, args.output_format))
        except ImportRejected as e:  # point at the copy below, not at the scratch directory
            raise ImportRejected(
                re.sub(r"(?m)^Quarantine: .*$", f"Quarantine: {out / QUARANTINE_FILE}", str(e))
            ) from None
        finally:  # also when the import is rejected: the quarantine is what the user needs to read then
            quarantine = version / QUARANTINE_DIR / QUARANTINE_FILE
            if quarantine.exists():
                shutil.copyfile(quarantine, out / QUARANTINE_FILE)
        manifest = json.loads((version / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"] = {
        "data": result["export"]["files"],
        "format": args.output_format,
        "quarantine": QUARANTINE_FILE if manifest["quarantined"] else None,
    }
    manifest.update({"input": str(source), "recipe": args.recipe, "spec_fingerprint": None})
    manifest["id"] = (
        "the input record's own id where it had one, else the sha256 hex prefix of the record as imported"
    )
    (out / STATS_FILE).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2, default=str), encoding="utf-8"
    )
    if args.json:
        summary = {
            k: manifest[k] for k in ("records_in", "accepted", "quarantined", "dropped", "records_out")
        }
        summary["operators"] = result["operators"]
        summary["output"] = str(out)
        summary["files"] = manifest["files"]
        summary["stats"] = str(out / STATS_FILE)
        _print(summary, True)
    else:
        print(_process_summary(result, manifest, out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="forgeflow", description="Forgeflow: raw text to a served, evaluated LLM."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start Airflow (standalone) and MLflow on 127.0.0.1")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for health")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop services, engines, Airflow and MLflow (whole process groups)")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="health of the stack")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("demo", help="run the whole chain through Airflow's REST API on the bundled data")
    p.add_argument("--eval-samples", type=int, default=40, help="test questions to evaluate")
    p.add_argument("--stop-after", action="store_true", help="stop everything when done")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "process",
        help="run an operator recipe on a local file or directory with the Spark engine",
        description="Import INPUT onto the canonical schema, run RECIPE, and write the records to DIR as "
        "part-NNNNN.jsonl (or .parquet), keeping each input record's own id when it has one, with "
        "stats.json (per-operator kept/dropped/modified and samples) and quarantine.jsonl (rejected records).",
    )
    p.add_argument("input", help="input file or directory")
    p.add_argument(
        "--recipe", required=True, help="saved recipe name (include/recipes/NAME.yaml) or a YAML path"
    )
    p.add_argument(
        "--output", required=True, metavar="DIR", help="output directory (its part files are replaced)"
    )
    p.add_argument("--usage", choices=get_args(Usage), default="pretrain", help="what the data is for")
    p.add_argument(
        "--format",
        choices=get_args(InputFormat),
        default="auto",
        help="input format: " + "; ".join(f"{k}: {v}" for k, v in FORMAT_HELP.items()),
    )
    p.add_argument(
        "--modality",
        choices=get_args(Modality),
        default="text",
        help="image: vision Q&A {context, image, target}",
    )
    p.add_argument("--unlabelled", action="store_true", help="the records hold questions only (no target)")
    p.add_argument(
        "--encoding", choices=("utf-8", "gb18030"), default="utf-8", help="text encoding of the input files"
    )
    p.add_argument("--output-format", choices=("jsonl", "parquet"), default="jsonl", help="record format")
    p.add_argument("--source", default=None, help="source label for meta.source (default: the file name)")
    p.add_argument(
        "--max-reject-ratio", type=float, default=0.1, help="fail when more of the input is rejected"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_process)

    from tasks import cli_dataset, cli_lm, cli_model, cli_train

    cli_dataset.add_commands(sub)
    cli_train.add_commands(sub)
    cli_model.add_commands(sub)
    cli_lm.add_commands(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear one-line error for the user; tracebacks are for bugs
        print(f"forgeflow {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
