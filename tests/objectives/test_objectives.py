"""The objective registry: every recipe objective is one registered `Objective`, and a new one
is a subclass in its own file plus `register`, nothing else (here: sft with its loss halved)."""

from __future__ import annotations

import json

import pytest

from tests.training.test_resume import write_recipe


class HalfLossSFT:
    """Made on first use: sft whose loss is weighted by one half (a toy objective)."""

    @staticmethod
    def make():
        from tunelab.objectives.sft import SFT

        class Halved(SFT):
            name = "sft_half"

            def build_trainer(self, parts):
                trainer = super().build_trainer(parts)
                plain = trainer.compute_loss

                def halved(model, inputs, return_outputs=False, **kwargs):
                    result = plain(model, inputs, return_outputs=return_outputs, **kwargs)
                    if return_outputs:
                        return result[0] * 0.5, result[1]
                    return result * 0.5

                trainer.compute_loss = halved
                return trainer

        return Halved()


@pytest.fixture
def half_loss_objective():
    from tunelab.objectives import OBJECTIVES, register
    from tunelab.recipe import OBJECTIVE_NAMES

    objective = register(HalfLossSFT.make())
    yield objective
    OBJECTIVES.pop(objective.name)
    OBJECTIVE_NAMES.remove(objective.name)


def test_every_recipe_objective_is_registered():
    from tunelab.objectives import OBJECTIVES, Objective
    from tunelab.recipe import OBJECTIVE_NAMES

    assert sorted(OBJECTIVES) == sorted(OBJECTIVE_NAMES)
    assert all(isinstance(o, Objective) and o.name == n for n, o in OBJECTIVES.items())


def test_an_unknown_objective_is_one_sentence_naming_the_choices(tmp_path, tiny_model_dir):
    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe

    path = write_recipe(tmp_path, tiny_model_dir, "run")
    with pytest.raises(TunelabError, match="train.objective.*'sft', 'dpo'"):
        load_recipe(path, ["train.objective=sfft"])


def test_a_toy_objective_registered_from_its_own_file_trains(
    tmp_path, tiny_model_dir, half_loss_objective
):
    """Registered here and nowhere else, `train.objective: sft_half` is a recipe's choice and
    trains: at step 1 (the same weights, the same batch) its loss is half sft's."""
    import tunelab

    def first_loss(name: str, objective: str) -> float:
        path = write_recipe(tmp_path, tiny_model_dir, name, max_steps=2, save_every=None)
        tunelab.train(path, [f"train.objective={objective}"])
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[0])["loss"]

    plain, halved = first_loss("plain", "sft"), first_loss("halved", "sft_half")
    assert halved == pytest.approx(plain / 2, rel=1e-5)
    summary = json.loads((tmp_path / "halved" / "summary.json").read_text())
    assert summary["steps"] == 2
