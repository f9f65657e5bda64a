"""Peak memory and time per way of sharing a run across processes, on the same recipe.

Every configuration trains the same recipe for the same steps with the same global batch
(`--global-batch` = batch_size x processes), each a fresh `tunelab train` (with `--nproc` when
several), one at a time with nothing else running. Reported per configuration, from the run's
summary.json: wall time of the whole command, training seconds, real (non-padding) tokens/s of
all processes together, the largest process's peak (CPU: resident set size; GPU: allocated),
the estimate's figure for that strategy, and the last step's loss; ratios against one process.

On a CPU, the strategies that run there: one process, and N processes with ddp, zero2 and
zero3 (fsdp is GPU-only in the Trainer). With GPUs, fsdp too, and offload variants.

    python benchmarks/distributed.py                          # CPU: 1 vs 2 processes
    python benchmarks/distributed.py --nproc 8 --gpu          # a machine with 8 GPUs

Several machines, on paper (nothing trains): each process's memory by strategy from the
estimate, the bytes it sends per optimizer step, and what that costs per step over a link of
the given speed between the machines (the slowest link sets the pace):

    python benchmarks/distributed.py --paper --nproc 8 --nnodes 2 --link-gbit 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUNELAB = [sys.executable, "-m", "tunelab"]


def configurations(nproc: int, gpu: bool) -> list[tuple[str, int, list[str]]]:
    """(name, processes, overrides) of each run."""
    runs = [("one process", 1, [])]
    strategies = ["ddp", "zero2", "zero3"] + (["fsdp"] if gpu else [])
    runs += [(f"{s} x{nproc}", nproc, [f"train.distributed={s}"]) for s in strategies]
    if gpu:
        runs += [
            (f"zero2 x{nproc}, optimizer offload", nproc,
             ["train.distributed=zero2", "train.offload=optimizer"]),
            (f"zero3 x{nproc}, all offloaded", nproc,
             ["train.distributed=zero3", "train.offload=all"]),
        ]  # fmt: skip
    return runs


def estimate(recipe: str, overrides: list[str], processes: int, strategy: str) -> float | None:
    """The estimate's peak for one process under `strategy`, in GiB."""
    from tunelab.estimation import estimate_recipe
    from tunelab.recipe import load_recipe

    result = estimate_recipe(load_recipe(recipe, overrides), processes=processes)
    if result.per_process is None:
        return result.total_bytes / 2**30
    return result.per_process[strategy] / 2**30


def run_one(recipe: str, out: Path, name: str, processes: int, overrides: list[str]) -> dict:
    folder = out / name.replace(" ", "-").replace(",", "")
    command = [*TUNELAB, "train", recipe, *overrides, f"output={folder}", "--overwrite"]
    if processes > 1:
        command += ["--nproc", str(processes)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        return {"name": name, "failed": result.stderr.strip().splitlines()[-1:]}
    summary = json.loads((folder / "summary.json").read_text())
    strategy = next((o.split("=")[1] for o in overrides if "distributed=" in o), "ddp")
    return {
        "name": name,
        "processes": processes,
        "wall_seconds": round(wall, 1),
        "train_seconds": summary["train_seconds"],
        "tokens": summary["tokens"],
        "tokens_per_second": summary["tokens_per_second"],
        "peak_gib": round(summary["peak_memory_bytes"] / 2**30, 3),
        "peak_gib_per_rank": [round(b / 2**30, 3) for b in summary["peak_memory_bytes_per_rank"]],
        "estimate_gib": round(estimate(recipe, overrides, processes, strategy), 3),
        "final_loss": summary["final_loss"],
    }


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        "| configuration | wall s | train s | tok/s (x one) | peak GiB per process (x one) "
        "| estimate GiB | last loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['name']} | failed: {' '.join(row['failed'])} |||||")
            continue
        speed = row["tokens_per_second"] / base["tokens_per_second"]
        peak = row["peak_gib"] / base["peak_gib"]
        lines.append(
            f"| {row['name']} | {row['wall_seconds']} | {row['train_seconds']:.1f} | "
            f"{row['tokens_per_second']:.0f} ({speed:.2f}x) | {row['peak_gib']:.2f} "
            f"({peak:.2f}x) | {row['estimate_gib']:.2f} | {row['final_loss']:.4f} |"
        )
    return "\n".join(lines)


def on_paper(recipe: str, overrides: list[str], nproc: int, nnodes: int, gbit: float) -> str:
    """Each strategy's per-process GPU memory and bytes sent per step, for nproc x nnodes
    processes, as a table."""
    from tunelab.estimation import communication_bytes, estimate_recipe
    from tunelab.recipe import load_recipe

    processes = nproc * nnodes
    loaded = load_recipe(recipe, overrides)
    result = estimate_recipe(loaded, "cuda", processes=processes)
    sent = communication_bytes(result, processes)
    lines = [
        f"{nnodes} machine(s) x {nproc} process(es), {loaded.model.path}, "
        f"method {loaded.method.type}, on paper (GPU):",
        f"| strategy | GiB per process | GiB sent per step | s per step at {gbit:g} Gbit/s |",
        "|---|---|---|---|",
    ]
    for strategy, memory in result.per_process.items():
        seconds = sent[strategy] * 8 / (gbit * 1e9)
        lines.append(
            f"| {strategy} | {memory / 2**30:.2f} | {sent[strategy] / 2**30:.3f} | {seconds:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(HERE.parent / "examples" / "identity.yaml"))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--method", default="full")
    parser.add_argument("--gpu", action="store_true", help="also fsdp and the offload variants")
    parser.add_argument("--out", default="/tmp/tunelab-bench-distributed")
    parser.add_argument("--json", default=str(HERE / "results" / "distributed-cpu.json"))
    parser.add_argument("--paper", action="store_true", help="several machines, on paper")
    parser.add_argument("--nnodes", type=int, default=2, help="with --paper: machines")
    parser.add_argument("--link-gbit", type=float, default=200.0, help="with --paper")
    args = parser.parse_args()
    if args.paper:
        overrides = [f"method.type={args.method}", f"train.batch_size={args.global_batch}"]
        print(on_paper(args.recipe, overrides, args.nproc, args.nnodes, args.link_gbit))
        return
    os.environ.pop("OMP_NUM_THREADS", None)  # --nproc shares the cores out itself
    rows = []
    for name, processes, extra in configurations(args.nproc, args.gpu):
        overrides = [
            f"method.type={args.method}",
            f"train.max_steps={args.steps}",
            f"train.batch_size={args.global_batch // processes}",
            "train.save_every=null",
            "train.tensorboard=false",
            "train.sample_every=null",
            *extra,
        ]
        rows.append(run_one(args.recipe, Path(args.out), name, processes, overrides))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
