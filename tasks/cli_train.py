"""``forgeflow train SPEC.yaml``: run the training engine locally on a recipe and print what it produced."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import yaml


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``--set hyperparams.max_steps=5`` pairs; values are YAML scalars (numbers, true/false, null)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. hyperparams.max_steps=5")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where to look at the run: the MLflow UI when tracking is a server, else the store and run id."""
    if tracking_uri.startswith("http"):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{tracking_uri} (experiment {experiment_id}, run {run_id}; `forgeflow up` serves the MLflow UI)"


def summary_text(spec: Any, result: dict[str, Any], tracking_uri: str) -> str:
    m = result.get("metrics") or {}
    lines = [
        f"trained {spec.method} of {spec.base_model} on {spec.dataset_ref or spec.train_uri}: "
        f"{result.get('steps')} steps",
        f"MLflow run: {result['mlflow_run_id']}  {run_url(tracking_uri, result['experiment_id'], result['mlflow_run_id'])}",
        f"model: {result['model_uri']}",
    ]
    if result.get("registered_model"):
        lines.append(f"registered: models:/{result['registered_model']}/{result['model_version']}")
    else:
        lines.append("registered: no (register_as is empty)")
    shown = {k: v for k, v in m.items() if v is not None}
    if shown:
        lines.append("metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    if "packing_waste" in result:
        lines.append(f"packing waste: {result['packing_waste']:.2%}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from tasks.runners import run_engine
    from tasks.settings import get_settings
    from tasks.train_recipe import load_train_recipe

    # The engine's output streams through the runner's logger: to stderr, so --json stdout stays clean.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    spec = load_train_recipe(args.spec, _overrides(args.set))
    if args.dry_run:
        print(spec.model_dump_json(indent=2))
        return 0
    result = run_engine("trainers.train", spec)
    tracking = get_settings().mlflow_tracking_uri
    if args.json:
        out = {k: v for k, v in result.items() if k != "status"}
        out["run_key"] = spec.run_key
        if result.get("registered_model") and result.get("model_version"):
            out["model_ref"] = f"models:/{result['registered_model']}/{result['model_version']}"
        print(json.dumps(out, ensure_ascii=False, indent=2, default=str))
    else:
        print(summary_text(spec, result, tracking))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from tasks.train_recipe import TRAIN_RECIPES_DIR

    names = ", ".join(sorted(p.stem for p in TRAIN_RECIPES_DIR.glob("*.yaml")))
    p = sub.add_parser(
        "train",
        help="train a model locally from a training recipe (a TrainSpec YAML)",
        description="Run the training engine on SPEC (a YAML path, or a bundled recipe name: "
        f"{names}) and print the MLflow run and the registered model version.",
    )
    p.add_argument("spec", help="training recipe: a YAML path or a bundled name (include/recipes/train/)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. hyperparams.max_steps=5"
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved TrainSpec and stop")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)
