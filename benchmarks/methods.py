"""Seconds per step and peak memory of every method on the built-in model; writes docs/methods.md.

    python benchmarks/methods.py                  # all methods, 8 steps each
    python benchmarks/methods.py --steps 20 --methods lora,qlora

Each method runs `tunelab train examples/<its recipe>` in its own process (so peak RSS is
that method's alone) with train.max_steps=N and batch 4 on the built-in identity data.
Seconds per step leaves out the first step (warm-up); tokens/s counts real tokens only.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
METHODS = ["full", "freeze", "lora", "dora", "qlora", "ptuning", "prefix", "prompt"]


def recipe_for(method: str) -> Path:
    name = "identity.yaml" if method == "lora" else f"method-{method}.yaml"
    return REPO / "examples" / name


def run_method(method: str, steps: int, out: Path) -> dict:
    run = out / method
    command = [
        sys.executable,
        "-m",
        "tunelab",
        "train",
        str(recipe_for(method)),
        f"train.max_steps={steps}",
        "train.tensorboard=false",
        f"output={run}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"method": method, "error": result.stderr.strip().splitlines()[-1]}
    summary = json.loads((run / "summary.json").read_text())
    first = summary["time_to_first_step_seconds"] - (
        summary["total_seconds"] - summary["train_seconds"]
    )
    per_step = (summary["train_seconds"] - max(first, 0.0)) / max(summary["steps"] - 1, 1)
    return {
        "method": method,
        "trainable_parameters": summary["trainable_parameters"],
        "seconds_per_step": round(per_step, 3),
        "tokens_per_second": summary["tokens_per_second"],
        "peak_memory_gib": round(summary["peak_memory_bytes"] / 2**30, 2),
        "steps": summary["steps"],
    }


def markdown(rows: list[dict], steps: int) -> str:
    lines = [
        "# Methods on the built-in model: time and memory",
        "",
        f"Written by `python benchmarks/methods.py --steps {steps}`. SmolLM2-135M-Instruct (fp32), the",
        "built-in identity data, batch 4, each method's example recipe, one process per method.",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU only'}.",
        "Peak memory is the process's peak RSS on CPU (weights, optimizer and activations, and",
        "Python itself), max allocated on a GPU.",
        "",
        "| method | trainable parameters | s / step | real tokens / s | peak memory (GiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['method']} | {r['trainable_parameters']:,} | {r['seconds_per_step']} | "
                f"{r['tokens_per_second']:.0f} | {r['peak_memory_gib']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "methods.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods.split(","):
            row = run_method(method, args.steps, Path(folder))
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, args.steps), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
