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
from tunelab.errors import TunelabError


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


def check_batch_tokens(recipe, max_length: int | None = None) -> None:
    """Refuse `train.batch_tokens` where it cannot apply, in one sentence (`max_length`: the
    cutoff once the data has chosen it; else the recipe's, when it is a number)."""
    from tunelab.methods import get_method
    from tunelab.plan import choose_batching

    budget = recipe.train.batch_tokens
    if budget is None:
        return
    if max_length is None and isinstance(recipe.data.max_length, int):
        max_length = recipe.data.max_length
    family = get_method(recipe.method.type).family
    packed = choose_batching(recipe.data.packing, None, family, recipe.train.objective).packed
    if recipe.train.objective != "sft":
        raise TunelabError(
            f"train.batch_tokens applies to sft runs, not train.objective "
            f"{recipe.train.objective} (its trainer batches pairs or prompts itself); remove "
            "batch_tokens and set train.batch_size."
        )
    if not packed:
        raise TunelabError(
            "train.batch_tokens fills packed rows, and this run's batches are padded (data.packing "
            "is off, or a prompt-learning method); turn data.packing on or use train.batch_size."
        )
    if max_length is not None and budget < max_length:
        raise TunelabError(
            f"train.batch_tokens {budget} is below data.max_length {max_length}: a sample that "
            f"long would not fit a batch; raise batch_tokens to at least {max_length} or lower "
            "data.max_length."
        )
