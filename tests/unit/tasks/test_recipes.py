"""Every saved recipe parses and names operators the Spark engine knows, with valid parameters."""

from __future__ import annotations

import pytest

from tasks.recipes import RecipeError, load_recipe, recipe_names


@pytest.mark.parametrize("name", recipe_names())
def test_saved_recipes_are_valid(name):
    from spark_ops.operators import OPERATORS

    for i, step in enumerate(load_recipe(name)):
        assert step.name in OPERATORS, f"{name}: operators[{i}] {step.name!r} is unknown"
        OPERATORS[step.name].Params.model_validate(step.params)


def test_unknown_recipe_lists_the_saved_ones():
    with pytest.raises(RecipeError, match="standard-clean"):
        load_recipe("nope")


def test_recipe_file_errors_say_where(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("operators:\n  - params: {}\n")
    with pytest.raises(RecipeError, match=r"operators\[0\] needs a 'name'"):
        load_recipe(str(bad))
