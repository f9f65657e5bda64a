"""Load configs, tokenizers and models from a resolved source, quietly and offline.

No code shipped inside a model folder runs unless the recipe asks for it
(`model.trust_remote_code: true`): otherwise `trust_remote_code=False` is passed on every load,
so transformers refuses instead of asking on stdin, and the refusal names the recipe key. A
folder or file that cannot be loaded is one sentence naming it, not a library traceback.
"""

from __future__ import annotations

import hashlib
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
            source.folder,
            gguf_file=source.gguf_file,
            local_files_only=True,
            trust_remote_code=source.trust_remote_code,
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
            trust_remote_code=source.trust_remote_code,
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
            source.folder,
            gguf_file=source.gguf_file,
            local_files_only=True,
            trust_remote_code=source.trust_remote_code,
        )


def remote_code_files(source: ModelSource) -> dict | None:
    """What a run records when the model folder's own code ran: the folder and a SHA-256 of
    each of its .py files (None when no such code was allowed)."""
    if not source.trust_remote_code:
        return None
    files = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(source.folder.glob("*.py"))
    }
    return {"folder": str(source.folder), "files": files}


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
                f"{where} needs code shipped inside the model folder to load its {what}, and "
                "tunelab runs such code only when the recipe asks: read the folder's .py files, "
                "then set model.trust_remote_code: true."
            ) from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise TunelabError(
            f"cannot load the {what} from {where}: {first[:300]}; check that it is a complete "
            "Hugging Face model folder or a valid .gguf file."
        ) from None
