"""``forgeflow train SPEC.yaml`` end to end: the recipe resolves, the engine runs as a child process through the
local runner, and the command prints the MLflow run and the registered model version."""

from __future__ import annotations

import json

import pytest

from tests.integration.trainers.conftest import TINY

pytestmark = pytest.mark.slow


def test_train_prints_the_run_and_the_registered_version(forgeflow_home, tmp_path, capsys):
    from tasks.cli import main
    from tasks.registry import client

    data = forgeflow_home / "lake" / "datasets" / "sft" / "v1"
    recipe = tmp_path / "tiny-sft.yaml"
    tiny = ", ".join(f"{k}: {v}" for k, v in TINY.items())
    recipe.write_text(
        f"method: sft_full\nbase_model: tiny\ntiny: {{{tiny}}}\n"
        f"data: {{train: {data}, max_records: 40}}\n"
        "hyperparams: {max_steps: 4, batch_size: 4, max_seq_length: 64, learning_rate: 5.0e-4, logging_steps: 2}\n"
        "register_as: cli-tiny-sft\n",
        encoding="utf-8",
    )
    assert main(["train", str(recipe), "--json", "--set", "hyperparams.max_steps=3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 3 and out["model_ref"] == "models:/cli-tiny-sft/1"
    run = client().get_run(out["mlflow_run_id"])
    assert run.data.tags["method"] == "sft_full" and run.data.params["max_records"] == "40"
    assert run.data.params["resolved.train_records"] in ("38", "39", "40")  # 40 minus the held-out share

    assert main(["train", str(recipe), "--set", "register_as=null", "--set", "hyperparams.max_steps=2"]) == 0
    text = capsys.readouterr().out
    assert "2 steps" in text and "registered: no" in text and "MLflow run:" in text


def test_a_bad_recipe_fails_before_training(forgeflow_home, tmp_path, capsys):
    from tasks.cli import main

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("method: sft_full\ndata: {train: /nowhere/at/all.jsonl}\n", encoding="utf-8")
    assert main(["train", str(recipe)]) == 1
    assert "data.train: /nowhere/at/all.jsonl is neither a catalogue reference" in capsys.readouterr().err
