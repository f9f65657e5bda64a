"""Train from a recipe: load data and model, prepare the method, run the Trainer, write the run."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console

from tunelab.data.pipeline import data_files
from tunelab.data.render import ConversationRenderer
from tunelab.data.token_batches import TokenBudgetSampler
from tunelab.data_tools import recipe_data
from tunelab.errors import TunelabError
from tunelab.events import EVENTS_FILE, EventFile, RunEvents
from tunelab.methods import Method, check_method, count_parameters
from tunelab.models.load import load_model, remote_code_files
from tunelab.models.packing import packed_rows_leak
from tunelab.models.sources import ModelSource
from tunelab.plan import RunPlan, check_batch_tokens, padded_instead, plan_run, with_fused_loss
from tunelab.preflight import preflight
from tunelab.quiet import quiet_libraries
from tunelab.ranks import is_main, wait_for_everyone
from tunelab.recipe import Recipe, TaskOptions, load_recipe, stage_recipes, with_overrides
from tunelab.run import (
    ADAPTER_DIR,
    DATA_REPORT_FILE,
    DEEPSPEED_FILE,
    DISTRIBUTED_FILE,
    ENVIRONMENT_FILE,
    METRICS_FILE,
    MODEL_DIR,
    REWARDS_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    RunFolder,
    describe_environment,
)
from tunelab.training import distributed, grpo, preference
from tunelab.training.callbacks import (
    ConsoleView,
    EventSource,
    MetricsWriter,
    RunStarted,
    StepTimer,
    keep_rows_up_to,
)
from tunelab.training.checkpoints import (
    OPTIMIZER_FILE,
    STAGING,
    AtomicCheckpoints,
    CarryOptimizer,
    Diverged,
    NonFiniteGuard,
    SaveOnInterrupt,
    checkpoint_read,
    clear_staging,
    latest_checkpoint,
    resumable_checkpoint,
    saving_into,
    trainable_finite,
)
from tunelab.training.collator import (
    LargestBatch,
    SampleDataset,
    make_collator,
    trained_positions_loss,
)
from tunelab.training.memory import peak_memory_bytes
from tunelab.training.plots import plot_losses
from tunelab.training.sampling import SampleAnswers
from tunelab.training.token_budget import budget_trainer
from tunelab.training.trackers import PROJECT, trackers


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
    protected = preflight(recipe)  # every input readable, none inside the run folder
    for one in stage_recipes(recipe) if recipe.stages else [recipe]:
        distributed.check_distributed(one)
        check_batch_tokens(one)
    if recipe.stages:
        result = _train_stages(recipe, overwrite, resume, console, callbacks, protected)
    else:
        run, checkpoint = _open_run(recipe, overwrite, resume, protected, console)
        with _writing(run):
            result = _train_one(recipe, run, checkpoint, console, callbacks)
            _evaluate_after(recipe, run, result, console)
    return result


def _evaluate_after(recipe: Recipe, run: RunFolder, result: TrainResult, console) -> None:
    if recipe.evaluate is not None and run.writer:
        result.summary["before_after"] = _before_after(recipe, result, console)
        run.write_json(SUMMARY_FILE, result.summary)


def _before_after(recipe: Recipe, result: TrainResult, console: Console) -> dict:
    """Compare the base model with the trained run and write the report into the run folder."""
    from tunelab.data.load import find_path
    from tunelab.evaluation import compare

    cfg = recipe.evaluate
    where = recipe.source_dir

    def path(text):
        return str(find_path(text, where)) if text else None

    task = None
    if cfg.task:
        task = TaskOptions.model_validate(
            {
                **cfg.model_dump(exclude={"prompts"}),
                "data": path(cfg.data),
                "fewshot_from": path(cfg.fewshot_from),
            }
        )
    console.rule("before / after")
    prompts = compare.read_prompts(Path(path(cfg.prompts))) if cfg.prompts else []
    report = compare.compare(
        recipe.model.path,
        str(result.run_dir),
        prompts,
        task,
        min(cfg.max_new_tokens, 128),
        console,
    )
    compare.show(console, report)
    compare.write_report(result.run_dir / "report", report)
    outcome = {
        "summary_line": report["summary_line"],
        "probe": report["probe"],
        "report": "report/",
    }
    if "task" in report:
        outcome["task"] = {
            k: {
                "before": report["task"][k]["before"]["score"],
                "after": report["task"][k]["after"]["score"],
                "wrong_to_right": len(report["task"][k]["flips"]["wrong_to_right"]),
                "right_to_wrong": len(report["task"][k]["flips"]["right_to_wrong"]),
            }
            for k in report["task"]["scores"]
        }
    return outcome


def _train_stages(
    recipe: Recipe, overwrite: bool, resume: bool, console: Console, callbacks, protected
) -> TrainResult:
    """Run each stage in order, each from the previous stage's trained weights."""
    stages = stage_recipes(recipe)
    run, _ = _open_run(recipe, overwrite, resume, protected, console, checkpoints=False)
    with _writing(run):
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
                stage_run, checkpoint = _open_run(stage, True, again, protected, console)
                with _writing(stage_run):
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
        _evaluate_after(recipe, run, result, console)
    return result


