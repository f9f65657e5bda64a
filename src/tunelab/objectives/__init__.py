"""The training objectives, by the name a recipe gives in `train.objective`: sft, the
preference losses (dpo, orpo, simpo, kto) and grpo. Each is one `Objective` owning its data,
batching, trainer, estimate figures and summary fields; everything else asks
`objective_of(recipe)` instead of branching on the name. A new objective is a subclass in its
own file, added with `register`."""

from __future__ import annotations

from tunelab.objectives.base import Batching, Objective, TrainerParts
from tunelab.objectives.grpo import GRPO
from tunelab.objectives.preference import DPO, KTO, ORPO, SimPO
from tunelab.objectives.sft import SFT
from tunelab.recipe import OBJECTIVE_NAMES

OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Make `objective` the one recipes name by `objective.name` (a recipe may name it now)."""
    OBJECTIVES[objective.name] = objective
    if objective.name not in OBJECTIVE_NAMES:
        OBJECTIVE_NAMES.append(objective.name)
    return objective


for _built_in in (SFT(), DPO(), ORPO(), SimPO(), KTO(), GRPO()):
    register(_built_in)


def get_objective(name: str) -> Objective:
    return OBJECTIVES[name]


def objective_of(recipe) -> Objective:
    """The objective a recipe trains with."""
    return OBJECTIVES[recipe.train.objective]


__all__ = ["Batching", "Objective", "OBJECTIVES", "TrainerParts", "get_objective",
           "objective_of", "register"]  # fmt: skip
