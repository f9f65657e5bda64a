"""The Trainer of a run: its TrainingArguments, and the trainer its objective runs on
(transformers' Trainer for sft, TRL's for the preference objectives and GRPO)."""

from __future__ import annotations

import torch

from tunelab.data.token_batches import TokenBudgetSampler
from tunelab.plan import RunPlan
from tunelab.run import (
    REWARDS_FILE,
    SAMPLES_FILE,
    RunFolder,
)
from tunelab.training import distributed, grpo, preference
from tunelab.training.checkpoints import (
    STAGING,
)
from tunelab.training.collator import (
    LargestBatch,
    SampleDataset,
    make_collator,
    trained_positions_loss,
)
from tunelab.training.resharding import loads_universal
from tunelab.training.token_budget import budget_trainer
from tunelab.training.trackers import PROJECT


def build_trainer(
    recipe, run, model, tokenizer, data, callbacks, plan: RunPlan, reference=None, resume=None
):
    """The run's trainer; `resume` is the checkpoint it will start from, if any."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    arguments = _training_arguments(recipe, run, plan, bool(data.eval))
    arguments.update(distributed.training_arguments(recipe, model.config, loads_universal(resume)))
    if recipe.train.objective == "grpo":
        trainer = _grpo_trainer(recipe, run, arguments, model, tokenizer, data, callbacks)
    elif recipe.train.objective != "sft":
        trainer = preference.build(recipe, arguments, model, reference, tokenizer, data, callbacks)
    else:
        batching, kernels = plan.batching, plan.kernels
        # With packed rows the lm_head runs only where the next token is trained (not on
        # prompts); liger's fused loss already avoids materialising the logits.
        logits_only = batching.packed and not kernels.liger and _keeps_logits(model)
        collate = make_collator(batching, tokenizer.pad_token_id, trained_logits_only=logits_only)
        budget = {}
        if recipe.train.batch_tokens:
            lengths = [len(sample.input_ids) for sample in data.train]
            sampler = TokenBudgetSampler(lengths, recipe.train.batch_tokens, recipe.train.seed)
            budget = {"batch_sampler": sampler}
        trainer = (budget_trainer() if budget else Trainer)(
            model=model,
            args=TrainingArguments(**arguments),
            data_collator=LargestBatch(collate),
            compute_loss_func=trained_positions_loss if logits_only else None,
            train_dataset=SampleDataset(data.train),
            eval_dataset=SampleDataset(data.eval) if data.eval else None,
            processing_class=tokenizer,
            callbacks=callbacks,
            **budget,
        )
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    return trainer


def _grpo_trainer(recipe, run: RunFolder, arguments: dict, model, tokenizer, data, callbacks):
    """GRPO's trainer with the recipe's rewards (what each one is goes into rewards.json)."""
    rewards = grpo.rewards_for(recipe, data, tokenizer, model, tokenizer.chat_template)
    if run.writer:
        run.write_json(REWARDS_FILE, {"generation": grpo.engine(recipe), "rewards": rewards.record})
    log = grpo.CompletionLog(run.file(SAMPLES_FILE), recipe.train.sample_every)
    return grpo.build(recipe, arguments, model, tokenizer, data, callbacks, rewards, log)


def _training_arguments(recipe, run, plan: RunPlan, validate: bool) -> dict:
    """The TrainingArguments every run shares, whatever its objective."""
    cfg = recipe.train
    batching, kernels = plan.batching, plan.kernels
    if validate:
        eval_strategy, eval_steps = ("steps", cfg.eval_every) if cfg.eval_every else ("epoch", None)
    else:
        eval_strategy, eval_steps = "no", None
    return dict(
        output_dir=str(run.checkpoints_dir / STAGING),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        logging_steps=cfg.log_every,
        logging_strategy="steps",
        save_strategy="steps" if cfg.save_every else "no",
        save_steps=cfg.save_every or 500,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        report_to="none",  # the trackers are tunelab's callbacks (training/trackers.py)
        run_name=run.path.name,
        project=PROJECT,
        disable_tqdm=True,
        remove_unused_columns=False,
        # a packed row has no padding, and its pad id (often eos) also occurs in real text
        logging_nan_inf_filter=False,  # a diverging loss is shown, and stops the run
        include_num_input_tokens_seen="all" if batching.packed else "non_padding",
        train_sampling_strategy="group_by_length" if batching.group_by_length else "random",
        use_liger_kernel=kernels.liger and cfg.objective == "sft",
        torch_compile=cfg.compile,
        dataloader_num_workers=0,
        ddp_timeout=cfg.collective_timeout,
        use_cpu=not torch.cuda.is_available(),
    )


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most causal LMs in transformers 5)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