@contextmanager
def _writing(run: RunFolder):
    """Hold the run's lock while it is written; if it fails before training, put back the run
    it replaced."""
    try:
        yield run
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()


@dataclass
class Watchers:
    """The callbacks that watch a run, and the ones whose numbers the summary reads."""

    timer: StepTimer
    metrics: MetricsWriter
    interrupt: SaveOnInterrupt
    events: RunEvents
    all: list


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
    plan = plan_run(recipe)
    config = plan.config
    check_method(config, recipe.method)
    preference.check_objective(recipe)
    grpo.check_grpo(recipe)
    tokenizer, template, data = _prepare_data(recipe, run, plan.source, config, console)
    check_batch_tokens(recipe, data.max_length, plan.fit)
    if run.writer and checkpoint is None:
        _record_distributed(run, recipe, config)
    memory_estimate = _memory_estimate(recipe, plan, config, data, console)
    if memory_estimate and memory_estimate[0].fused_loss and not plan.kernels.liger:
        plan = with_fused_loss(
            plan,
            "liger-kernel on: the run fits this GPU only with its fused loss "
            "(train.fused_kernels: false refuses it, true always takes it)",
        )
    sharded_loading = distributed.prepare(recipe, config)  # alive while training
    model, plan = _load_model(recipe, plan, init_from, console)
    for note in plan.notes():
        console.print(note, highlight=False)
    reference = None
    if preference.needs_reference_copy(recipe, plan.method):
        reference = preference.reference_copy(model)
        console.print("reference: a frozen copy of the starting weights", highlight=False)
    renderer = ConversationRenderer(tokenizer, template, template_args=recipe.model.template_args)
    watchers = _watchers(recipe, run, renderer, started_at, console, [*callbacks], init_from)
    trainer = _build_trainer(recipe, run, model, tokenizer, data, watchers.all, plan, reference)
    if checkpoint is not None:
        console.print(f"resuming from {checkpoint}", highlight=False)
    try:
        summary = _train_and_save(
            recipe, run, plan, trainer, data, watchers, checkpoint, keep_optimizer
        )
    except BaseException as exc:
        if run.writer:
            error = str(exc) or type(exc).__name__
            kind = "stopped" if isinstance(exc, Interrupted) else "failed"
            watchers.events.emit(kind, trainer.state.global_step, error=error)
        raise
    del sharded_loading
    summary["memory"] = _memory_side_by_side(
        recipe, plan.device, memory_estimate, trainer.data_collator, summary["peak_memory_bytes"]
    )
    run.write_json(SUMMARY_FILE, summary)
    wait_for_everyone()  # the weights are saved before any process goes on
    if not run.writer:
        return TrainResult(run.path, summary, trainer.model)
    watchers.events.emit("finished", summary["steps"], summary=summary)
    console.print(
        f"done: {summary['steps']} steps in {summary['train_seconds']:.1f} s, "
        f"final loss {summary['final_loss']:.4f}, {summary['tokens_per_second']:.0f} tok/s, "
        f"peak memory {summary['peak_memory_bytes'] / 2**30:.2f} GiB",
        highlight=False,
    )
    return TrainResult(run.path, summary, trainer.model)


