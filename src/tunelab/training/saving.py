"""What a run saves when it ends: the final weights (only finite ones; an adapter or the whole
model, with tokenizer and template), the optimizer for a next stage, the loss plot."""

from __future__ import annotations

import torch

from tunelab.methods import Method
from tunelab.plan import RunPlan
from tunelab.run import (
    METRICS_FILE,
    RunFolder,
)
from tunelab.training import distributed
from tunelab.training.checkpoints import (
    OPTIMIZER_FILE,
    STAGING,
    Diverged,
    saving_into,
    trainable_finite,
)
from tunelab.training.plots import plot_losses


def save_trained(recipe, run, plan: RunPlan, trainer, tokenizer, keep_optimizer: bool) -> None:
    """The final weights (only finite ones), the optimizer for a next stage, the loss plot."""
    model = trainer.model
    if not trainable_finite(model):
        raise Diverged(
            f"training diverged: after step {trainer.state.global_step} the trained weights are "
            f"not finite; nothing was saved. Lower train.lr (now {recipe.train.lr:g})."
        )
    model.config.use_cache = True  # the saved config is for inference
    weights = distributed.gathered_weights(trainer)  # every process takes part
    if not run.writer:
        return
    with saving_into(run.path):
        save_final(run, plan.method, model, tokenizer, weights)
        if keep_optimizer:
            torch.save(trainer.optimizer.state_dict(), run.file(OPTIMIZER_FILE))
    plot_losses(run.file(METRICS_FILE), run.file("loss.png"))


def save_final(run: RunFolder, method: Method, model, tokenizer, weights=None) -> None:
    """An adapter (peft methods) or the whole model (full, freeze), with tokenizer and template;
    `weights`: the whole state dict where the processes held only shards of it (ZeRO-3)."""
    target = run.adapter_dir if method.saves_adapter else run.model_dir
    given = {} if weights is None else {"state_dict": weights}
    if method.saves_adapter and "ref" in getattr(model, "peft_config", {}):
        # not a DPO/KTO reference
        model.save_pretrained(target, selected_adapters=["default"], **given)
    else:
        model.save_pretrained(target, **given)
    tokenizer.save_pretrained(target)
    staging = run.checkpoints_dir / STAGING
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    if run.checkpoints_dir.is_dir() and not any(run.checkpoints_dir.iterdir()):
        run.checkpoints_dir.rmdir()
