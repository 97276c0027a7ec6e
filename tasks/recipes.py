"""Operator recipes: ordered operator lists saved as YAML templates under include/recipes/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tasks.settings import PROJECT_ROOT
from tasks.specs import OperatorStep

RECIPES_DIR = PROJECT_ROOT / "include" / "recipes"


class RecipeError(ValueError):
    pass


def recipe_names() -> list[str]:
    """Names of the saved recipes (the file stems), for Param enums."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> list[OperatorStep]:
    """The operator steps of a saved recipe (by name) or of a YAML file (by path)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RecipeError(f"recipe {name_or_path!r} not found; saved recipes: {', '.join(recipe_names())}")
    try:
        doc: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from e
    ops = doc.get("operators") if isinstance(doc, dict) else None
    if not isinstance(ops, list):
        raise RecipeError(f"{path}: expected a mapping with an 'operators' list")
    steps = []
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or "name" not in op:
            raise RecipeError(f"{path}: operators[{i}] needs a 'name'")
        steps.append(OperatorStep(name=op["name"], params=op.get("params") or {}))
    return steps
