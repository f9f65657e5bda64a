"""Training on token-budget batches: each forward pass holds whole samples up to
`train.batch_tokens` real tokens, packed into one row, so a step is as full on short samples as
on long ones (the batches: data/token_batches.py). The Trainer counts the trained tokens of the
whole optimizer step (`num_items_in_batch`), so the loss is normalised as for the same samples
in one batch, with gradient accumulation as without it.
"""

from __future__ import annotations

import functools

import torch

from tunelab.data.token_batches import TokenBudgetSampler


@functools.cache
def budget_trainer():
    """The Trainer class whose training batches a `TokenBudgetSampler` draws (made on first
    use: transformers loads only when training does)."""
    from transformers import Trainer

    class TokenBudgetTrainer(Trainer):
        def __init__(self, *args, batch_sampler: TokenBudgetSampler, **kwargs):
            super().__init__(*args, **kwargs)
            self.batch_sampler = batch_sampler

        def get_train_dataloader(self):
            collate = self._get_collator_with_removed_columns(self.data_collator, "training")
            loader = torch.utils.data.DataLoader(
                self.train_dataset,
                batch_sampler=self.batch_sampler,
                collate_fn=collate,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
            return self.accelerator.prepare(loader)

    return TokenBudgetTrainer
