"""Train from a recipe: load data and model, prepare the method, run the Trainer, write the run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from tunelab.data.render import ConversationRenderer
from tunelab.data_tools import recipe_data
from tunelab.errors import TunelabError
from tunelab.evaluation.after_training import evaluate_after
from tunelab.methods import check_method, count_parameters
from tunelab.models.load import remote_code_files
from tunelab.objectives import objective_of
from tunelab.plan import RunPlan, check_batch_tokens, plan_run, with_fused_loss
from tunelab.preflight import preflight
from tunelab.quiet import quiet_libraries
from tunelab.ranks import is_main, wait_for_everyone
from tunelab.recipe import Recipe, load_recipe, stage_recipes, with_overrides
from tunelab.run import (
    DATA_REPORT_FILE,
    SUMMARY_FILE,
    RunFolder,
)
from tunelab.training import distributed, resharding
from tunelab.training.callbacks import (
    RunStarted,
)
from tunelab.training.checkpoints import (
    checkpoint_read,
    latest_checkpoint,
    saving_into,
)
from tunelab.training.memory import peak_memory_bytes
from tunelab.training.memory_check import memory_estimate, memory_side_by_side
from tunelab.training.model_setup import load_for_training, reference_copy
from tunelab.training.run_opening import open_run, record_distributed, restarted, writing
from tunelab.training.saving import save_trained
from tunelab.training.trainer_setup import build_trainer
from tunelab.training.views import show_data, show_done
from tunelab.training.watchers import Watchers
from tunelab.training.watchers import watchers as run_watchers


class Interrupted(TunelabError):
    """Training stopped on Ctrl-C after saving a checkpoint."""

    exit_code = 130


@dataclass
class TrainResult:
    """What a finished run left behind (and the trained model, for notebooks)."""

    run_dir: Path
    summary: dict
    model: object = field(default=None, repr=False)


def train(
    recipe: Recipe | str | Path | dict,
    overrides: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
    resume: bool | str = False,
    console: Console | None = None,
    callbacks: list | tuple = (),
) -> TrainResult:
    """Fine-tune as the recipe says and return the run folder with its summary. `resume`
    continues from the newest checkpoint; "data-changed" also where a data file changed."""
    console = console or Console(stderr=True)
    if not is_main():  # launched as several processes, the main one tells the run
        console = Console(stderr=True, quiet=True)
    if isinstance(recipe, Recipe):
        recipe = with_overrides(recipe, overrides)  # never dropped for a loaded recipe
    else:
        recipe = load_recipe(recipe, overrides)
    overwrite, resume = restarted(recipe, overwrite, resume, console)
    protected = preflight(recipe)  # every input readable, none inside the run folder
    for one in stage_recipes(recipe) if recipe.stages else [recipe]:
        distributed.check_distributed(one)
        check_batch_tokens(one)
    distributed.join_group(recipe)
    if recipe.stages:
        result = _train_stages(recipe, overwrite, resume, console, callbacks, protected)
    else:
        run, checkpoint = open_run(recipe, overwrite, resume, protected, console)
        with writing(run):
            result = _train_one(recipe, run, checkpoint, console, callbacks)
            evaluate_after(recipe, run, result.summary, console)
    return result


def _train_stages(
    recipe: Recipe, overwrite: bool, resume: bool, console: Console, callbacks, protected
) -> TrainResult:
    """Run each stage in order, each from the previous stage's trained weights."""
    stages = stage_recipes(recipe)
    run, _ = open_run(recipe, overwrite, resume, protected, console, checkpoints=False)
    with writing(run):
        summaries, previous, result = [], None, None
        for index, stage in enumerate(stages, start=1):
            folder = RunFolder(Path(stage.output))
            console.rule(f"stage {index}/{len(stages)}: {folder.path.name}")
            finished = folder.summary() if resume else None
            if finished is not None:
                console.print("finished earlier; skipped", highlight=False)
                result = TrainResult(folder.path, finished)
            else:
                again = resume if latest_checkpoint(folder.checkpoints_dir) is not None else False
                stage_run, checkpoint = open_run(stage, True, again, protected, console)
                with writing(stage_run):
                    result = _train_one(
                        stage,
                        stage_run,
                        checkpoint,
                        console,
                        [*callbacks, RunStarted(run)],
                        init_from=previous,
                        keep_optimizer=index < len(stages),
                    )
            summaries.append({"stage": index, "run_dir": str(result.run_dir), **result.summary})
            previous = result.run_dir
        summary = {
            "stages": summaries,
            "final_stage": str(previous),
            "train_seconds": round(sum(s["train_seconds"] for s in summaries), 3),
            "peak_memory_bytes": max(s["peak_memory_bytes"] for s in summaries),
            "steps": sum(s["steps"] for s in summaries),
            "final_loss": summaries[-1]["final_loss"],
        }
        run.write_json(SUMMARY_FILE, summary)
        result = TrainResult(run.path, summary, result.model)
        evaluate_after(recipe, run, result.summary, console)
    return result


