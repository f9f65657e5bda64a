"""Training methods: each only prepares the model and chooses what trains.

The training loop is the same for all of them. A method says how the model is loaded (4-bit
for qlora), how it is wrapped, and what its run saves: the whole model (full, freeze), a
LoRA-family adapter that can be merged (lora, dora, qlora), or a prompt-style adapter that
cannot (ptuning, prefix, prompt).
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tunelab.errors import TunelabError
from tunelab.methods.lora_targets import all_linear_targets
from tunelab.recipe import MethodConfig


def _no_load_options(config: MethodConfig, device: torch.device) -> dict:
    return {}


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "full" saves the model, "lora" a mergeable adapter, "prompt" an adapter
    prepare: Callable
    load_options: Callable[[MethodConfig, torch.device], dict] = field(default=_no_load_options)

    @property
    def saves_adapter(self) -> bool:
        return self.family in {"lora", "prompt"}

    @property
    def mergeable(self) -> bool:
        return self.family == "lora"


def prepare_full(model, config: MethodConfig):
    """Every parameter trains."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def prepare_freeze(model, config: MethodConfig):
    """Only the last `layers` decoder layers train, or the parameters named in `modules`."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if config.modules:
        chosen = [
            (n, p) for n, p in model.named_parameters() if any(m in n for m in config.modules)
        ]
        if not chosen:
            raise TunelabError(
                f"method.modules {config.modules} match no parameter name; names look like "
                f"{next(iter(dict(model.named_parameters())))}."
            )
        for _name, parameter in chosen:
            parameter.requires_grad_(True)
        return model
    layers = decoder_layers(model)
    if config.layers > len(layers):
        raise TunelabError(
            f"method.layers is {config.layers} but the model has {len(layers)} layers."
        )
    for layer in layers[-config.layers :]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of decoder layers, found by its length rather than by a model-type name."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise TunelabError("cannot find the decoder layers of this model; use method.modules instead.")


def prepare_lora(model, config: MethodConfig):
    """A peft LoRA (or DoRA) adapter; only the adapter trains."""
    from peft import LoraConfig, get_peft_model

    check_targets(model, config)
    target = all_linear_targets(model) if config.target == "all-linear" else config.target
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target,
        use_dora=config.type == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def check_targets(model, config: MethodConfig) -> None:
    """LoRA targets must name linear layers the model has (peft matches a string as a regex)."""
    if config.target == "all-linear":
        return
    linear = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        }
        - {"lm_head"}
    )
    full_names = [name for name, _ in model.named_modules()]
    if isinstance(config.target, str):
        try:
            pattern = re.compile(config.target)
        except re.error as exc:
            raise TunelabError(
                f"method.target `{config.target}` is not a valid regular expression ({exc})."
            ) from None
        if not any(pattern.fullmatch(name) for name in full_names):
            raise TunelabError(
                f"method.target `{config.target}` matches no module of the model; its linear "
                f"layers are {', '.join(linear)} (or use all-linear)."
            )
        return
    for target in config.target:
        if target not in linear and not any(n.endswith("." + target) for n in full_names):
            close = difflib.get_close_matches(target, linear, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise TunelabError(
                f"method.target `{target}` is not a layer of this model; its linear layers are "
                f"{', '.join(linear)}.{hint}"
            )


def meta_model(model_config, layers: int, dtype: torch.dtype, method: MethodConfig):
    """The model with `layers` decoder layers on the meta device (no memory), method applied."""
    from transformers import AutoModelForCausalLM

    model_config = copy.deepcopy(model_config)
    model_config.num_hidden_layers = layers
    if getattr(model_config, "layer_types", None) is not None:
        model_config.layer_types = model_config.layer_types[:layers]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            model_config,
            dtype=dtype,
            attn_implementation="sdpa",
            # a config built by the folder's own code was allowed by the recipe already
            trust_remote_code=type(model_config).__module__.startswith("transformers_modules"),
        )
    options = method.model_copy(update={"layers": min(method.layers, layers)})
    kind = "lora" if method.type == "qlora" else method.type  # same adapter, 4-bit base
    options = options.model_copy(update={"type": kind})
    model = METHODS[kind].prepare(model, options)
    model.train()
    return model


def check_method(model_config, config: MethodConfig) -> None:
    """Apply the method to a one-layer meta copy of the model, so a wrong target fails in a
    second, before any weights load (architectures the meta device cannot build are skipped)."""
    try:
        meta_model(model_config, 1, torch.float32, config)
    except TunelabError:
        raise
    except Exception:  # the real load reports what is wrong with such a model
        return


def qlora_load_options(config: MethodConfig, device: torch.device) -> dict:
    """4-bit NF4 weights with double quantisation (bitsandbytes)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TunelabError(
            "method qlora needs bitsandbytes, which is not installed; "
            "install it with `pip install 'tunelab[qlora]'` (or pick method.type: lora)."
        ) from None
    from transformers import BitsAndBytesConfig

    compute = (
        torch.bfloat16
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else torch.float32
    )
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    }


def prepare_qlora(model, config: MethodConfig):
    """LoRA on a 4-bit base, prepared for k-bit training by peft."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return prepare_lora(model, config)


def prepare_prompt_learning(model, config: MethodConfig):
    """P-tuning (prompt encoder), prefix tuning or prompt tuning through peft."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": config.virtual_tokens}
    if config.type == "ptuning":
        peft_config = PromptEncoderConfig(**common, encoder_hidden_size=model.config.hidden_size)
    elif config.type == "prefix":
        peft_config = PrefixTuningConfig(**common)
    else:
        peft_config = PromptTuningConfig(**common)
    return get_peft_model(model, peft_config)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("full", "full", prepare_full),
        Method("freeze", "full", prepare_freeze),
        Method("lora", "lora", prepare_lora),
        Method("dora", "lora", prepare_lora),
        Method("qlora", "lora", prepare_qlora, qlora_load_options),
        Method("ptuning", "prompt", prepare_prompt_learning),
        Method("prefix", "prompt", prepare_prompt_learning),
        Method("prompt", "prompt", prepare_prompt_learning),
    ]
}


def get_method(name: str) -> Method:
    return METHODS[name]


def prepare_model(model, config: MethodConfig):
    """Apply the recipe's method to a loaded model."""
    return METHODS[config.type].prepare(model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts (4-bit weights counted as their element count)."""
    trainable = sum(_elements(p) for p in model.parameters() if p.requires_grad)
    total = sum(_elements(p) for p in model.parameters())
    return trainable, total


def _elements(parameter) -> int:
    # bitsandbytes packs two 4-bit values per byte; its quant_state knows the real shape.
    state = getattr(parameter, "quant_state", None)
    if state is not None:
        return int(state.shape.numel())
    # DeepSpeed ZeRO-3 leaves each process a shard; ds_numel is the whole parameter's size.
    return int(getattr(parameter, "ds_numel", parameter.numel()))
