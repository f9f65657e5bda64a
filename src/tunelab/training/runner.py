"""Train from a recipe: load data and model, prepare the method, run the Trainer, write the run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from tunelab.data.load import DataReport, resolve_source
from tunelab.data.pipeline import prepare_data
from tunelab.methods import count_parameters, prepare_model
from tunelab.models.load import load_model, load_tokenizer, pick_device, pick_dtype
from tunelab.models.sources import resolve_model
from tunelab.quiet import quiet_libraries
from tunelab.recipe import Recipe, load_recipe
from tunelab.templates import resolve_template
from tunelab.training.callbacks import MetricsWriter, RichProgress, StepTimer
from tunelab.training.collator import PaddingCollator, SampleDataset
from tunelab.training.memory import peak_memory_bytes
from tunelab.training.run_folder import (
    DATA_REPORT_FILE,
    ENVIRONMENT_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunFolder,
    describe_environment,
)


@dataclass
class TrainResult:
    """What a finished run left behind."""

    run_dir: Path
    summary: dict


def train(
    recipe: Recipe | str | Path | dict,
    overrides: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
    console: Console | None = None,
) -> TrainResult:
    """Fine-tune as the recipe says and return the run folder with its summary."""
    started_at = time.perf_counter()
    console = console or Console(stderr=True)
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    quiet_libraries()
    # Cheap checks first, so a typo fails in a second, not after loading the model.
    for split in ("train", "eval"):
        for item in recipe.data.sources(split):
            resolve_source(item, recipe.data, recipe.source_dir)
    source = resolve_model(recipe.model.path)
    run = RunFolder.create(recipe.output, overwrite=overwrite)
    run.write_recipe(recipe)
    run.write_json(ENVIRONMENT_FILE, describe_environment())

    tokenizer = load_tokenizer(source)
    template = resolve_template(recipe.model.template, tokenizer)
    tokenizer.chat_template = template
    data = prepare_data(recipe.data, recipe.source_dir, tokenizer, template, recipe.train.seed)
    samples, eval_samples, report = data.train, data.eval, data.report
    run.write_json(DATA_REPORT_FILE, {**report.as_dict(), "max_length": data.max_length})
    for note in [*data.cache_notes, data.max_length_note]:
        console.print(note, highlight=False)
    console.print(
        f"data: {len(samples)} training samples from {len(report.sources)} source(s), "
        f"{len(report.bad_rows)} bad row(s) skipped, {report.truncated} truncated, "
        f"{report.placeholders_replaced} placeholder message(s) filled",
        highlight=False,
    )

    torch.manual_seed(recipe.train.seed)
    device = pick_device()
    model = load_model(source, pick_dtype(recipe.model.dtype, device), device)
    model = prepare_model(model, recipe.method)
    trainable, total = count_parameters(model)
    console.print(
        f"model: {recipe.model.path}, method {recipe.method.type}: "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )

    timer = StepTimer(started_at)
    metrics = MetricsWriter(run.file(METRICS_FILE))
    trainer = _build_trainer(
        recipe,
        run,
        model,
        tokenizer,
        samples,
        eval_samples,
        [timer, metrics, RichProgress(console)],
    )
    output = trainer.train()

    model.save_pretrained(run.adapter_dir)
    _remove_if_empty(run.path / "checkpoints")
    tokenizer.save_pretrained(run.adapter_dir)
    summary = _summary(
        recipe, trainer, output, timer, metrics, report, device, trainable, total, samples
    )
    summary["max_length"] = data.max_length
    run.write_json(SUMMARY_FILE, summary)
    console.print(
        f"done: {summary['steps']} steps in {summary['train_seconds']:.1f} s, "
        f"final loss {summary['final_loss']:.4f}, {summary['tokens_per_second']:.0f} tok/s, "
        f"peak memory {summary['peak_memory_bytes'] / 2**30:.2f} GiB"
    )
    return TrainResult(run.path, summary)


def _build_trainer(recipe, run, model, tokenizer, samples, eval_samples, callbacks):
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    cfg = recipe.train
    args = TrainingArguments(
        output_dir=str(run.path / "checkpoints"),
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
        save_strategy="no",
        eval_strategy="epoch" if eval_samples else "no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        train_dataset=SampleDataset(samples),
        eval_dataset=SampleDataset(eval_samples) if eval_samples else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    return trainer


def _summary(
    recipe, trainer, output, timer, metrics, report: DataReport, device, trainable, total, samples
) -> dict:
    state = trainer.state
    train_seconds = timer.train_seconds
    tokens = int(state.num_input_tokens_seen)
    trained_tokens = sum(s.trained_tokens for s in samples)
    return {
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "final_loss": metrics.losses[-1] if metrics.losses else None,
        "mean_loss": output.training_loss,
        "train_seconds": round(train_seconds, 3),
        "time_to_first_step_seconds": round(timer.time_to_first_step, 3),
        "total_seconds": round(time.perf_counter() - timer.started_at, 3),
        "tokens": tokens,
        "tokens_per_second": round(tokens / max(train_seconds, 1e-9), 2),
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "device": device.type,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "samples": len(samples),
        "samples_truncated": report.truncated,
        "trained_tokens_per_epoch": trained_tokens,
        "rows_skipped": len(report.bad_rows),
        "skipped_rows": report.bad_rows,
        "long_answers_dropped": len(report.long_answers_dropped),
        "duplicates_dropped": len(report.duplicates_dropped),
        "method": recipe.method.type,
        "model": recipe.model.path,
    }


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
