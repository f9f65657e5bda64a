"""Checks made before anything heavy loads: every file a recipe names exists and is readable,
and none of them lies in the folder the run will write."""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.data.load import find_path, resolve_source
from tunelab.errors import TunelabError
from tunelab.objectives import objective_of
from tunelab.recipe import Recipe, stage_recipes
from tunelab.templates import template_file


def recipe_inputs(recipe: Recipe) -> list[tuple[str, Path]]:
    """(what, path) for every file or folder the recipe reads, stages included."""
    found: list[tuple[str, Path]] = []
    if recipe.source_file is not None:
        found.append(("the recipe", recipe.source_file))
    for each in [recipe, *stage_recipes(recipe)]:
        found.extend(_inputs_of_one(each))
    unique: dict[Path, str] = {}
    for what, path in found:
        unique.setdefault(path, what)
    return [(what, path) for path, what in unique.items()]


def _inputs_of_one(recipe: Recipe) -> list[tuple[str, Path]]:
    where = recipe.source_dir
    found = []
    model = Path(recipe.model.path).expanduser()
    if model.exists():
        found.append(("model.path", model))
    template = template_file(recipe.model.template, where)
    if template is not None:
        found.append(("model.template", template))
    if recipe.data.registry:
        found.append(("data.registry", find_path(recipe.data.registry, where)))
    for split in ("train", "eval"):
        for item in recipe.data.sources(split):
            kinds = objective_of(recipe).registry_kinds
            resolved = resolve_source(item, recipe.data, where, kinds)
            if resolved.origin != "builtin":
                found.append((f"data.{split} `{item.path}`", resolved.file))
    if recipe.evaluate is not None:
        for key in ("prompts", "data", "fewshot_from"):
            value = getattr(recipe.evaluate, key)
            if value:
                found.append((f"evaluate.{key}", find_path(value, where)))
    return found


def check_readable(inputs: list[tuple[str, Path]]) -> None:
    """Each input exists and can be read by this user; else one sentence naming it."""
    for what, path in inputs:
        if not path.exists():
            raise TunelabError(f"{what}: {path} does not exist; check the path.")
        if path.is_file() and not os.access(path, os.R_OK):
            raise TunelabError(
                f"{what}: {path} cannot be read (permission denied); fix its permissions "
                f"(e.g. chmod u+r {path})."
            )


def preflight(recipe: Recipe) -> list[Path]:
    """Check the recipe's inputs; returns the paths the run folder must never hold."""
    inputs = recipe_inputs(recipe)
    check_readable(inputs)
    return [path for _, path in inputs]
