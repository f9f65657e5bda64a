"""The model a run trains: loaded in the plan's precision and device, the method applied (or a
previous stage's weights continued), padded batches where packed samples would read each other."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from tunelab.methods import Method, count_parameters
from tunelab.models.load import load_model
from tunelab.models.packing import packed_rows_leak
from tunelab.models.sources import ModelSource
from tunelab.plan import RunPlan, check_batch_tokens, padded_instead
from tunelab.recipe import Recipe
from tunelab.run import (
    ADAPTER_DIR,
    MODEL_DIR,
)


def _check_packed_rows(recipe: Recipe, plan: RunPlan, model) -> RunPlan:
    """The plan, with padded batches if the loaded model lets a packed row's samples read
    each other (measured on one short row; see `models.packing`). Weights loaded already
    sharded (ZeRO-3) run no forward before DeepSpeed gathers them: their config decides."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not plan.batching.packed or is_deepspeed_zero3_enabled():
        return plan
    leak = packed_rows_leak(model)
    if leak is None:
        return plan
    check_batch_tokens(recipe, None, replace(plan.fit, packable=False, reason=leak))
    return padded_instead(plan, leak, recipe.train.group_by_length)


def load_for_training(recipe: Recipe, plan: RunPlan, init_from: Path | None, console: Console):
    """The model with the method applied (or the previous stage's weights continued), and the
    plan, with padded batches where the loaded weights let packed samples read each other."""
    method = plan.method
    torch.manual_seed(recipe.train.seed)
    weights = plan.source
    if init_from is not None and not method.saves_adapter:
        folder = init_from / MODEL_DIR
        weights = ModelSource(str(folder), folder, None, recipe.model.trust_remote_code)
    model = load_model(weights, plan.dtype, plan.device, **plan.load_options)
    plan = _check_packed_rows(recipe, plan, model)
    if plan.batching.packed:
        # With a cache the model skips packed-sequence detection and attends across samples.
        model.config.use_cache = False
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if init_from is not None and method.saves_adapter:
        model = _continue_adapter(model, method, init_from / ADAPTER_DIR)
    else:
        model = method.prepare(model, recipe.method)
    trainable, total = count_parameters(model)
    console.print(
        f"model: {recipe.model.path}, method {method.name}: "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)",
        highlight=False,
    )
    return model, plan


def _continue_adapter(model, method: Method, adapter: Path):
    """The previous stage's adapter, trainable again (the same adapter keeps learning)."""
    from peft import PeftModel, prepare_model_for_kbit_training

    if method.name == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return PeftModel.from_pretrained(model, adapter, is_trainable=True)


def reference_copy(model):
    """A frozen copy of the model before training, for the reference log-probabilities."""
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference
