"""The memory estimate made before a run's weights load (checked against the card), and after
the run the same estimate for its largest step beside the measured peak."""

from __future__ import annotations

import torch

from tunelab.errors import TunelabError
from tunelab.plan import RunPlan


def memory_estimate(recipe, plan: RunPlan, config, data, console):
    """The estimate `tunelab estimate` prints, made before the weights load, with the profile it
    came from (None if the model cannot be traced). On a GPU it is checked against the card's
    memory, which may turn liger's fused loss on (see `plan.with_fused_loss`)."""
    from tunelab.estimation import estimate_planned, profile

    try:
        prof = profile(config, recipe.method, plan.dtype)
    except TunelabError as error:
        console.print(f"memory estimate skipped: {error}", highlight=False)
        return None
    budget = None
    if plan.device.type == "cuda":
        budget = torch.cuda.get_device_properties(plan.device).total_memory
    result = estimate_planned(recipe, plan, config, data, prof, budget)
    console.print(
        f"memory estimate: {result.total_bytes / 2**30:.2f} GiB peak "
        f"({result.tokens_per_step:,} tokens in the largest step)",
        highlight=False,
    )
    return result, prof


def memory_side_by_side(recipe, device, before, largest, measured: int) -> dict | None:
    """The estimate made before the run, and the same estimate for the largest batch that
    actually ran (random batches rarely meet the data's worst case), next to the measured peak."""
    from tunelab.estimation import add_objective_parts, estimate

    if before is None:
        return None
    planned, prof = before
    # GRPO's batches are made by its own sampler: its planned largest step stands for them
    tokens = getattr(largest, "tokens", planned.tokens_per_step)
    ran = estimate(
        prof,
        recipe.method.type,
        recipe.train.batch_size,
        planned.length,
        recipe.train.gradient_checkpointing,
        device.type,
        tokens_per_step=tokens,
        logit_tokens=getattr(largest, "logit_tokens", None),
        fused_loss=planned.fused_loss,
    )
    add_objective_parts(ran, recipe, prof)
    return {
        "loss_path": "liger fused" if planned.fused_loss else "logits",
        "estimated_bytes": planned.total_bytes,
        "estimated_parts": planned.parts,
        "tokens_in_largest_step": planned.tokens_per_step,
        "measured_bytes": measured,
        "tokens_in_largest_step_run": tokens,
        "estimated_bytes_for_largest_step_run": ran.total_bytes,
        "measured_over_estimated": round(measured / ran.total_bytes, 3),
    }
