"""Resuming a run on another process count than made its checkpoint: the global batch kept
(re-split as batch x accumulation per process), and a ZeRO run's sharded optimizer state
turned into DeepSpeed's universal checkpoint, which any process count loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.ranks import wait_for_everyone, world_size
from tunelab.run import DISTRIBUTED_FILE
from tunelab.training.distributed import ZERO_STAGES, strategy

UNIVERSAL_TAG = "latest_universal"  # DeepSpeed reads the universal state's folder name here


def check_same_processes(run, recipe) -> None:
    """A run resumes on another process count where its state can be laid out anew (one
    process, data parallel, or ZeRO through a universal checkpoint) and its global batch
    splits among the new count; else with as many processes as it was checkpointed with."""
    if not run.file(DISTRIBUTED_FILE).is_file():
        return
    saved = run.read_json(DISTRIBUTED_FILE)
    before, now = saved.get("world_size", 1), world_size()
    if before == now:
        return
    again = f"Resume with {'--nproc ' + str(before) if before > 1 else 'one process (no --nproc)'}."
    if "fsdp" in (saved.get("strategy"), strategy(recipe)):
        raise TunelabError(
            f"{run.path} was trained by {before} process(es) under fsdp, whose state is "
            f"sharded per process; resharding FSDP state onto another count is not built. {again}"
        )
    if recipe.train.batch_tokens:
        raise TunelabError(
            f"{run.path} was trained by {before} process(es) on token-budget batches "
            f"(train.batch_tokens), which are not divided anew among {now}. {again}"
        )
    total = global_batch(saved, recipe)
    if total % now:
        raise TunelabError(
            f"{run.path} trained on a global batch of {total} samples, which {now} processes "
            f"cannot share equally; resume with a count that divides it. {again}"
        )


def global_batch(saved: dict, recipe) -> int:
    """The run's samples per optimizer step over all its processes, as it started."""
    per_process = recipe.train.batch_size * recipe.train.grad_accum
    return saved.get("global_batch", per_process * saved.get("world_size", 1))


def rebatched(run, recipe, checkpoint: Path, console):
    """The recipe as a resume from `checkpoint` trains it: on another process count than made
    it, the same global batch, split as the recipe's batch size per process and accumulation
    where that divides it (else as the per-process batch); the data order follows the global
    sample position, so each step sees the samples it would have. A ZeRO checkpoint gets its
    universal form. Per-process random states (dropout masks) start afresh; the recorded count
    is updated."""
    if not run.file(DISTRIBUTED_FILE).is_file():
        return recipe
    saved = run.read_json(DISTRIBUTED_FILE)
    before, now = saved.get("world_size", 1), world_size()
    if before == now:
        return recipe
    total = global_batch(saved, recipe)
    share = total // now
    batch = recipe.train.batch_size if share % recipe.train.batch_size == 0 else share
    accumulation = share // batch
    console.print(
        f"resuming {before}-process checkpoints with {now}: the global batch of {total} "
        f"samples kept as {batch} per process x {accumulation} accumulation step(s); random "
        "states of each process (dropout) start afresh",
        highlight=False,
    )
    if strategy(recipe) in ZERO_STAGES and run.writer:
        universal_checkpoint(checkpoint, console)
    wait_for_everyone()  # every process has read the old count before it is replaced
    if run.writer:
        run.write_json(DISTRIBUTED_FILE, {**saved, "world_size": now, "global_batch": total})
    train = recipe.train.model_copy(update={"batch_size": batch, "grad_accum": accumulation})
    return recipe.model_copy(update={"train": train})


def loads_universal(checkpoint: Path | None) -> bool:
    """Whether a ZeRO resume from `checkpoint` reads its universal form."""
    return checkpoint is not None and (checkpoint / UNIVERSAL_TAG).is_file()


def universal_checkpoint(checkpoint: Path, console) -> None:
    """DeepSpeed's per-process optimizer shards of `checkpoint` written once more as a
    universal checkpoint (each parameter's whole state, which DeepSpeed shards anew for any
    process count), beside them in the same checkpoint; the shards are kept."""
    if loads_universal(checkpoint):
        return
    tag = (checkpoint / "latest").read_text(encoding="utf-8").strip()
    target, partial = checkpoint / f"{tag}_universal", checkpoint / f"{tag}_universal.partial"
    console.print(
        f"{checkpoint.name}: DeepSpeed's shards -> a universal checkpoint", highlight=False
    )
    shutil.rmtree(partial, ignore_errors=True)  # left by a conversion that was stopped
    converted = subprocess.run(
        [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
         str(checkpoint / tag), "--output_folder", str(partial), "--num_extract_workers", "1",
         "--num_merge_workers", "1", "--inject_missing_state"],
        capture_output=True, text=True,
    )  # fmt: skip
    if converted.returncode != 0:
        said = (converted.stderr.strip().splitlines() or ["no message"])[-1]
        raise TunelabError(
            f"{checkpoint} holds DeepSpeed state for another process count, and converting it "
            f"to a universal checkpoint failed ({said}); resume with the count it was saved with."
        )
    if target.exists():  # an earlier conversion stopped before naming its tag
        shutil.rmtree(target)
    partial.rename(target)
    (checkpoint / f"{UNIVERSAL_TAG}.tmp").write_text(target.name, encoding="utf-8")
    (checkpoint / f"{UNIVERSAL_TAG}.tmp").replace(checkpoint / UNIVERSAL_TAG)
