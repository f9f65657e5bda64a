"""What `method.target: all-linear` adapts: the linear layers PEFT can adapt, less the routers
and the state-space projections.

PEFT's own all-linear takes every `nn.Linear` but the output layer. Three kinds of them do not
get an adapter:
- routers of a mixture of experts: subclasses of `nn.Linear` that return the chosen experts as
  a tuple (PhiMoE, Llama 4: an adapter's output breaks them), and the plain linear gate that
  scores the experts beside a block's `experts` (Hunyuan's `wg`): a LoRA there moves which
  expert sees which token, not what the experts say;
- the layers PEFT refuses for the model (the `out_proj` of Mamba mixers in Nemotron-H,
  Falcon-H1, Mamba2), asked of PEFT itself;
- the projections of a state-space or gated-delta mixer (a module with an `A_log` decay):
  some feed the recurrence through their weight alone and never call their forward (Jamba's
  `dt_proj`), so an adapter there would train nothing. A model made only of such mixers
  (Mamba2) keeps those PEFT allows, or it would have nothing to adapt.
A model with none of them keeps PEFT's `all-linear`; otherwise the adapter lists the names.
The recipe can still name any layer PEFT allows in `method.target`.
"""

from __future__ import annotations

import torch

EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def all_linear_targets(model) -> str | list[str]:
    """`"all-linear"`, or the full names of the linear layers it should mean for `model`."""
    output = model.get_output_embeddings()
    linear, mixer, left_out = [], [], False
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        if _is_router(model, name, module) or _refused_by_peft(model, name):
            left_out = True
        elif _in_state_space_mixer(model, name):
            mixer.append(name)
        else:
            linear.append(name)
    if mixer and linear:
        return linear
    return [*linear, *mixer] if left_out else "all-linear"


def _parent(model, name: str):
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model


def _in_state_space_mixer(model, name: str) -> bool:
    return any(key == "A_log" for key, _ in _parent(model, name).named_parameters(recurse=False))


def _is_router(model, name: str, module: torch.nn.Linear) -> bool:
    """A linear layer beside a block's `experts` that scores them: its own class (a router
    whose forward returns a tuple) or one output per expert."""
    if not hasattr(_parent(model, name), "experts"):
        return False
    if type(module).__module__.startswith(("transformers.models.", "transformers_modules.")):
        return True  # a model's own subclass (a quantised linear comes from its library)
    counts = {getattr(model.config, key, None) for key in EXPERT_COUNTS}
    return module.out_features in counts - {None}


def _refused_by_peft(model, name: str) -> bool:
    """Whether PEFT refuses a LoRA on the layer `name` of this model (its Mamba rule)."""
    try:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import _check_lora_target_modules_mamba as check
    except ImportError:  # a PEFT without the rule refuses nothing there
        return False
    try:
        check(LoraConfig(target_modules=["_"]), model, name.rsplit(".", 1)[-1])
    except ValueError:
        return True
    return False