def _train_one(
    recipe: Recipe,
    run: RunFolder,
    checkpoint: Path | None,
    console: Console,
    callbacks,
    init_from: Path | None = None,
    keep_optimizer: bool = False,
) -> TrainResult:
    """One run (or one stage) into its open run folder, from `checkpoint` when resuming.

    `init_from` is a previous stage whose trained weights start this one; `keep_optimizer`
    saves the final optimizer state for a next stage that carries it on.
    """
    started_at = time.perf_counter()
    quiet_libraries()
    if checkpoint is not None:  # checkpoints of another process count: the same global batch
        recipe = resharding.rebatched(run, recipe, checkpoint, console)
    plan, (tokenizer, template, data), estimated = _planned(recipe, run, checkpoint, console)
    sharded_loading = distributed.prepare(recipe, plan.config)  # alive while training
    model, plan, reference = _model(recipe, plan, init_from, console)
    renderer = ConversationRenderer(tokenizer, template, template_args=recipe.model.template_args)
    watchers = run_watchers(recipe, run, renderer, started_at, console, [*callbacks], init_from)
    trainer = build_trainer(
        recipe, run, model, tokenizer, data, watchers.all, plan, reference, checkpoint
    )
    if checkpoint is not None:
        console.print(f"resuming from {checkpoint}", highlight=False)
    try:
        summary = _train_and_save(
            recipe, run, plan, trainer, data, watchers, checkpoint, keep_optimizer
        )
    except BaseException as exc:
        if run.writer:
            kind = "stopped" if isinstance(exc, Interrupted) else "failed"
            watchers.events.emit(
                kind, trainer.state.global_step, error=str(exc) or type(exc).__name__
            )
        raise
    del sharded_loading
    summary["memory"] = memory_side_by_side(
        recipe, plan.device, estimated, trainer.data_collator, summary["peak_memory_bytes"]
    )
    run.write_json(SUMMARY_FILE, summary)
    wait_for_everyone()  # the weights are saved before any process goes on
    if run.writer:
        watchers.events.emit("finished", summary["steps"], summary=summary)
        show_done(console, summary)
    return TrainResult(run.path, summary, trainer.model)


def _planned(recipe: Recipe, run: RunFolder, checkpoint: Path | None, console: Console):
    """(plan, (tokenizer, template, data), estimate) of a run, checked before weights load;
    a GPU run that fits only with liger's fused loss gets it."""
    plan = plan_run(recipe)
    check_method(plan.config, recipe.method)
    objective_of(recipe).check(recipe)
    prepared = _prepare_data(recipe, run, plan.source, plan.config, console)
    check_batch_tokens(recipe, prepared[2].max_length, plan.fit)
    if run.writer and checkpoint is None:
        record_distributed(run, recipe, plan.config)
    estimated = memory_estimate(recipe, plan, plan.config, prepared[2], console)
    if estimated and estimated[0].fused_loss and not plan.kernels.liger:
        plan = with_fused_loss(
            plan,
            "liger-kernel on: the run fits this GPU only with its fused loss "
            "(train.fused_kernels: false refuses it, true always takes it)",
        )
    return plan, prepared, estimated


