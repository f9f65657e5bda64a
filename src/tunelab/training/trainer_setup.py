"""The Trainer of a run: its TrainingArguments, and the trainer its objective runs on
(transformers' Trainer for sft, TRL's for the preference objectives and GRPO)."""

from __future__ import annotations

import torch

from tunelab.objectives import TrainerParts, objective_of
from tunelab.plan import RunPlan
from tunelab.training import distributed
from tunelab.training.checkpoints import (
    STAGING,
)
from tunelab.training.resharding import loads_universal
from tunelab.training.trackers import PROJECT


def build_trainer(
    recipe, run, model, tokenizer, data, callbacks, plan: RunPlan, reference=None, resume=None
):
    """The run's trainer, as its objective builds it; `resume` is the checkpoint it will start
    from, if any."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    arguments = _training_arguments(recipe, run, plan, bool(data.eval))
    arguments.update(distributed.training_arguments(recipe, model.config, loads_universal(resume)))
    parts = TrainerParts(recipe, run, arguments, model, tokenizer, data, callbacks, reference,
                         plan.batching, plan.kernels.liger)  # fmt: skip
    trainer = objective_of(recipe).build_trainer(parts)
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    return trainer


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
        use_liger_kernel=kernels.liger and objective_of(recipe).fused_loss,
        torch_compile=cfg.compile,
        dataloader_num_workers=0,
        ddp_timeout=cfg.collective_timeout,
        use_cpu=not torch.cuda.is_available(),
    )
