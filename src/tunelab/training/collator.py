"""Batching rendered samples for the trainer."""

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
