"""An HF model folder written as one GGUF file, by llama.cpp's own converter.

The converter (see `exporters.llama_cpp`) writes every architecture llama.cpp runs, with its
tensor layout and metadata; tunelab gives it the merged folder with the run's chat template,
then copies the result once with the `gguf` package to add what the run knows:
- the mark that says tunelab wrote the file (so `--overwrite` may replace it, nothing else);
- q4_0 weights, which the converter does not write (llama.cpp's quantize tool does): each
  2-D weight whose rows split into blocks of 32 is quantised from the f16 file;
- a context length no longer than the model's sliding window where llama.cpp's graph for the
  architecture has no window (Mistral is written as `llama`): inside the window the two agree
  exactly, past it llama.cpp would attend further than the model was trained to;
- for a SentencePiece vocabulary, whether llama.cpp puts a space before text that follows a
  special token (`add_space_prefix`) as the model's own tokenizer does: Phi-3's does not, and
  a space before every turn's text would prompt it otherwise than it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunelab.errors import TunelabError
from tunelab.exporters.llama_cpp import convert

QUANTS = ("f16", "bf16", "q8_0", "q4_0", "f32")


def write_gguf(
    folder: Path,
    out: Path,
    quant: str,
    chat_template: str | None,
    extra: dict | None = None,
    name: str | None = None,
) -> dict:
    """Write the model in `folder` to the file `out` (named `name`, with `extra` string
    metadata); returns what was written: the architecture, quantisation, tensor types, notes."""
    if quant not in QUANTS:
        raise TunelabError(f"--quant {quant} is not one of {', '.join(QUANTS)}.")
    if chat_template:
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    converted = out.with_name(out.name + ".converted")
    try:
        convert(folder, converted, "f16" if quant == "q4_0" else quant, name)
        return _finish(converted, out, folder, quant, extra or {})
    finally:
        converted.unlink(missing_ok=True)


def _finish(source: Path, out: Path, folder: Path, quant: str, extra: dict) -> dict:
    """Copy the converter's file to `out` with tunelab's metadata (and q4_0 weights)."""
    import gguf

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    context, notes = _context_length(reader, arch, config)
    prefix, prefix_notes = _space_prefix(reader, folder)
    notes += prefix_notes
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch) and context:
            value = context
        if field.name == gguf.Keys.General.FILE_TYPE and quant == "q4_0":
            value = int(gguf.LlamaFileType.MOSTLY_Q4_0)
        if field.name == gguf.Keys.Tokenizer.ADD_PREFIX and prefix is not None:
            value, prefix = prefix, None
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    if prefix is not None:
        writer.add_add_space_prefix(prefix)
    for key, value in extra.items():
        writer.add_string(key, value)
    counts: dict[str, int] = {}
    tensors = []
    for tensor in reader.tensors:
        data, kind = _quantised(tensor) if quant == "q4_0" else (tensor.data, tensor.tensor_type)
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, kind)
        tensors.append(data)
        counts[kind.name.lower()] = counts.get(kind.name.lower(), 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in tensors:
        writer.write_tensor_data(data)
    writer.close()
    return {"architecture": arch, "quant": quant, "tensors": counts, "notes": notes}


def _quantised(tensor):
    """A 2-D f16/f32 weight as q4_0 (blocks of 32 along each row); others as they are."""
    import gguf

    plain = (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32)
    data = tensor.data
    if tensor.tensor_type not in plain or data.ndim != 2 or data.shape[-1] % 32:
        return data, tensor.tensor_type
    values = np.asarray(data, dtype=np.float32)
    kind = gguf.GGMLQuantizationType.Q4_0
    return gguf.quants.quantize(values, kind), kind


def _context_length(reader, arch: str, config: dict) -> tuple[int | None, list[str]]:
    """The context length to declare: the sliding window where the model has one and the
    file's architecture does not (llama.cpp would attend past it)."""
    import gguf

    window = config.get("sliding_window")
    longest = config.get("max_position_embeddings") or 0
    used = config.get("use_sliding_window", True) and window and window < longest
    has_window = gguf.Keys.Attention.SLIDING_WINDOW.format(arch=arch) in reader.fields
    if not used or has_window:
        return None, []
    note = (
        f"llama.cpp's {arch} graph has no sliding window; the GGUF declares a context of "
        f"{window} tokens (the model's window), inside which it computes what the model does"
    )
    return int(window), [note]


def _space_prefix(reader, folder: Path) -> tuple[bool | None, list[str]]:
    """The `add_space_prefix` a SentencePiece vocabulary needs where the file's differs from
    what the model's tokenizer does after a special token (else None)."""
    import gguf

    model = reader.fields.get(gguf.Keys.Tokenizer.MODEL)
    if model is None or model.contents() != "llama" or not folder.is_dir():
        return None, []
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    special = tokenizer.eos_token or tokenizer.bos_token
    ids = tokenizer(f"{special}Hi", add_special_tokens=False)["input_ids"]
    prefixes = len(ids) > 1 and tokenizer.convert_ids_to_tokens(ids[1]).startswith("\u2581")
    field = reader.fields.get(gguf.Keys.Tokenizer.ADD_PREFIX)
    if (field.contents() if field is not None else True) == prefixes:
        return None, []
    state = "puts" if prefixes else "puts no"
    return prefixes, [f"add_space_prefix is {prefixes}: the model's tokenizer {state} space "
                      "before text that follows a special token"]  # fmt: skip
