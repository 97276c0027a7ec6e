"""``forgeflow model ...``: registered model versions — lineage, and merging a LoRA adapter on request."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _out(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str) if as_json else text)


def cmd_show(args: argparse.Namespace) -> int:
    from tasks.model_ops import model_info

    info = model_info(args.model)
    text = "\n".join(
        f"{k}: {info[k]}"
        for k in ("ref", "format", "method", "dataset_ref", "base_model", "run_id", "code_version", "source")
    )
    _out(info, args.json, text)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from tasks.model_ops import merge_adapter

    r = merge_adapter(args.model, register_as=args.register_as)
    _out(
        r,
        args.json,
        f"merged {r['merged_from']} into {r['base_model']}: registered {r['model_ref']} (MLflow run {r['mlflow_run_id']})",
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="registered model versions: lineage, LoRA merge")
    msub = p.add_subparsers(dest="model_command", required=True)
    s = msub.add_parser("show", help="a version's lineage: run, method, dataset version, base model, format")
    s.add_argument("model", help="models:/NAME/VERSION (or latest)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)
    s = msub.add_parser("merge", help="merge a LoRA adapter version into its base and register the result")
    s.add_argument("model", help="models:/NAME/VERSION of an unmerged adapter (sft_lora, merge_lora false)")
    s.add_argument(
        "--register-as", default=None, help="registered name of the merged model (default: the same)"
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_merge)