def _record_distributed(run: RunFolder, recipe: Recipe, config) -> None:
    """How the processes share the run, into the run folder (a DeepSpeed config also as its
    own file, for `--deepspeed` or deepspeed.initialize)."""
    shared = distributed.settings(recipe, config)
    run.write_json(DISTRIBUTED_FILE, shared)
    if "deepspeed" in shared:
        run.write_json(DEEPSPEED_FILE, shared["deepspeed"])


def _train_and_save(
    recipe, run, plan: RunPlan, trainer, data, watchers, checkpoint, keep_optimizer: bool
) -> dict:
    """Train, validate at the end, save the weights; the summary without the memory part."""
    output = _run_trainer(trainer, run, checkpoint, watchers)
    eval_loss = None
    if data.eval:  # validate at the end unless the schedule just did
        done = watchers.metrics.last_eval_step == trainer.state.global_step
        eval_loss = watchers.metrics.eval_losses[-1] if done else trainer.evaluate()["eval_loss"]
    _save_trained(recipe, run, plan, trainer, trainer.processing_class, keep_optimizer)
    summary = _summary(recipe, trainer, output, watchers, data, plan)
    summary.update(eval_loss=eval_loss, resumed_from=checkpoint.name if checkpoint else None)
    summary["remote_code"] = remote_code_files(plan.source)  # what ran because it was asked
    if recipe.train.objective == "grpo":
        summary.update(run.read_json(REWARDS_FILE))  # the sampling engine and each reward
    return summary


def _check_packed_rows(recipe: Recipe, plan: RunPlan, model) -> RunPlan:
    """The plan, with padded batches if the loaded model lets a packed row's samples read
    each other (measured on one short row; see `models.packing`)."""
    if not plan.batching.packed:
        return plan
    leak = packed_rows_leak(model)
    if leak is None:
        return plan
    check_batch_tokens(recipe, None, replace(plan.fit, packable=False, reason=leak))
    return padded_instead(plan, leak, recipe.train.group_by_length)


def _load_model(recipe: Recipe, plan: RunPlan, init_from: Path | None, console: Console):
    """The model with the method applied (or the previous stage's weights continued), and the
    plan, with padded batches where the loaded weights let packed samples read each other."""
    method = plan.method
    torch.manual_seed(recipe.train.seed)
    weights = plan.source
    if init_from is not None and not method.saves_adapter:
        folder = init_from / MODEL_DIR
        weights = ModelSource(str(folder), folder, None, recipe.model.trust_remote_code)
    model = load_model(weights, plan.dtype, plan.device, **plan.load_options)
    plan = _check_packed_rows(recipe, plan, model)
    if plan.batching.packed:
        # With a cache the model skips packed-sequence detection and attends across samples.
        model.config.use_cache = False
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if init_from is not None and method.saves_adapter:
        model = _continue_adapter(model, method, init_from / ADAPTER_DIR)
    else:
        model = method.prepare(model, recipe.method)
    trainable, total = count_parameters(model)
    console.print(
        f"model: {recipe.model.path}, method {method.name}: "
        f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)",
        highlight=False,
    )
    return model, plan


def _watchers(recipe, run, renderer, started_at, console, extra: list, init_from) -> Watchers:
    timer = StepTimer(started_at)
    metrics = MetricsWriter(run.file(METRICS_FILE))
    interrupt = SaveOnInterrupt(console)
    tracked = trackers(recipe, run, console)
    events = RunEvents(ConsoleView(console), EventFile(run.file(EVENTS_FILE)), *tracked)
    cfg = recipe.train
    found = [
        RunStarted(run),
        timer,
        metrics,
        EventSource(events),
        interrupt,
        NonFiniteGuard(run.checkpoints_dir, cfg.lr),
        AtomicCheckpoints(run.checkpoints_dir, cfg.keep_last, events),
        SampleAnswers(
            run.file(SAMPLES_FILE),
            renderer,
            cfg.sample_prompts,
            cfg.sample_every,
            cfg.sample_max_new_tokens,
            events,
        ),
        *tracked,
        *extra,
    ]
    if init_from is not None and cfg.carry_optimizer:
        found.append(CarryOptimizer(init_from / OPTIMIZER_FILE))
    return Watchers(timer, metrics, interrupt, events, found)


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


