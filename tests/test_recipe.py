"""Recipes: validation messages, overrides, and every shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tunelab.data.load import resolve_source
from tunelab.errors import TunelabError
from tunelab.objectives import objective_of
from tunelab.recipe import load_recipe, nearest_key, stage_recipes

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_recipe_parses_and_its_data_resolves(example):
    recipe = load_recipe(example)
    for each in [recipe, *stage_recipes(recipe)]:
        kinds = objective_of(each).registry_kinds
        for source in each.data.sources("train"):
            assert resolve_source(source, each.data, each.source_dir, kinds).file.is_file()


def test_examples_exist():
    assert any(p.name == "identity.yaml" for p in EXAMPLES)


def test_misspelled_key_names_line_and_nearest_key(tmp_path):
    path = write(tmp_path, "data:\n  train: [identity]\ntrain:\n  epoch: 2\n")
    with pytest.raises(TunelabError) as info:
        load_recipe(path)
    message = str(info.value)
    assert f"{path}:4" in message
    assert "unknown key `train.epoch`" in message
    assert "did you mean `train.epochs`?" in message


def test_key_in_the_wrong_section_points_to_the_right_one(tmp_path):
    path = write(tmp_path, "data:\n  train: [identity]\n  lr: 0.001\n")
    with pytest.raises(TunelabError, match=r"did you mean `train\.lr`"):
        load_recipe(path)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, "data:\n  train: [identity]\ntrain:\n  batch_size: four\n")
    with pytest.raises(TunelabError) as info:
        load_recipe(path)
    assert "`train.batch_size`" in str(info.value) and "'four'" in str(info.value)


def test_missing_required_key(tmp_path):
    path = write(tmp_path, "model:\n  path: smollm2-135m-instruct\n")
    with pytest.raises(TunelabError, match=r"missing required key `data`"):
        load_recipe(path)


def test_broken_yaml_gives_line(tmp_path):
    path = write(tmp_path, "data:\n  train: [identity\n")
    with pytest.raises(TunelabError, match=r"not valid YAML"):
        load_recipe(path)


def test_overrides_set_nested_values_and_are_validated(tmp_path):
    path = write(tmp_path, "data:\n  train: [identity]\n")
    recipe = load_recipe(path, ["train.epochs=2", "output=runs/x", "data.replace={a: b}"])
    assert recipe.train.epochs == 2 and recipe.output == "runs/x"
    assert recipe.data.replace == {"a": "b"}
    with pytest.raises(
        TunelabError, match=r"override `train\.epoch=2`.*did you mean `train\.epochs`"
    ):
        load_recipe(path, ["train.epoch=2"])
    with pytest.raises(TunelabError, match="has no `=`"):
        load_recipe(path, ["train.epochs"])


def test_nearest_key():
    assert nearest_key("trian") == "train"
    assert nearest_key("method.rank") in {"method.r", "method.alpha"}
    assert nearest_key("data.max_len") == "data.max_length"


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, "data:\n  train: [identity]\n"))
    again = load_recipe(write(tmp_path, recipe.to_yaml()))
    assert again.model_dump() == recipe.model_dump()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("data:\n  train: [identity]\ntrain:\n  epoch: 2\n", "did you mean `train.epochs`"),
        ("data:\n  train: [no_such_file.json]\n", "not a file"),
        ("model:\n  path: /nonexistent/model\ndata:\n  train: [identity]\n", "model.path"),
    ],
    ids=["misspelled", "missing-data-file", "missing-model"],
)
def test_cli_user_errors_exit_2_with_one_message(tmp_path, text, fragment):
    result = run_cli("train", str(write(tmp_path, text)), f"output={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert result.stderr.strip().startswith("error:")


def test_cli_missing_recipe_file(tmp_path):
    result = run_cli("train", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "does not exist" in result.stderr
