"""Training as several processes: `--nproc N` starts them with torchrun, and the recipe's
`train.distributed` picks how they share the model (data parallel or FSDP) through the
Trainer's own integration. The settings used are written into the run folder."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

import torch

from tunelab.errors import TunelabError
from tunelab.failures import LAUNCHED, PEER_LOST
from tunelab.models.load import pick_device, pick_dtype
from tunelab.ranks import world_size


@dataclass(frozen=True)
class Nodes:
    """The machines a run spans: how many, which one this is, and where node 0 listens."""

    count: int = 1
    rank: int = 0
    master: str | None = None  # ADDR:PORT of node 0

    def check(self) -> None:
        if self.count == 1:
            return
        if not 0 <= self.rank < self.count:
            raise TunelabError(
                f"--node-rank {self.rank} is not one of the {self.count} nodes (0 to "
                f"{self.count - 1})."
            )
        host, _, port = (self.master or "").rpartition(":")
        if not host or not port.isdigit():
            raise TunelabError(
                f"--nnodes {self.count} needs --master ADDR:PORT, the address of node 0 and a "
                "free port on it (the same on every node), e.g. --master 10.0.0.1:29500."
            )


def launch(nproc: int, arguments: list[str], nodes: Nodes = Nodes(), restarts: int = 0) -> int:
    """Run `tunelab train ARGUMENTS` as `nproc` processes on this machine under torchrun's
    launcher (on several machines: the same command on each, with its node rank); the exit
    code of the first that failed, else 0. `restarts`: after a failure the launcher starts
    them again, this many times, and they resume from the newest whole checkpoint.

    On a CPU each process gets an equal share of the cores as its thread count (gloo); on
    GPUs each takes the card of its local rank (nccl). The processes tell their own errors;
    the launcher's traceback is left out."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    if world_size() > 1:
        raise TunelabError(
            "--nproc starts the processes itself, and this one was already started by a "
            "launcher; use one or the other."
        )
    nodes.check()
    cards = torch.cuda.device_count()
    if cards and nproc > cards:
        raise TunelabError(
            f"--nproc {nproc} but this machine has {cards} GPU(s); give at most {cards}."
        )
    if not cards and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ[LAUNCHED] = "1"
    if restarts:
        # processes started again must not meet the addresses their predecessors left in a
        # store shared across restarts: each round gets its own store
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    try:
        elastic_launch(_launch_config(nproc, nodes, restarts), sys.executable)(
            "-m", "tunelab", "train", *arguments
        )
    except ChildFailedError as failed:
        killed = {r: f for r, f in failed.failures.items() if (f.exitcode or 0) < 0}
        if killed:
            # the one killed from outside, not those the launcher then stopped (SIGTERM)
            rank, failure = min(killed.items(), key=lambda i: (i[1].exitcode == -15, i[0]))
            raise TunelabError(
                f"process {rank} of {nproc} was killed ({failure.signal_name()}: out of memory, "
                "or stopped from outside), and the others were stopped; the checkpoints saved "
                "before it are kept: continue with `tunelab train ... --resume`."
            ) from None
        codes = {f.exitcode for f in failed.failures.values()}
        if nodes.count > 1 and codes == {PEER_LOST}:
            raise TunelabError(
                f"the processes of node {nodes.rank} lost contact with the other nodes (one "
                "stopped, was lost, or answered nothing for train.collective_timeout seconds; "
                "its own message says why); the checkpoints saved before "
                "are kept: continue with `tunelab train ... --resume` on every node."
            ) from None
        return next(iter(failed.failures.values())).exitcode or 1
    finally:
        os.environ.pop(LAUNCHED, None)
    return 0


def _launch_config(nproc: int, nodes: Nodes, restarts: int):
    """One machine: a rendezvous on a free local port. Several: node 0's ADDR:PORT, each node
    by its rank (torchrun's static rendezvous, as `torchrun --nnodes --node-rank` does)."""
    from torch.distributed.launcher.api import LaunchConfig

    if nodes.count == 1:
        return LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                            rdzv_backend="c10d", rdzv_endpoint="localhost:0",
                            run_id=f"tunelab-{os.getpid()}", max_restarts=restarts)  # fmt: skip
    return LaunchConfig(min_nodes=nodes.count, max_nodes=nodes.count, nproc_per_node=nproc,
                        rdzv_backend="static", rdzv_endpoint=nodes.master, run_id="tunelab",
                        rdzv_configs={"rank": nodes.rank, "timeout": 900},
                        max_restarts=restarts)  # fmt: skip


ZERO_STAGES = {"zero2": 2, "zero3": 3}


def strategy(recipe) -> str:
    """How this run's processes share the training: `none` for one plain process, `ddp`,
    `fsdp` (several processes), or a DeepSpeed ZeRO stage (also as one process, where its
    offload lets one GPU hold more)."""
    chosen = recipe.train.distributed
    if chosen in ZERO_STAGES:
        return chosen
    if world_size() < 2:
        return "none"
    return "ddp" if chosen == "none" else chosen


def join_group(recipe) -> None:
    """This process's group with the others, made before anything waits on it, so that every
    collective waits at most `train.collective_timeout` seconds (nothing for one process)."""
    if world_size() < 2:
        return
    from datetime import timedelta

    from accelerate import PartialState

    PartialState(timeout=timedelta(seconds=recipe.train.collective_timeout))


