"""An HF model folder written as one GGUF file, with the `gguf` package's writer and quantisers.

Supported: the llama family (Llama, SmolLM, Mistral, written as llama.cpp's `llama`
architecture) and qwen2, with a byte-level BPE tokenizer (tokenizer.json). Tensors are named
with `gguf`'s own name map; llama's q and k projections are permuted into the rotary layout
llama.cpp expects. 1-D tensors (norms, biases) stay float32, as llama.cpp keeps them; the
other weights are written as f16, bf16 or q8_0 (q4_0 too, which loses more). The tokenizer
(tokens, types, merges, special ids) and the run's chat template go into the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tunelab.errors import TunelabError

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
QUANTS = ("f16", "bf16", "q8_0", "q4_0")


def write_gguf(
    folder: Path, out: Path, quant: str, chat_template: str | None, extra: dict | None = None
) -> dict:
    """Write the model in `folder` to the file `out` (with `extra` string metadata); returns
    what was written."""
    import gguf

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = _architecture(config)
    if quant not in QUANTS:
        raise TunelabError(f"--quant {quant} is not one of {', '.join(QUANTS)}.")
    writer = gguf.GGUFWriter(str(out), arch)
    _write_hparams(writer, config, quant)
    for key, value in (extra or {}).items():
        writer.add_string(key, value)
    _write_tokenizer(writer, folder, config, chat_template)
    counts = _write_tensors(writer, folder, config, arch, quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch, "quant": quant, "tensors": counts}


def _architecture(config: dict) -> str:
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise TunelabError(
        f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is "
        f"{', '.join(names) or config.get('model_type', 'unknown')}. Export an HF folder instead "
        "(without --to)."
    )


def _write_hparams(writer, config: dict, quant: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(config.get("_name_or_path") or "tunelab export")
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])
    file_types = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }
    writer.add_file_type(file_types[quant])


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in {"default", None}:
        raise TunelabError(
            f"rope scaling `{rope.get('rope_type')}` is not written to GGUF yet; export an HF "
            "folder instead (without --to)."
        )
    return rope.get("rope_theta") or config.get("rope_theta") or 10000.0


def _write_tokenizer(writer, folder: Path, config: dict, template) -> None:
    import gguf
    from transformers import AutoTokenizer

    tokenizer_file = folder / "tokenizer.json"
    model = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise TunelabError(
            "GGUF export supports byte-level BPE tokenizers (Llama-3, Qwen, SmolLM); this one is "
            f"{model.get('type', 'unknown')}{' with byte fallback' if model.get('byte_fallback') else ''}."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    size = config["vocab_size"]
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            special = added[index].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(json.loads(tokenizer_file.read_text(encoding="utf-8"))))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=size)
    special.chat_template = template or tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)


def pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE, read from its
    pre_tokenizer: GPT-2's byte-level regex (SmolLM), Llama-3's (digits in threes) or Qwen2's
    (single digits). Anything else gets llama.cpp's default."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    patterns = [str((step.get("pattern") or {}).get("Regex", "")) for step in steps]
    if kinds[:1] == ["Split"] and kinds[1:] == ["ByteLevel"]:
        if "\\p{N}{1,3}" in patterns[0]:
            return "llama-bpe"
        if "\\p{N}|" in patterns[0]:
            return "qwen2"
    return "default"


def _write_tensors(writer, folder: Path, config: dict, arch: str, quant: str) -> dict:
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(
        getattr(gguf.MODEL_ARCH, arch.upper()), config["num_hidden_layers"]
    )
    counts: dict[str, int] = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TunelabError(f"{folder} has no .safetensors weights to write.")
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open has no iteration
                target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise TunelabError(f"no GGUF name for the tensor `{name}`; cannot write it.")
                tensor = _arranged(weights.get_tensor(name), name, config, arch)
                kind = _write_one(writer, target, tensor, quant)
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def _arranged(tensor: torch.Tensor, name: str, config: dict, arch: str) -> torch.Tensor:
    """llama.cpp's llama graph wants q and k rows in rotary pairs (as the original weights)."""
    if arch != "llama":
        return tensor
    heads = config["num_attention_heads"]
    if name.endswith("q_proj.weight"):
        return _permute(tensor, heads)
    if name.endswith("k_proj.weight"):
        return _permute(tensor, config.get("num_key_value_heads") or heads)
    return tensor


def _permute(weights: torch.Tensor, heads: int) -> torch.Tensor:
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _write_one(writer, name: str, tensor: torch.Tensor, quant: str) -> str:
    import gguf

    data = tensor.to(torch.float32).numpy()
    if data.ndim == 1:
        writer.add_tensor(name, data)
        return "f32"
    kinds = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
    }
    kind = kinds[quant]
    if quant in {"q8_0", "q4_0"} and data.shape[-1] % 32:  # blocks of 32 along a row
        kind = gguf.GGMLQuantizationType.F16
    if kind == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    return kind.name.lower()