def _save_trained(recipe, run, plan: RunPlan, trainer, tokenizer, keep_optimizer: bool) -> None:
    """The final weights (only finite ones), the optimizer for a next stage, the loss plot."""
    model = trainer.model
    if not trainable_finite(model):
        raise Diverged(
            f"training diverged: after step {trainer.state.global_step} the trained weights are "
            f"not finite; nothing was saved. Lower train.lr (now {recipe.train.lr:g})."
        )
    model.config.use_cache = True  # the saved config is for inference
    weights = distributed.gathered_weights(trainer)  # every process takes part
    if not run.writer:
        return
    with saving_into(run.path):
        _save_final(run, plan.method, model, tokenizer, weights)
        if keep_optimizer:
            torch.save(trainer.optimizer.state_dict(), run.file(OPTIMIZER_FILE))
    plot_losses(run.file(METRICS_FILE), run.file("loss.png"))


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
    for note in [*data.cache_notes, data.max_length_note]:
        console.print(note, highlight=False)
    untaught = len(data.train) - data.stop_token_trained
    if untaught and getattr(data, "kind", None) != "prompts":  # (grpo samples its answers)
        console.print(
            f"[yellow]{untaught} of {len(data.train)} training samples do not train a stop token "
            "at the end of their answer[/] (cut by max_length, or the template closes turns "
            "with plain text); the model may not learn to stop.",
            highlight=False,
        )
    console.print(
        f"data: {len(data.train)} training samples, {len(data.eval or [])} validation, "
        f"{len(data.report.bad_rows)} bad row(s) skipped, {data.report.truncated} truncated",
        highlight=False,
    )
    if data.report.reasoning_turns or data.report.reasoning_dropped:
        console.print(
            f"reasoning: {data.report.reasoning_turns} answer(s) train their reasoning, "
            f"{data.report.reasoning_dropped} had it dropped (data.reasoning)",
            highlight=False,
        )
    if data.report.turn_samples:
        console.print(
            f"{data.report.turn_samples} extra samples: the chat template renders earlier turns "
            "otherwise once the conversation goes on, so those conversations train one turn "
            "per sample, each as it is generated",
            highlight=False,
        )
    return tokenizer, template, data


def _memory_estimate(recipe, plan: RunPlan, config, data, console):
    """The estimate `tunelab estimate` prints, made before the weights load, with the profile it
    came from (None if the model cannot be traced). On a GPU it is checked against the card's
    memory, which may turn liger's fused loss on (see `plan.with_fused_loss`)."""
    from tunelab.estimation import estimate_planned, profile

    try:
        prof = profile(config, recipe.method, plan.dtype)
    except TunelabError as error:
        console.print(f"memory estimate skipped: {error}", highlight=False)
        return None
    budget = None
    if plan.device.type == "cuda":
        budget = torch.cuda.get_device_properties(plan.device).total_memory
    result = estimate_planned(recipe, plan, config, data, prof, budget)
    console.print(
        f"memory estimate: {result.total_bytes / 2**30:.2f} GiB peak "
        f"({result.tokens_per_step:,} tokens in the largest step)",
        highlight=False,
    )
    return result, prof


def _memory_side_by_side(recipe, device, before, largest, measured: int) -> dict | None:
    """The estimate made before the run, and the same estimate for the largest batch that
    actually ran (random batches rarely meet the data's worst case), next to the measured peak."""
    from tunelab.estimation import add_objective_parts, estimate

    if before is None:
        return None
    planned, prof = before
    # GRPO's batches are made by its own sampler: its planned largest step stands for them
    tokens = getattr(largest, "tokens", planned.tokens_per_step)
    ran = estimate(
        prof,
        recipe.method.type,
        recipe.train.batch_size,
        planned.length,
        recipe.train.gradient_checkpointing,
        device.type,
        tokens_per_step=tokens,
        logit_tokens=getattr(largest, "logit_tokens", None),
        fused_loss=planned.fused_loss,
    )
    add_objective_parts(ran, recipe, prof)
    return {
        "loss_path": "liger fused" if planned.fused_loss else "logits",
        "estimated_bytes": planned.total_bytes,
        "estimated_parts": planned.parts,
        "tokens_in_largest_step": planned.tokens_per_step,
        "measured_bytes": measured,
        "tokens_in_largest_step_run": tokens,
        "estimated_bytes_for_largest_step_run": ran.total_bytes,
        "measured_over_estimated": round(measured / ran.total_bytes, 3),
    }


