"""Token-budget batches: whole samples up to a token budget per pass, the loss of the same
samples in one batch, exact resume, stages, the estimate, and one sentence where it cannot
apply."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

import tunelab
from tests.training.test_resume import DATA, adapter_weights, write_recipe
from tunelab.data.token_batches import TokenBudgetSampler, budget_batches
from tunelab.errors import TunelabError


def test_batches_hold_every_sample_once_within_the_budget_and_nearly_full():
    rng = random.Random(0)
    lengths = [rng.randint(20, 900) for _ in range(3000)]
    batches = budget_batches(lengths, 4096)
    assert sorted(i for batch in batches for i in batch) == list(range(3000))
    sizes = [sum(lengths[i] for i in batch) for batch in batches]
    assert max(sizes) <= 4096
    assert sum(lengths) / (4096 * len(batches)) > 0.97  # best fit leaves little room
    assert budget_batches(lengths, 4096) == batches  # made the same way every time
    assert budget_batches([5000, 10], 4096) == [[0], [1]]  # too long for any budget: alone


def _best_fit_keeping_every_batch(lengths: list[int], budget: int) -> list[list[int]]:
    """Best fit decreasing as stated: each sample, longest first, into the fullest batch it
    fits (the earliest of equals), else a batch of its own; every batch searched each time."""
    batches, room = [], []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [(free, batch) for free, batch in room if free >= lengths[index]]
        if fits:
            free, batch = min(fits)
            room.remove((free, batch))
            batches[batch].append(index)
            room.append((free - lengths[index], batch))
        else:
            batches.append([index])
            room.append((max(budget - lengths[index], 0), len(batches) - 1))
    return batches


@pytest.mark.parametrize("low, high, budget", [(20, 900, 4096), (1, 60, 64), (100, 5000, 4096)])
def test_batches_are_those_of_plain_best_fit(low, high, budget):
    """budget_batches makes exactly those batches (in the last case some samples are over
    the budget, each alone)."""
    rng = random.Random(low)
    lengths = [rng.randint(low, high) for _ in range(600)]
    assert budget_batches(lengths, budget) == _best_fit_keeping_every_batch(lengths, budget)


def test_each_epoch_visits_the_same_batches_in_its_own_order():
    sampler = TokenBudgetSampler([30, 50, 70, 90, 20, 60, 40, 80] * 8, 200, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(first) == len(second) == len(sampler)
    assert sorted(map(sorted, first)) == sorted(map(sorted, second)) and first != second
    sampler.set_epoch(0)
    assert list(sampler) == first


def budget_recipe(tmp_path, tiny_model_dir, name, **train):
    train = {"batch_tokens": 160, "save_every": None, **train}
    recipe = write_recipe(tmp_path, tiny_model_dir, name, **train)
    data = yaml.safe_load(recipe.read_text())
    data["method"]["dropout"] = 0.0
    recipe.write_text(yaml.safe_dump(data))
    return recipe


def losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_budget_step_has_the_loss_of_its_samples_in_one_batch(tmp_path, tiny_model_dir):
    """Step 1 (two accumulated passes of up to 400 tokens each) logs the loss that the base
    model gives its samples as one padded batch: a mean over all their trained tokens."""
    from transformers import AutoModelForCausalLM

    from tunelab.data_tools import recipe_data
    from tunelab.models.load import load_config
    from tunelab.models.sources import resolve_model
    from tunelab.objectives.collator import PaddingCollator
    from tunelab.recipe import load_recipe

    path = budget_recipe(
        tmp_path, tiny_model_dir, "budget", grad_accum=2, max_steps=1, batch_tokens=400
    )
    result = tunelab.train(path, ["train.lr=1e-9"])
    recipe = load_recipe(path)
    source = resolve_model(recipe.model.path)
    _, _, data = recipe_data(recipe, source, load_config(source))
    sampler = TokenBudgetSampler([len(s.input_ids) for s in data.train], 400, recipe.train.seed)
    first = [i for batch in list(sampler)[:2] for i in batch]
    assert len(first) > 2 * recipe.train.batch_size  # more samples per pass than batch_size
    batch = PaddingCollator(2)(
        [{"input_ids": data.train[i].input_ids, "labels": data.train[i].labels} for i in first]
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert losses(result.run_dir) == [pytest.approx(expected, rel=1e-4)]
    assert result.summary["tokens"] == sum(len(data.train[i].input_ids) for i in first)


def test_a_budget_run_resumed_equals_one_never_stopped(tmp_path, tiny_model_dir):
    same = {"scheduler": "constant", "warmup_ratio": 0}
    whole = budget_recipe(tmp_path, tiny_model_dir, "whole", max_steps=14, **same)
    tunelab.train(whole)
    short = budget_recipe(tmp_path, tiny_model_dir, "short", max_steps=4, **same)
    tunelab.train(short, ["train.save_every=4"])
    tunelab.train(short, ["train.save_every=4", "train.max_steps=14"], resume=True)
    wa, wb = adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "short")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert losses(tmp_path / "short") == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)
    epochs = json.loads((tmp_path / "whole" / "summary.json").read_text())["epochs"]
    assert epochs > 1  # the resumed run crossed into a new epoch's order


def test_budget_batches_in_stages_and_the_estimate(tmp_path, tiny_model_dir):
    from tunelab.estimation import estimate_recipe
    from tunelab.recipe import load_recipe

    path = budget_recipe(tmp_path, tiny_model_dir, "staged", max_steps=2)
    recipe = yaml.safe_load(path.read_text())
    recipe["stages"] = [{"train": {"lr": 1e-3}}, {"train": {"batch_tokens": 320}}]
    path.write_text(yaml.safe_dump(recipe))
    result = tunelab.train(path)
    assert result.summary["steps"] == 4  # two stages of two steps
    largest = [  # each stage's passes hold up to its own budget, fuller than 4 samples would
        json.loads((stage / "summary.json").read_text())["memory"]["tokens_in_largest_step_run"]
        for stage in sorted(result.run_dir.glob("stage-*"))
    ]
    assert len(largest) == 2 and 128 < largest[0] <= 160 < largest[1] <= 320
    estimate = estimate_recipe(load_recipe(path), "cpu")
    assert estimate.batch_tokens == 160 and estimate.tokens_per_step <= 160
    assert estimate.tokens_per_step > 160 * 0.8  # the fullest batch, not batch_size samples
    count = estimate.data  # passes of up to 160 tokens, not of batch_size samples
    assert count.tokens_per_epoch / 160 <= count.steps_per_epoch < count.tokens_per_epoch / 128
    assert count.steps_per_epoch != len(DATA) // recipe["train"]["batch_size"]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["train.objective=dpo"], "applies to sft runs"),
        (["data.packing=false"], "turn data.packing on"),
        (["train.batch_tokens=32"], "below data.max_length 64"),
    ],
)
def test_budget_refused_where_it_cannot_apply(tmp_path, tiny_model_dir, overrides, words):
    from typer.testing import CliRunner

    from tunelab.cli import app

    path = budget_recipe(tmp_path, tiny_model_dir, "refused", max_steps=1)
    with pytest.raises(TunelabError, match=words):
        tunelab.train(path, overrides)
    result = CliRunner().invoke(app, ["estimate", str(path), *overrides])  # before any run
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and words in flat and "Traceback" not in flat, result.output
