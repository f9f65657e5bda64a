"""Supervised fine-tuning: the loss on the assistant turns of rendered conversations, in
packed (padding-free) or padded batches, on transformers' Trainer."""

from __future__ import annotations

from tunelab.objectives.base import Batching, Objective, TrainerParts


class SFT(Objective):
    name = "sft"
    registry_kinds = ("sft",)
    fused_loss = True

    def batching(self, packing: bool, group_by_length, method_family: str, fit) -> Batching:
        """Packed unless switched off, the method prepends learned tokens (prompt family), or
        the model's layers cannot keep a packed row's samples apart (`fit`). Prompt-learning
        adapters add virtual tokens with their own attention mask and positions, which a packed
        row cannot carry."""
        reason = ""
        packed = packing
        if packing and method_family == "prompt":
            packed, reason = False, "prompt-learning methods need padded batches"
        elif packing and fit is not None and not fit.packable:
            packed, reason = False, fit.reason
        elif not packing:
            reason = "data.packing is off"
        grouped = (not packed) if group_by_length is None else group_by_length
        return Batching(packed=packed, group_by_length=grouped, reason=reason)

    def check_batch_tokens(self, recipe) -> None:
        return None  # token-budget batches are sft's

    def prepare(self, recipe, tokenizer, template: str, context: int | None):
        from tunelab.data.pipeline import prepare_data

        return prepare_data(recipe.data, recipe.source_dir, tokenizer, template,
                            recipe.train.seed, context, recipe.model.template_args)  # fmt: skip

    def lengths(self, target, tokenizer, template: str) -> tuple[dict, list]:
        from tunelab.data.pipeline import render_split
        from tunelab.data.stats import full_report, reasoning_share

        config = target.config.model_copy(update={"on_bad_row": "skip"})
        rendered = render_split(config, target.base_dir, "train", tokenizer, template,
                                config.cache, template_args=target.template_args)  # fmt: skip
        stats = {**full_report(rendered.samples), "model": target.model}
        stats["reasoning"] = reasoning_share(target, tokenizer)
        stats["cache"] = {
            "fingerprint": rendered.fingerprint,
            "hit": rendered.from_cache,
            "seconds": round(rendered.seconds, 3),
        }
        return stats, rendered.samples

    def preview(self, target, tokenizer, template: str, n: int) -> list:
        return rendered_preview(target, tokenizer, template, n)

    def largest_step(self, recipe, data, packed: bool) -> tuple[int, int | None]:
        if recipe.train.batch_tokens and packed:
            return worst_case_budget(data.train, recipe.train.batch_tokens)
        tokens, trained = worst_case_batch(data.train, recipe.train.batch_size, packed)
        return tokens, trained if packed else None

    def build_trainer(self, parts: TrainerParts):
        from transformers import Trainer, TrainingArguments

        from tunelab.objectives.collator import (
            LargestBatch,
            SampleDataset,
            make_collator,
            trained_positions_loss,
        )

        # With packed rows the lm_head runs only where the next token is trained (not on
        # prompts); liger's fused loss already avoids materialising the logits.
        logits_only = parts.batching.packed and not parts.liger and _keeps_logits(parts.model)
        collate = make_collator(parts.batching, parts.tokenizer.pad_token_id,
                                trained_logits_only=logits_only)  # fmt: skip
        from tunelab.objectives.token_budget import budget_trainer

        budget, data = _budget_sampler(parts.recipe, parts.data), parts.data
        return (budget_trainer() if budget else Trainer)(
            model=parts.model,
            args=TrainingArguments(**parts.arguments),
            data_collator=LargestBatch(collate),
            compute_loss_func=trained_positions_loss if logits_only else None,
            train_dataset=SampleDataset(data.train),
            eval_dataset=SampleDataset(data.eval) if data.eval else None,
            processing_class=parts.tokenizer,
            callbacks=parts.callbacks,
            **budget,
        )


def _budget_sampler(recipe, data) -> dict:
    """The Trainer's batch sampler for token-budget batches (none for fixed batch sizes)."""
    if not recipe.train.batch_tokens:
        return {}
    from tunelab.data.token_batches import TokenBudgetSampler

    lengths = [len(sample.input_ids) for sample in data.train]
    return {"batch_sampler": TokenBudgetSampler(lengths, recipe.train.batch_tokens,
                                                recipe.train.seed)}  # fmt: skip


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most causal LMs in transformers 5)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def rendered_preview(target, tokenizer, template: str, n: int) -> list:
    """The first `n` training samples as the sft trainer gets them."""
    from tunelab.data.pipeline import prepare_data

    data = prepare_data(target.config, target.base_dir, tokenizer, template, 0,
                        template_args=target.template_args)  # fmt: skip
    return data.train[:n]


def worst_case_batch(samples, batch_size: int, packed: bool = True) -> tuple[int, int]:
    """(tokens, trained tokens) of the largest forward pass the data can make: its
    `batch_size` longest samples, concatenated (packed) or each padded to the longest."""
    longest = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)[:batch_size]
    if not longest:
        return 0, 0
    tokens = sum(len(s.input_ids) for s in longest)
    if not packed:
        tokens = len(longest) * len(longest[0].input_ids)
    return tokens, sum(s.trained_tokens for s in longest)


def worst_case_budget(samples, budget: int) -> tuple[int, int]:
    """(tokens, trained tokens) of the fullest token-budget batch the data makes."""
    from tunelab.data.token_batches import budget_batches

    batches = budget_batches([len(s.input_ids) for s in samples], budget)
    if not batches:
        return 0, 0
    fullest = max(batches, key=lambda batch: sum(len(samples[i].input_ids) for i in batch))
    return (
        sum(len(samples[i].input_ids) for i in fullest),
        sum(samples[i].trained_tokens for i in fullest),
    )