def _continue_adapter(model, method: Method, adapter: Path):
    """The previous stage's adapter, trainable again (the same adapter keeps learning)."""
    from peft import PeftModel, prepare_model_for_kbit_training

    if method.name == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return PeftModel.from_pretrained(model, adapter, is_trainable=True)


def _open_run(
    recipe: Recipe,
    overwrite: bool,
    resume: bool,
    protected: list[Path],
    console: Console,
    checkpoints: bool = True,
) -> tuple[RunFolder, Path | None]:
    """A fresh run folder, or the run to resume and (`checkpoints`) its newest whole checkpoint.

    Launched as several processes, the main one opens (and locks) the folder while the others
    wait, then follow it without writing.
    """
    wanted = resume and checkpoints
    if not is_main():
        wait_for_everyone()
        run = RunFolder.follow(recipe.output)
        return run, resumable_checkpoint(run.checkpoints_dir)[0] if wanted else None
    run = _open_main(recipe, overwrite, resume, protected, console)
    try:
        checkpoint = _resume_point(run, recipe, console) if wanted else None
    except BaseException:
        run.release()
        raise
    wait_for_everyone()
    return run, checkpoint


def _open_main(recipe, overwrite, resume, protected, console) -> RunFolder:
    if resume:
        run = RunFolder.reopen(recipe.output)
        try:
            check_same_recipe(run, recipe)
            distributed.check_same_processes(run, recipe)
            check_same_data(run, recipe, accept=resume == DATA_CHANGED, console=console)
        except TunelabError:
            run.release()
            raise
    else:
        run = RunFolder.create(recipe.output, overwrite=overwrite, protected=protected)
        run.write_recipe(recipe)
        run.write_json(ENVIRONMENT_FILE, describe_environment())
        run.write_json(DATA_FILES, data_files(recipe.data, recipe.source_dir))
    for note in run.notes:
        console.print(note, highlight=False)
    return run


DATA_FILES = "data_files.json"  # the SHA-256 of each data file when the run started
DATA_CHANGED = "data-changed"  # `resume` that continues on data files changed since


def check_same_data(run: RunFolder, recipe: Recipe, accept: bool, console: Console) -> None:
    """A run resumes on the data files it started with: a changed file would feed the steps
    after the checkpoint other rows than its position counts. `accept` continues anyway."""
    if not run.file(DATA_FILES).is_file():
        return  # a run from before files were recorded
    saved, now = run.read_json(DATA_FILES), data_files(recipe.data, recipe.source_dir)
    changed = sorted(f for f in set(saved) | set(now) if saved.get(f) != now.get(f))
    if not changed:
        return
    if not accept:
        raise TunelabError(
            f"the data file {changed[0]} changed since {run.path} started (its contents "
            f"differ{f', and {len(changed) - 1} more' if len(changed) > 1 else ''}); the "
            "steps after the checkpoint would read other rows. Resume on it anyway with "
            "--resume --data-changed, or start again with --overwrite."
        )
    console.print(f"note: resuming on changed data ({', '.join(changed)})", highlight=False)
    run.write_json(DATA_FILES, now)


def check_same_recipe(run: RunFolder, recipe: Recipe) -> None:
    """A run resumes only with the recipe (and overrides) it started with; a finished one
    (without stages) may also be given more epochs or steps, to continue it."""
    # read through Recipe, so a section added since the run started counts as its defaults
    saved, now = run.recipe().model_dump(mode="json"), recipe.model_dump(mode="json")
    if run.summary() is not None and not recipe.stages:
        length = {key: now["train"][key] for key in ("epochs", "max_steps")}
        saved = {**saved, "train": {**saved.get("train", {}), **length}}
    changed = [key for key in now if saved.get(key) != now[key]]
    if changed:
        raise TunelabError(
            f"the recipe's `{changed[0]}` section differs from the one {run.path} started with; "
            "resume with the same recipe and overrides."
        )


