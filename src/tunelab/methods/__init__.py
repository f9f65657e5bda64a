"""Training methods: each only prepares the model and chooses what trains."""

from __future__ import annotations

from collections.abc import Callable

from tunelab.recipe import MethodConfig


def prepare_lora(model, config: MethodConfig):
    """Wrap the model in a peft LoRA (or DoRA) adapter; only the adapter trains."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target,
        use_dora=config.type == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


METHODS: dict[str, Callable] = {"lora": prepare_lora, "dora": prepare_lora}


def prepare_model(model, config: MethodConfig):
    """Apply the recipe's method to a loaded model."""
    return METHODS[config.type](model, config)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
