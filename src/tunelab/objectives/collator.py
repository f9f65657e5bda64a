"""Batching rendered samples for the trainer: packed (padding-free) or padded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.data.render import IGNORE_INDEX, RenderedSample
from tunelab.objectives.base import Batching


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


def make_collator(
    batching: Batching,
    pad_token_id: int,
    trained_logits_only: bool = False,
):
    """The collator for `batching`.

    Packed batches come from transformers' flattening collator: one row per batch, labels with
    -100 at each sample's first token, `position_ids` restarting at 0 for every sample, and the
    sample boundaries (`cu_seq_lens_*`) that flash-attention and tunelab's packed sdpa use to keep
    each sample to itself. `trained_logits_only` also passes `logits_to_keep`: the positions whose
    next token is trained, so the lm_head and the loss skip the prompt positions.
    """
    if not batching.packed:
        return PaddingCollator(pad_token_id)
    return PackedCollator(trained_logits_only=trained_logits_only)


class PackedCollator:
    def __init__(self, trained_logits_only: bool = False):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True)
        self.trained_logits_only = trained_logits_only

    def __call__(self, features: list[dict]) -> dict:
        batch = self.flatten(features)
        if self.trained_logits_only:
            batch["logits_to_keep"] = predicting_positions(batch["labels"])
        return batch


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions of a packed row whose next token is trained (the only logits the loss reads)."""
    return (labels[0, 1:] != IGNORE_INDEX).nonzero().squeeze(-1)


def trained_positions_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross entropy over logits kept at `predicting_positions` only.

    The same value as the model's own shifted loss over the full row: the sum over trained
    tokens divided by the trained tokens of the whole (accumulated) batch, or their mean.
    """
    positions = predicting_positions(labels)
    targets = labels[0, positions + 1]
    logits = outputs.logits[0].float()
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, targets)
    total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return total / num_items_in_batch


class LargestBatch:
    """Wraps a collator and remembers its largest batch: tokens held (padding included) and the
    positions that get logits, for comparing measured memory with the estimate afterwards; and
    counts the real (non-padding) tokens of every batch.

    A batch may hold several sequences to run (a preference pair's `chosen_input_ids` and
    `rejected_input_ids`, KTO's `KL_input_ids`): every `*input_ids` but the prompt's counts.
    """

    def __init__(self, collate):
        self.collate = collate
        self.tokens = 0
        self.logit_tokens = 0
        self.seen = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        keys = [k for k in batch if k.endswith("input_ids") and not k.startswith("prompt")]
        tokens = sum(int(batch[k].numel()) for k in keys)
        masks = [batch.get(k.replace("input_ids", "attention_mask")) for k in keys]
        self.seen += sum(int(m.sum()) if m is not None else 0 for m in masks)
        if tokens > self.tokens:
            self.tokens = tokens
            keep = batch.get("logits_to_keep")
            self.logit_tokens = int(keep.numel()) if keep is not None else tokens
        return batch
