"""The run plan: what a recipe means on this machine, decided once, before anything loads.

Training and the estimate both read it: the model source, the method, the device and dtype,
how batches are built (packed or padded, and whether a token budget can apply), which fused
kernels and attention backend are used, and the options the weights load with.

Fused kernels (liger-kernel, flash-attention) are CUDA only; a CPU run gets neither and says
so only if they were asked for. Left to choose (`train.fused_kernels` unset), a GPU run uses
flash-attention when it is installed, and liger-kernel only when the run would not fit the
GPU without its fused loss: with packed rows and logits only at trained positions, liger cost
9% (LoRA) to 32% (full) of the tokens/s on an H100 and saved about a third of the memory, so
speed comes first whenever the memory allows it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace

import torch

from tunelab.errors import TunelabError
from tunelab.methods import Method, get_method
from tunelab.models import attention
from tunelab.models.load import load_config, pick_device, pick_dtype
from tunelab.models.packing import PackingFit, packing_fit
from tunelab.models.sources import ModelSource, resolve_model
from tunelab.objectives import Batching, get_objective, objective_of
from tunelab.recipe import Recipe


@dataclass
class RunPlan:
    """Everything decided about a run before its weights load."""

    source: ModelSource
    method: Method
    device: torch.device
    dtype: torch.dtype
    batching: Batching
    kernels: Kernels
    load_options: dict = field(default_factory=dict)
    config: object = None
    fit: PackingFit = field(default_factory=PackingFit)

    @property
    def trained_logits_only(self) -> bool:
        """Packed rows compute logits only where the next token trains, unless liger's fused
        loss already avoids materialising them."""
        return self.batching.packed and not self.kernels.liger

    @property
    def attention(self) -> str:
        """The attention kernel training runs on (written in summary.json)."""
        if self.kernels.flash_attention:
            return attention.FLASH
        if self.batching.packed:
            return attention.packed_backend(self.device, self.dtype)
        return "the model's own (eager)" if self.fit.own_attention else "sdpa"

    def notes(self) -> list[str]:
        return [f"{self.batching.describe()}; attention: {self.attention}", *self.kernels.notes]


def plan_run(recipe: Recipe, device: torch.device | None = None, load: bool = True) -> RunPlan:
    """The plan for `recipe` on `device` (default: this process's accelerator, else the CPU).

    `load=False` plans without the method's load options (the estimate loads no weights, and
    needs no bitsandbytes to estimate qlora). The model's config (read, no weights) says
    whether its layers keep the samples of a packed row apart.
    """
    device = device or pick_device()
    source = resolve_model(recipe.model.path, recipe.model.trust_remote_code)
    config = load_config(source)
    fit = packing_fit(config, device)
    method = get_method(recipe.method.type)
    if device.type == "cuda" and recipe.model.dtype == "auto" and not torch.cuda.is_available():
        dtype = torch.bfloat16  # what a CUDA card with bf16 gets (planned without one here)
    else:
        dtype = pick_dtype(recipe.model.dtype, device)
    batching = objective_of(recipe).batching(
        recipe.data.packing, recipe.train.group_by_length, method.family, fit
    )
    kernels = choose_kernels(recipe.train.fused_kernels, device, dtype, fit)
    options = method.load_options(recipe.method, device) if load else {}
    options["attn_implementation"] = attention_implementation(kernels, batching, fit)
    return RunPlan(source, method, device, dtype, batching, kernels, options, config, fit)


def attention_implementation(kernels: Kernels, batching: Batching, fit: PackingFit) -> str:
    """What the weights load with: flash-attention when chosen, the model's own attention where
    sdpa cannot serve it, tunelab's packed attention for packed rows, else sdpa."""
    if kernels.flash_attention:
        return "flash_attention_2"
    if fit.own_attention:
        return "eager"
    return attention.NAME if batching.packed else "sdpa"


def padded_instead(plan: RunPlan, reason: str, group_by_length: bool | None) -> RunPlan:
    """The plan with padded batches (grouped by length unless the recipe says otherwise),
    because the loaded model showed `reason`."""
    batching = Batching(False, group_by_length is not False, reason)
    return replace(plan, batching=batching, fit=replace(plan.fit, packable=False, reason=reason))


