"""Token-budget batches of samples: whole samples up to a number of real tokens per batch.

The batches are made once, before training: samples sorted longest first, each put into the
fullest batch it still fits (best fit decreasing), so that a batch is nearly full and no sample
is ever split across two. Each epoch then visits the batches in its own seeded order, which
also fixes where a resumed run picks up. Training (objectives/token_budget.py) and the estimate
both batch this way.
"""

from __future__ import annotations

import bisect

import torch


def budget_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Sample indices in batches of at most `budget` tokens (a longer sample: alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens still free, batch), kept sorted
    for index in order:
        length = lengths[index]
        at = bisect.bisect_left(room, (length, -1))
        if at < len(room):
            free, batch = room.pop(at)
            batches[batch].append(index)
            bisect.insort(room, (free - length, batch))
        else:
            batches.append([index])
            bisect.insort(room, (max(budget - length, 0), len(batches) - 1))
    return batches


class TokenBudgetSampler:
    """A batch sampler over fixed token-budget batches, in a seeded order per epoch."""

    def __init__(self, lengths: list[int], budget: int, seed: int):
        self.batches = budget_batches(lengths, budget)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for position in torch.randperm(len(self.batches), generator=generator).tolist():
            yield list(self.batches[position])