def _resume_point(run: RunFolder, recipe: Recipe, console: Console) -> Path:
    """The newest whole checkpoint of a run that may be resumed (or continued for longer)."""
    if run.summary() is not None:
        return _continue_point(run, recipe, console)
    checkpoint, damaged = resumable_checkpoint(run.checkpoints_dir)
    if checkpoint is None and damaged:
        raise TunelabError(
            f"{run.path} has no whole checkpoint to resume from: {'; '.join(damaged)}. "
            "Start again with --overwrite."
        )
    if checkpoint is None:
        raise TunelabError(
            f"{run.path} has no complete checkpoint to resume from; start again with --overwrite."
        )
    for note in damaged:
        console.print(f"{note}; resuming from {checkpoint.name} instead", highlight=False)
    clear_staging(run.checkpoints_dir)  # a checkpoint half-written when the run stopped
    step = int(checkpoint.name.split("-")[-1])
    for name in (METRICS_FILE, SAMPLES_FILE):
        keep_rows_up_to(run.file(name), step)
    return checkpoint


def _continue_point(run: RunFolder, recipe: Recipe, console: Console) -> Path:
    """A finished run given more epochs or steps goes on from the checkpoint of its last
    step: the recipe is updated and the old summary kept as summary-step-N.json."""
    steps, before = run.summary()["steps"], run.recipe().train
    now = recipe.train
    longer = (
        now.max_steps > steps
        if now.max_steps
        else (before.max_steps is not None or now.epochs > before.epochs)
    )
    if recipe.stages or not longer:
        raise TunelabError(
            f"{run.path} already finished ({steps} steps); to train it further, resume with "
            f"more epochs or steps, e.g. `--resume train.epochs={before.epochs + 1:g}`."
            if not recipe.stages
            else f"{run.path} already finished all its stages; there is nothing to resume."
        )
    checkpoint, _ = resumable_checkpoint(run.checkpoints_dir)
    if checkpoint is None or checkpoint.name != f"checkpoint-{steps}":
        raise TunelabError(
            f"{run.path} finished without a whole checkpoint of its last step {steps} (set "
            "train.save_every to keep one), so it cannot go on exactly where it stopped; start "
            "a new run from its weights as a stage instead."
        )
    run.write_recipe(recipe)
    os.replace(run.file(SUMMARY_FILE), run.file(f"summary-step-{steps}.json"))
    console.print(f"{run.path} finished at step {steps}; continuing it", highlight=False)
    return checkpoint


def _build_trainer(recipe, run, model, tokenizer, data, callbacks, plan: RunPlan, reference=None):
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    arguments = _training_arguments(recipe, run, plan, bool(data.eval), model.config)
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


def _training_arguments(recipe, run, plan: RunPlan, validate: bool, config) -> dict:
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
        use_cpu=not torch.cuda.is_available(),
        **distributed.training_arguments(recipe, config),
    )


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most causal LMs in transformers 5)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _save_final(run: RunFolder, method: Method, model, tokenizer, weights=None) -> None:
    """An adapter (peft methods) or the whole model (full, freeze), with tokenizer and template;
    `weights`: the whole state dict where the processes held only shards of it (ZeRO-3)."""
    target = run.adapter_dir if method.saves_adapter else run.model_dir
    given = {} if weights is None else {"state_dict": weights}
    if method.saves_adapter and "ref" in getattr(model, "peft_config", {}):
        # not a DPO/KTO reference
        model.save_pretrained(target, selected_adapters=["default"], **given)
    else:
        model.save_pretrained(target, **given)
    tokenizer.save_pretrained(target)
    staging = run.checkpoints_dir / STAGING
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    if run.checkpoints_dir.is_dir() and not any(run.checkpoints_dir.iterdir()):
        run.checkpoints_dir.rmdir()


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