def choose_batching(
    packing: bool,
    group_by_length: bool | None,
    method_family: str,
    objective: str = "sft",
    fit: PackingFit | None = None,
) -> Batching:
    """How the objective's batches are built: sft packs unless switched off, the method
    prepends learned tokens, or the model's layers cannot keep a packed row's samples apart
    (`fit`); TRL's trainers pad (see each objective's `batching`)."""
    return get_objective(objective).batching(packing, group_by_length, method_family, fit)


@dataclass(frozen=True)
class Kernels:
    liger: bool = False
    flash_attention: bool = False
    notes: list[str] = field(default_factory=list)
    liger_standby: bool = False  # installed, off; turned on only if the run needs its memory

    @property
    def used(self) -> str:
        """The kernels in use, e.g. "liger, flash-attention", or "none"."""
        names = [
            n for n, on in (("liger", self.liger), ("flash-attention", self.flash_attention)) if on
        ]
        return ", ".join(names) or "none"

    def describe(self) -> str:
        return f"fused kernels: {self.used}"


def with_fused_loss(plan: RunPlan, reason: str) -> RunPlan:
    """The plan with liger-kernel on (its fused loss holds no logits), saying why."""
    kernels = replace(
        plan.kernels, liger=True, liger_standby=False, notes=[*plan.kernels.notes, reason]
    )
    return replace(plan, kernels=kernels)


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def choose_kernels(
    setting: bool | None, device: torch.device, dtype: torch.dtype, fit: PackingFit | None = None
) -> Kernels:
    """Which fused kernels to use: `setting` None means whatever is present on a CUDA GPU.
    flash-attention is for models that run on sdpa (not soft-capping or sinks)."""
    if setting is False:
        return Kernels()
    notes = []
    if device.type != "cuda":
        if setting:
            notes.append("train.fused_kernels needs a CUDA GPU; training with the standard kernels")
        return Kernels(notes=notes)
    liger = installed("liger_kernel")
    own = fit is not None and fit.own_attention
    flash = installed("flash_attn") and dtype in (torch.float16, torch.bfloat16) and not own
    if setting is None:
        return Kernels(flash_attention=flash, liger_standby=liger)
    if not liger:
        notes.append("liger-kernel is not installed (pip install liger-kernel); not used")
    if not flash:
        notes.append(
            "flash-attention needs the flash_attn package and bf16/fp16 weights; sdpa used"
        )
    return Kernels(liger=liger, flash_attention=flash, notes=notes)


def check_batch_tokens(
    recipe, max_length: int | None = None, fit: PackingFit | None = None
) -> None:
    """Refuse `train.batch_tokens` where it cannot apply, in one sentence (`max_length`: the
    cutoff once the data has chosen it; else the recipe's, when it is a number; `fit`: what
    the model's layers allow)."""
    budget = recipe.train.batch_tokens
    if budget is None:
        return
    if max_length is None and isinstance(recipe.data.max_length, int):
        max_length = recipe.data.max_length
    objective = objective_of(recipe)
    objective.check_batch_tokens(recipe)
    family = get_method(recipe.method.type).family
    packed = objective.batching(recipe.data.packing, None, family, None).packed
    if packed and fit is not None and not fit.packable:
        raise TunelabError(
            f"train.batch_tokens fills packed rows, and this model trains on padded batches "
            f"({fit.reason}); remove batch_tokens and set train.batch_size."
        )
    if not packed:
        raise TunelabError(
            "train.batch_tokens fills packed rows, and this run's batches are padded (data.packing "
            "is off, or a prompt-learning method); turn data.packing on or use train.batch_size."
        )
    if max_length is not None and budget < max_length:
        raise TunelabError(
            f"train.batch_tokens {budget} is below data.max_length {max_length}: a sample that "
            f"long would not fit a batch; raise batch_tokens to at least {max_length} or lower "
            "data.max_length."
        )
