"""Training as several processes: `--nproc N` starts them with torchrun, and the recipe's
`train.distributed` picks how they share the model (data parallel or FSDP) through the
Trainer's own integration. The settings used are written into the run folder."""

from __future__ import annotations

import os
import sys

import torch

from tunelab.errors import TunelabError
from tunelab.ranks import world_size


def launch(nproc: int, arguments: list[str]) -> int:
    """Run `tunelab train ARGUMENTS` as `nproc` processes under torchrun's launcher; the exit
    code of the first that failed, else 0.

    On a CPU each process gets an equal share of the cores as its thread count (gloo); on
    GPUs each takes the card of its local rank (nccl). The processes tell their own errors;
    the launcher's traceback is left out."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if world_size() > 1:
        raise TunelabError(
            "--nproc starts the processes itself, and this one was already started by a "
            "launcher; use one or the other."
        )
    cards = torch.cuda.device_count()
    if cards and nproc > cards:
        raise TunelabError(
            f"--nproc {nproc} but this machine has {cards} GPU(s); give at most {cards}."
        )
    if not cards and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",
                          run_id=f"tunelab-{os.getpid()}", max_restarts=0)  # fmt: skip
    try:
        elastic_launch(config, sys.executable)("-m", "tunelab", "train", *arguments)
    except ChildFailedError as failed:
        return next(iter(failed.failures.values())).exitcode or 1
    return 0


def check_distributed(recipe) -> None:
    """FSDP runs where the Trainer's integration applies it: GPU processes. On CPUs it would
    quietly train as plain data parallel, so it is refused instead."""
    if recipe.train.distributed == "fsdp" and world_size() > 1 and not torch.cuda.is_available():
        raise TunelabError(
            "train.distributed fsdp shards the model across GPUs, and the Trainer's FSDP "
            "integration (accelerate) does not apply to CPU processes; use train.distributed "
            "ddp on CPUs."
        )


def training_arguments(recipe) -> dict:
    """What the recipe's `train.distributed` adds to the TrainingArguments (nothing for one
    process, or data parallel, which the Trainer does when launched as several)."""
    cfg = recipe.train
    if cfg.distributed != "fsdp" or world_size() < 2:
        return {}
    return {"fsdp": "full_shard auto_wrap", "fsdp_config": fsdp_config(cfg.offload)}


def fsdp_config(offload: bool) -> dict:
    """FSDP2, each decoder layer its own shard unit (the model's `_no_split_modules`)."""
    return {"version": 2, "cpu_offload": offload, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}  # fmt: skip


def settings(recipe) -> dict:
    """What the run folder records of how its processes trained (reusable as it is)."""
    strategy = recipe.train.distributed if world_size() > 1 else "none"
    record = {
        "strategy": "ddp" if strategy == "none" and world_size() > 1 else strategy,
        "world_size": world_size(),
        "backend": "nccl" if torch.cuda.is_available() else "gloo",
    }
    record.update(training_arguments(recipe))
    return record


def check_same_processes(run, recipe) -> None:
    """A run resumes with as many processes as it was checkpointed with: with another count
    the global batch (and so each step's data) and the saved random states would not match."""
    from tunelab.run import DISTRIBUTED_FILE

    if not run.file(DISTRIBUTED_FILE).is_file():
        return
    before, now = run.read_json(DISTRIBUTED_FILE).get("world_size", 1), world_size()
    if before != now:
        batch = recipe.train.batch_size * recipe.train.grad_accum
        raise TunelabError(
            f"{run.path} was trained by {before} process(es), a global batch of "
            f"{batch * before} samples; resuming with {now} would change each step's data and "
            f"the saved random states, so it would not continue the same run. Resume with "
            f"{'--nproc ' + str(before) if before > 1 else 'one process (no --nproc)'}."
        )


def gather(value) -> list:
    """`value` from every process, in rank order (just `[value]` for one process)."""
    import torch.distributed as dist

    if world_size() < 2 or not dist.is_available() or not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