def check_distributed(recipe) -> None:
    """Refuse what would not do what the recipe says: FSDP on CPU processes (it would
    quietly train as plain data parallel), ZeRO without DeepSpeed installed."""
    chosen = strategy(recipe)
    if chosen == "fsdp" and not torch.cuda.is_available():
        raise TunelabError(
            "train.distributed fsdp shards the model across GPUs, and the Trainer's FSDP "
            "integration (accelerate) does not apply to CPU processes; use train.distributed "
            "ddp on CPUs."
        )
    if chosen in ZERO_STAGES and recipe.train.carry_optimizer:
        raise TunelabError(
            f"train.carry_optimizer hands one process's optimizer state to the next stage, and "
            f"under {chosen} DeepSpeed splits it across the processes; set carry_optimizer: "
            "false, or use train.distributed ddp."
        )
    if chosen in ZERO_STAGES and importlib.util.find_spec("deepspeed") is None:
        raise TunelabError(
            f"train.distributed {chosen} runs on DeepSpeed, which is not installed; install "
            "it with `pip install 'tunelab[distributed]'`, or use train.distributed ddp or fsdp."
        )


def training_arguments(recipe, config, universal: bool = False) -> dict:
    """What the recipe's `train.distributed` adds to the TrainingArguments (nothing for one
    process, or data parallel, which the Trainer does when launched as several); `config` is
    the model's (its width sizes DeepSpeed's buckets); `universal`: a ZeRO resume reads a
    universal checkpoint (made for another process count)."""
    chosen = strategy(recipe)
    if chosen == "fsdp":
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": fsdp_config(recipe.train.offload)}
    if chosen == "ddp":  # every trained weight takes part in each forward
        return {"ddp_find_unused_parameters": False}
    if chosen in ZERO_STAGES:
        written = deepspeed_config(recipe, run_dtype(recipe), hidden_size(config))
        if universal:
            written["checkpoint"] = {"load_universal": True}
        return {"deepspeed": written, "bf16": written["bf16"]["enabled"],
                "fp16": written["fp16"]["enabled"]}  # fmt: skip
    return {}


def fsdp_config(offload: str) -> dict:
    """FSDP2, each decoder layer its own shard unit (the model's `_no_split_modules`)."""
    return {"version": 2, "cpu_offload": offload == "all",
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
            "reshard_after_forward": True}  # fmt: skip


def run_dtype(recipe) -> torch.dtype:
    return pick_dtype(recipe.model.dtype, pick_device())


def hidden_size(config) -> int:
    return int(getattr(config.get_text_config(), "hidden_size", 1024))


def deepspeed_config(recipe, dtype: torch.dtype, hidden: int) -> dict:
    """A complete DeepSpeed config (no "auto" values, so DeepSpeed itself reads it as it is)
    that agrees with the Trainer's arguments. The Trainer's own optimizer and schedule are
    kept, also when the optimizer state is offloaded (it then steps in CPU memory). Bucket
    sizes follow the model's width `hidden` (as the Trainer's "auto" values would)."""
    cfg = recipe.train
    stage = ZERO_STAGES[cfg.distributed]
    on_gpu = torch.cuda.is_available()
    bucket = hidden * hidden
    zero: dict = {"stage": stage, "overlap_comm": on_gpu, "contiguous_gradients": True,
                  "reduce_bucket_size": bucket}  # fmt: skip
    if stage == 2:
        zero["allgather_bucket_size"] = bucket
    else:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True,
                     "stage3_prefetch_bucket_size": int(0.9 * bucket),
                     "stage3_param_persistence_threshold": 10 * hidden})  # fmt: skip
    if cfg.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if cfg.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size(),
        "gradient_clipping": cfg.max_grad_norm,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1_000_000_000,  # the run's own progress line reports
        "wall_clock_breakdown": False,
    }


def gathered_weights(trainer) -> dict | None:
    """The whole state dict, gathered from the shards of a ZeRO-3 run (every process must call
    this); None where each process holds whole weights."""
    engine = getattr(trainer, "model_wrapped", None)
    stage = getattr(engine, "zero_optimization_stage", None)
    if stage is None or stage() != 3:
        return None
    return trainer.accelerator.get_state_dict(engine)


def single_process_rendezvous() -> None:
    """DeepSpeed always runs as a process group; one process started without a launcher
    gets a group of one on this machine."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip


def prepare(recipe, config):
    """Before the weights load: a ZeRO run gets its process group (a group of one without a
    launcher); for zero3, what makes the weights load already sharded (each process reads
    only its part instead of the whole model first), to keep alive while the run trains.
    None for the other strategies."""
    chosen = strategy(recipe)
    if chosen in ZERO_STAGES:
        single_process_rendezvous()
    if chosen != "zero3":
        return None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return HfDeepSpeedConfig(deepspeed_config(recipe, run_dtype(recipe), hidden_size(config)))


def settings(recipe, config) -> dict:
    """What the run folder records of how its processes trained (reusable as it is: the
    `deepspeed` entry is a DeepSpeed config, `fsdp_config` the Trainer's FSDP settings)."""
    record = {
        "strategy": strategy(recipe),
        "world_size": world_size(),
        "backend": "nccl" if torch.cuda.is_available() else "gloo",
        "global_batch": recipe.train.batch_size * recipe.train.grad_accum * world_size(),
    }
    for key, value in training_arguments(recipe, config).items():
        if key in ("fsdp", "fsdp_config", "deepspeed"):
            record[key] = value
    return record


def gather(value) -> list:
    """`value` from every process, in rank order (just `[value]` for one process)."""
    import torch.distributed as dist

    if world_size() < 2 or not dist.is_available() or not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
