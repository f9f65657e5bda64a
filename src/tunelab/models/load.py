"""Load configs, tokenizers and models from a resolved source, quietly and offline.

No code shipped inside a model folder ever runs: `trust_remote_code=False` is passed on every
load, so transformers refuses instead of asking on stdin. A folder or file that cannot be
loaded is one sentence naming it, not a library traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tunelab.errors import TunelabError
from tunelab.models import attention
from tunelab.models.sources import ModelSource


def pick_device() -> torch.device:
    """The accelerator if there is one (this process's own under torchrun), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


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

    with loading(source, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(
            source.folder, gguf_file=source.gguf_file, local_files_only=True, **NO_REMOTE_CODE
        )
    if tokenizer.pad_token is None:
        # Padding is masked by the attention mask, never by id, so sharing eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: ModelSource, dtype: torch.dtype, device: torch.device, **options):
    """The causal LM on its device, in the requested dtype (options: e.g. quantization_config)."""
    from transformers import AutoModelForCausalLM

    if options.get("attn_implementation") == attention.NAME:
        attention.register()
    with loading(source, "model"):
        model = AutoModelForCausalLM.from_pretrained(
            source.folder,
            gguf_file=source.gguf_file,
            dtype=dtype,
            local_files_only=True,
            **NO_REMOTE_CODE,
            **options,
        )
    if getattr(model, "hf_quantizer", None) is not None and source.gguf_file:
        model.hf_quantizer.remove_quantization_config(model)
    if "quantization_config" in options:
        return model  # bitsandbytes places quantized weights itself
    return model.to(device)


def load_config(source: ModelSource):
    """The model's config (config.json, or a GGUF file's metadata), no weights."""
    from transformers import AutoConfig

    with loading(source, "config"):
        return AutoConfig.from_pretrained(
            source.folder, gguf_file=source.gguf_file, local_files_only=True, **NO_REMOTE_CODE
        )


NO_REMOTE_CODE = {"trust_remote_code": False}


@contextmanager
def loading(source: ModelSource, what: str) -> Iterator[None]:
    """Turn a library's failure to load the user's model files into one sentence."""
    where = source.folder / source.gguf_file if source.gguf_file else source.folder
    try:
        yield
    except TunelabError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        if "trust_remote_code" in text or "custom code" in text:
            raise TunelabError(
                f"{where} needs code shipped inside the model folder to load its {what}; "
                "tunelab never runs such code. Use a model whose architecture transformers "
                "supports natively."
            ) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise TunelabError(
            f"cannot load the {what} from {where}: {first[:300]}; check that it is a complete "
            "Hugging Face model folder or a valid .gguf file."
        ) from None
