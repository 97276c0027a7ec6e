"""Training recipes: bundled ones validate as TrainSpecs; bad ones fail naming the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import train_recipe
from tasks.train_recipe import TRAIN_RECIPES_DIR, TrainRecipeError, load_train_recipe

BUNDLED = sorted(p.stem for p in TRAIN_RECIPES_DIR.glob("*.yaml"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    from tasks.settings import get_settings

    monkeypatch.setenv("FORGEFLOW_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def no_import(monkeypatch):
    """Data resolution without the Spark import: raw files resolve to a fake cache URI."""
    seen = []

    def fake_import(path, fmt, usage):
        seen.append((path, fmt, usage))
        return f"file:///cache/{path.name}-{fmt}-{usage}"

    monkeypatch.setattr(train_recipe, "import_raw", fake_import)
    return seen


def test_the_debug_recipes_exist_for_every_method():
    for method in ("pretrain", "sft-full", "sft-lora", "prompt-tuning", "reward-model", "dpo", "distill"):
        assert f"debug-{method}" in BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_recipe_is_a_valid_train_spec(name, home, no_import):
    spec = load_train_recipe(name)
    assert spec.method.replace("_", "-") in name
    assert spec.run_key.startswith(f"cli-{name}-") and "/models/cli-" in spec.output_uri
    assert spec.train_uri  # the data resolved to a URI or a path that exists


def test_raw_files_are_imported_with_the_usage_of_the_method(home, no_import):
    spec = load_train_recipe("debug-sft-lora")
    (path, fmt, usage) = no_import[-1]
    assert path.name == "alpaca_en_demo.json" and fmt == "alpaca" and usage == "sft"
    assert spec.train_uri == "file:///cache/alpaca_en_demo.json-alpaca-sft" and spec.max_records == 300


def test_overrides_use_dotted_keys(home, no_import):
    spec = load_train_recipe("debug-pretrain", {"hyperparams.max_steps": 3, "register_as": None})
    assert spec.hyperparams.max_steps == 3 and spec.register_as is None


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "recipe.yaml"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_a_bad_field_is_reported_with_its_file_and_line(tmp_path, home, no_import):
    path = _write(
        tmp_path,
        "method: sft_full\n"
        "data:\n"
        "  train: ../shared/data/sft/alpaca_en_demo.json\n"
        "  format: alpaca\n"
        "hyperparams:\n"
        "  max_steps: 3\n"
        "  learning_rate: 0.5\n",
    )
    with pytest.raises(TrainRecipeError, match=rf"{path}:7: hyperparams.learning_rate: .*less than or equal"):
        load_train_recipe(path)


def test_unknown_and_missing_things_are_named(tmp_path, home, no_import):
    with pytest.raises(TrainRecipeError, match=r"recipe.yaml:3: data.formatt: Extra inputs"):
        load_train_recipe(_write(tmp_path, "method: pretrain\ndata:\n  formatt: txt\n  train: x\n"))
    with pytest.raises(TrainRecipeError, match=r"data.train: nowhere.jsonl is neither a catalogue reference"):
        load_train_recipe(_write(tmp_path, "method: pretrain\ndata: {train: nowhere.jsonl}\n"))
    with pytest.raises(TrainRecipeError, match=r"'method' is required"):
        load_train_recipe(_write(tmp_path, "data: {train: x}\n"))
    with pytest.raises(TrainRecipeError, match=r"give the training data as data.train"):
        load_train_recipe(_write(tmp_path, "method: pretrain\n"))
    with pytest.raises(TrainRecipeError, match=r"training recipe 'debug-nothing' not found .*debug-pretrain"):
        load_train_recipe("debug-nothing")


@pytest.mark.parametrize("name", ["debug-reward-model", "debug-dpo"])
def test_preference_files_are_imported_as_ranking_records(name, home, no_import):
    load_train_recipe(name)
    (path, fmt, usage) = no_import[-1]
    assert path.parent.name == "preference" and fmt == "preference" and usage == "reward_model"
