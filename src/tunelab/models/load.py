"""Load tokenizers and models from a resolved source, quietly and offline."""

from __future__ import annotations

import torch

from tunelab.models.sources import ModelSource


def pick_device() -> torch.device:
    """The accelerator if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """model.dtype as a torch dtype; auto is float32 on CPU, bfloat16 on a GPU that has it."""
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(source: ModelSource):
    """The model's tokenizer, with a pad token (the eos token if it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source.folder, gguf_file=source.gguf_file, local_files_only=True
    )
    if tokenizer.pad_token is None:
        # Padding is masked by the attention mask, never by id, so sharing eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: ModelSource, dtype: torch.dtype, device: torch.device, **options):
    """The causal LM on its device, in the requested dtype (options: e.g. quantization_config)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        source.folder, gguf_file=source.gguf_file, dtype=dtype, local_files_only=True, **options
    )
    if getattr(model, "hf_quantizer", None) is not None and source.gguf_file:
        model.hf_quantizer.remove_quantization_config(model)
    if "quantization_config" in options:
        return model  # bitsandbytes places quantized weights itself
    return model.to(device)