def _model(recipe: Recipe, plan: RunPlan, init_from: Path | None, console: Console):
    """(model, plan, reference): the weights with the method applied, and the frozen copy the
    objective learns against where it keeps one."""
    model, plan = load_for_training(recipe, plan, init_from, console)
    for note in plan.notes():
        console.print(note, highlight=False)
    reference = None
    if objective_of(recipe).keeps_reference_copy(recipe, plan.method):
        reference = reference_copy(model)
        console.print("reference: a frozen copy of the starting weights", highlight=False)
    return model, plan, reference


def _train_and_save(
    recipe, run, plan: RunPlan, trainer, data, watchers, checkpoint, keep_optimizer: bool
) -> dict:
    """Train, validate at the end, save the weights; the summary without the memory part."""
    output = _run_trainer(trainer, run, checkpoint, watchers)
    eval_loss = None
    if data.eval:  # validate at the end unless the schedule just did
        done = watchers.metrics.last_eval_step == trainer.state.global_step
        eval_loss = watchers.metrics.eval_losses[-1] if done else trainer.evaluate()["eval_loss"]
    save_trained(recipe, run, plan, trainer, trainer.processing_class, keep_optimizer)
    summary = _summary(recipe, trainer, output, watchers, data, plan)
    summary.update(eval_loss=eval_loss, resumed_from=checkpoint.name if checkpoint else None)
    summary["remote_code"] = remote_code_files(plan.source)  # what ran because it was asked
    summary.update(objective_of(recipe).summary(run))
    return summary


def _run_trainer(trainer, run: RunFolder, checkpoint: Path | None, watchers):
    """Train (from the checkpoint, if any); Ctrl-C ends as `Interrupted` once it has saved."""
    with saving_into(run.path), checkpoint_read(checkpoint, watchers.timer.began):
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if watchers.interrupt.requested:
        saved = latest_checkpoint(run.checkpoints_dir)
        raise Interrupted(
            f"stopped at step {trainer.state.global_step}; checkpoint {saved} saved; "
            f"continue with `tunelab train <recipe> --resume`."
        )
    return output


def _prepare_data(recipe: Recipe, run: RunFolder, source, config, console: Console):
    """The tokenizer, its chat template and the rendered data, reported into the run."""
    tokenizer, template, data = recipe_data(recipe, source, config)
    tokenizer.chat_template = template
    run.write_json(
        DATA_REPORT_FILE,
        {
            **data.report.as_dict(),
            "max_length": data.max_length,
            "samples": len(data.train),
            "stop_token_trained": data.stop_token_trained,
        },
    )
    show_data(console, data)
    return tokenizer, template, data


def _summary(recipe, trainer, output, watchers: Watchers, data, plan: RunPlan) -> dict:
    state, report, samples = trainer.state, data.report, data.train
    timer, metrics, device = watchers.timer, watchers.metrics, plan.device
    trainable, total = count_parameters(trainer.model)
    train_seconds = timer.train_seconds
    tokens = int(state.num_input_tokens_seen)  # all processes' tokens
    per_rank = distributed.gather(peak_memory_bytes(device))
    return {
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "final_loss": metrics.losses[-1] if metrics.losses else None,
        "mean_loss": output.training_loss,
        "train_seconds": round(train_seconds, 3),
        "time_to_first_step_seconds": round(timer.time_to_first_step, 3),
        "total_seconds": round(time.perf_counter() - timer.started_at, 3),
        "tokens": tokens,
        # this process's tokens over its time (a resumed run counted the rest before)
        "tokens_per_second": round((tokens - timer.tokens_before) / max(train_seconds, 1e-9), 2),
        "peak_memory_bytes": max(per_rank),
        "peak_memory_bytes_per_rank": per_rank,
        "world_size": len(per_rank),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "device": device.type,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "samples": len(samples),
        "samples_truncated": report.truncated,
        "trained_tokens_per_epoch": sum(s.trained_tokens for s in samples),
        "rows_skipped": len(report.bad_rows),
        "skipped_rows": report.bad_rows,
        "long_answers_dropped": len(report.long_answers_dropped),
        "duplicates_dropped": len(report.duplicates_dropped),
        "method": recipe.method.type,
        "model": recipe.model.path,
        "max_length": data.max_length,
        "packed": plan.batching.packed,
        "batching_reason": plan.batching.reason or None,
        "group_by_length": plan.batching.group_by_length,
        "fused_kernels": plan.kernels.used,
        "attention": plan.attention,
    }
