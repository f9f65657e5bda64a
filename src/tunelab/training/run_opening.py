"""The run folder a training writes: opened new, or reopened to resume (its newest whole
checkpoint) or to continue a finished run for longer; the recipe and data files it must match;
its lock held while it is written."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from tunelab.data.pipeline import data_files
from tunelab.errors import TunelabError
from tunelab.ranks import is_main, wait_for_everyone, world_size
from tunelab.recipe import Recipe
from tunelab.run import (
    DEEPSPEED_FILE,
    DISTRIBUTED_FILE,
    ENVIRONMENT_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    RunFolder,
    describe_environment,
)
from tunelab.training import distributed, resharding
from tunelab.training.callbacks import (
    keep_rows_up_to,
)
from tunelab.training.checkpoints import (
    clear_staging,
    resumable_checkpoint,
)


@contextmanager
def writing(run: RunFolder):
    """Hold the run's lock while it is written; if it fails before training, put back the run
    it replaced."""
    try:
        yield run
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()


def record_distributed(run: RunFolder, recipe: Recipe, config) -> None:
    """How the processes share the run, into the run folder (a DeepSpeed config also as its
    own file, for `--deepspeed` or deepspeed.initialize)."""
    shared = distributed.settings(recipe, config)
    run.write_json(DISTRIBUTED_FILE, shared)
    if "deepspeed" in shared:
        run.write_json(DEEPSPEED_FILE, shared["deepspeed"])


def open_run(
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
        seen_by_all(run)
        return run, resumable_checkpoint(run.checkpoints_dir)[0] if wanted else None
    run = _open_main(recipe, overwrite, resume, protected, console)
    try:
        checkpoint = _resume_point(run, recipe, console) if wanted else None
        nonce = secrets.token_hex(8)
        run.file(NODES_FILE).write_text(nonce, encoding="utf-8")
        wait_for_everyone()
        seen_by_all(run, nonce)
    except BaseException:
        run.release()
        raise
    return run, checkpoint


def restarted(recipe: Recipe, overwrite: bool, resume, console: Console) -> tuple[bool, object]:
    """(overwrite, resume) for this start: started again by the launcher after a failure
    (`--max-restarts`), a run with a whole checkpoint resumes from it, and is never
    overwritten; without one it starts as it was asked to."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or resume:
        return overwrite, resume
    folder = RunFolder.follow(recipe.output)
    if resumable_checkpoint(folder.checkpoints_dir)[0] is None:
        return overwrite, resume
    console.print(f"started again after a failure: resuming {folder.path}", highlight=False)
    return False, True


NODES_FILE = ".tunelab-nodes"  # a token the main process writes for the others to read back


def seen_by_all(run: RunFolder, nonce: str | None = None) -> None:
    """Every process reads the token the main one wrote into the run folder: on several
    machines the folder must be on a disk they share. Else every process stops with the same
    sentence naming the machines that do not see it."""
    if world_size() == 1:
        return
    import socket

    import torch.distributed as dist

    told = [nonce]
    dist.broadcast_object_list(told, src=0)
    token = run.file(NODES_FILE)
    sees = token.is_file() and token.read_text(encoding="utf-8") == told[0]
    everyone = [None] * world_size()
    dist.all_gather_object(everyone, (socket.gethostname(), os.environ.get("GROUP_RANK"), sees))
    blind = sorted({(rank, host) for host, rank, saw in everyone if not saw})
    if blind:
        named = ", ".join(f"node {rank} ({host})" for rank, host in blind)
        raise TunelabError(
            f"{named} cannot see the run folder {run.path} that node 0 opened; on several "
            "machines, set output to a folder on a disk every machine shares, at the same path."
        )


def _open_main(recipe, overwrite, resume, protected, console) -> RunFolder:
    if resume:
        run = RunFolder.reopen(recipe.output)
        try:
            check_same_recipe(run, recipe)
            resharding.check_same_processes(run, recipe)
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
