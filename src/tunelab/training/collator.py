"""Batching rendered samples for the trainer: packed (padding-free) or padded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.data.render import IGNORE_INDEX, RenderedSample


class SampleDataset(torch.utils.data.Dataset):
    """Rendered samples as a map-style dataset."""

    def __init__(self, samples: list[RenderedSample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        return {"input_ids": sample.input_ids, "labels": sample.labels}


@dataclass
class PaddingCollator:
    """Right-pads a batch to its longest sample; padding is masked by attention, never by id."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        input_ids, labels, attention = [], [], []
        for feature in features:
            pad = longest - len(feature["input_ids"])
            input_ids.append(list(feature["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(feature["labels"]) + [IGNORE_INDEX] * pad)
            attention.append([1] * len(feature["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
        }


@dataclass(frozen=True)
class Batching:
    """How a run's batches are built, and why."""

    packed: bool
    group_by_length: bool
    reason: str

    def describe(self) -> str:
        shape = "packed (padding-free)" if self.packed else "padded"
        grouped = ", grouped by length" if self.group_by_length else ""
        return f"batches: {shape}{grouped}{f' ({self.reason})' if self.reason else ''}"


def choose_batching(packing: bool, group_by_length: bool | None, method_family: str) -> Batching:
    """Packed unless switched off or the method prepends learned tokens (prompt family).

    Prompt-learning adapters add virtual tokens with their own attention mask and positions,
    which a packed row cannot carry, so those runs use padded batches.
    """
    reason = ""
    packed = packing
    if packing and method_family == "prompt":
        packed, reason = False, "prompt-learning methods need padded batches"
    elif not packing:
        reason = "data.packing is off"
    grouped = (not packed) if group_by_length is None else group_by_length
    return Batching(packed=packed, group_by_length=grouped, reason=reason)


def make_collator(batching: Batching, pad_token_id: int, flash_attention: bool = False):
    """The collator for `batching`.

    Packed batches come from transformers' flattening collator: one row per batch, labels with
    -100 at each sample's first token, and `position_ids` restarting at 0 for every sample. The
    model's attention masks then see the restarts and keep each sample to itself (sdpa and eager
    build a block-diagonal causal mask; flash-attention uses the varlen kernel).
    """
    if not batching.packed:
        return PaddingCollator(pad_token_id)
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_flash_attn_kwargs=flash_attention)
