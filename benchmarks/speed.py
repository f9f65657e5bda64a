"""Training speed and memory: tunelab against TRL's SFTTrainer and LLaMA-Factory, in one run.

Every tool trains the same model (the built-in SmolLM2-135M-Instruct as an HF folder) on the
same mixed-length alpaca file with the same batch size, cutoff, method (LoRA r8 alpha 16
on all linear layers, the same dropout and gradient checkpointing setting), learning rate, fp32 and number of steps. Tools run one at a
time, in alternating order, `--repeat` times each; the medians are reported. Each run is a fresh
process, timed by the same Trainer callback (speed/probe.py):

- real tokens/s: the non-padding input tokens the Trainer counted / the training loop's time
- time to first step: process start -> end of the first optimizer step (imports, model, data)
- total: the process's wall time; peak RSS: the process's peak resident memory (VmHWM)

Peers run from their own virtual environments (benchmarks/setup_peers.sh installs them under
benchmarks/.peers/); a peer that is not installed is skipped and said so.

    python benchmarks/speed.py --steps 30 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
PEERS = {
    "tunelab": HERE / ".peers" / "tunelab" / "bin" / "python",
    "trl": HERE / ".peers" / "trl" / "bin" / "python",
    "llamafactory": HERE / ".peers" / "llamafactory" / "bin" / "python",
}


def python_for(tool: str) -> Path | None:
    """The tool's own environment: tunelab's default install when setup_peers.sh made one
    (no extras, as the peers are installed), else the environment running this script."""
    path = PEERS[tool]
    if tool == "tunelab" and not path.exists():
        return Path(sys.executable)
    return path if path.exists() else None


def run_once(tool: str, python: Path, settings_file: Path, workdir: Path, rep: int) -> dict:
    result_file = workdir / f"{tool}-{rep}.json"
    log_file = workdir / f"{tool}-{rep}.log"
    result_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DISABLE_VERSION_CHECK": "1",
        "BENCH_RESULT": str(result_file),
    }
    script = HERE / "speed" / f"run_{tool}.py"
    with log_file.open("w") as log:
        env["BENCH_SPAWNED"] = repr(time.time())
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(python), str(script), str(settings_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not result_file.exists():
        tail = log_file.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(
            f"{tool} run {rep} failed (exit {code}); log {log_file}:\n" + "\n".join(tail)
        )
    record = json.loads(result_file.read_text())
    train_seconds = record["train_end"] - record["train_begin"]
    return {
        "tool": tool,
        "rep": rep,
        "steps": record["steps"],
        "tokens": record["tokens"],
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(record["tokens"] / train_seconds, 1),
        "time_to_first_step": round(record["first_step_end"], 2),
        "total_seconds": round(wall, 2),
        "peak_rss_gib": round((record.get("peak_rss_bytes") or usage.ru_maxrss * 1024) / 2**30, 3),
        "first_loss": record["losses"][0] if record["losses"] else None,
        "last_loss": record["losses"][-1] if record["losses"] else None,
    }


def summarise(runs: list[dict]) -> dict:
    tools = sorted({r["tool"] for r in runs}, key=["tunelab", "trl", "llamafactory"].index)
    keys = [
        "tokens_per_second",
        "time_to_first_step",
        "total_seconds",
        "peak_rss_gib",
        "train_seconds",
    ]
    medians = {
        tool: {k: statistics.median(r[k] for r in runs if r["tool"] == tool) for k in keys}
        for tool in tools
    }
    ratios = {}
    ours = medians.get("tunelab")
    for tool in tools:
        if tool == "tunelab" or ours is None:
            continue
        peer = medians[tool]
        ratios[tool] = {k: round(ours[k] / peer[k], 3) for k in keys}
    return {"medians": medians, "ratios_tunelab_over_peer": ratios}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Training speed: tunelab vs peers (one run, same machine)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}. Model: built-in SmolLM2-135M-Instruct (fp32). Data: "
        f"{Path(s['data']).name}. LoRA r8 alpha 16 dropout {s['dropout']} all-linear, "
        f"gradient checkpointing {'on' if s['checkpointing'] else 'off'}, batch {s['batch_size']}, cutoff "
        f"{s['cutoff']}, {s['steps']} steps, {s['repeat']} runs per tool, alternating; medians. "
        "Each tool runs from its own default install (benchmarks/setup_peers.sh; tunelab without "
        "extras where .peers/tunelab exists): "
        + ", ".join(
            f"{t}: {Path(p).parents[1].name}" for t, p in report.get("environments", {}).items()
        )
        + ".",
        "",
        "| tool | real tok/s | time to first step (s) | total (s) | peak RSS (GiB) | runs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for tool, m in report["summary"]["medians"].items():
        count = sum(1 for r in report["runs"] if r["tool"] == tool)
        lines.append(
            f"| {tool} | {m['tokens_per_second']:.1f} | {m['time_to_first_step']:.1f} | "
            f"{m['total_seconds']:.1f} | {m['peak_rss_gib']:.2f} | {count} |"
        )
    if report["summary"]["ratios_tunelab_over_peer"]:
        lines += [
            "",
            "tunelab / peer (tokens/s: higher is better; the others: lower is better):",
            "",
        ]
        lines += [
            "| peer | tok/s | time to first step | total | peak RSS |",
            "|---|---:|---:|---:|---:|",
        ]
        for tool, r in report["summary"]["ratios_tunelab_over_peer"].items():
            lines.append(
                f"| {tool} | {r['tokens_per_second']:.2f}x | {r['time_to_first_step']:.2f}x | "
                f"{r['total_seconds']:.2f}x | {r['peak_rss_gib']:.2f}x |"
            )
    if report.get("flops"):
        f = report["flops"]
        lines += [
            "",
            f"fp32 matmul rate of this machine (torch, 2048x2048): {f['matmul_gflops']:.1f} GFLOP/s. "
            f"A LoRA forward+backward costs {f['flops_per_token'] / 1e6:.0f} MFLOP per token, so "
            f"tunelab's {f['tunelab_tokens_per_second']:.1f} tok/s is {f['tunelab_gflops']:.1f} "
            f"GFLOP/s = {100 * f['fraction_of_matmul']:.0f}% of the matmul rate.",
        ]
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    lines += [
        "",
        "Every run:",
        "",
        "| tool | rep | steps | tokens | tok/s | first step (s) | total (s) | peak GiB | loss first -> last |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['tool']} | {r['rep']} | {r['steps']} | {r['tokens']} | {r['tokens_per_second']} | "
            f"{r['time_to_first_step']} | {r['total_seconds']} | {r['peak_rss_gib']} | "
            f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tools", default="tunelab,trl,llamafactory")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="an alpaca .json file")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (all tools)")
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing on (all tools)"
    )
    parser.add_argument("--workdir", default="/tmp/tunelab-speed")
    parser.add_argument("--out", default=str(REPO / "docs" / "speed.md"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "speed.json"))
    args = parser.parse_args()

    from tunelab.models.sources import resolve_model

    model_dir = resolve_model("smollm2-135m-instruct").folder
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "model": str(model_dir),
        "data": str(Path(args.data).resolve()),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "cutoff": args.cutoff,
        "seed": args.seed,
        "dropout": args.dropout,
        "checkpointing": args.checkpointing,
        "repeat": args.repeat,
        "workdir": str(workdir),
    }
    settings_file = workdir / "settings.json"
    settings_file.write_text(json.dumps(settings, indent=1))

    tools, skipped = [], []
    for tool in args.tools.split(","):
        python = python_for(tool)
        if python is None:
            skipped.append(f"{tool} (not installed; run benchmarks/setup_peers.sh {tool})")
        else:
            tools.append((tool, python))
    runs = []
    for rep in range(args.repeat):
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]  # rotate who goes first
        for tool, python in order:
            print(f"[{rep + 1}/{args.repeat}] {tool} ...", flush=True)
            try:
                run = run_once(tool, python, settings_file, workdir, rep)
            except RuntimeError as error:
                print(error, flush=True)
                skipped.append(f"{tool} run {rep} failed: see {workdir}/{tool}-{rep}.log")
                continue
            print(f"    {run}", flush=True)
            runs.append(run)
    summary = summarise(runs)
    report = {
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, torch threads default",
        "settings": settings,
        "environments": {tool: str(python) for tool, python in tools},
        "runs": runs,
        "summary": summary,
        "skipped": skipped,
    }
    if "tunelab" in summary["medians"]:
        from transformers import AutoConfig

        from tunelab.estimation import cpu_matmul_rate, training_flops_per_token

        rate = cpu_matmul_rate(seconds=3.0, size=2048) / 1e9
        per_token = training_flops_per_token(AutoConfig.from_pretrained(model_dir), "lora")
        ours = [r for r in runs if r["tool"] == "tunelab"]
        flops = per_token * sum(r["tokens"] for r in ours) / sum(r["train_seconds"] for r in ours)
        report["flops"] = {
            "matmul_gflops": round(rate, 2),
            "flops_per_token": per_token,
            "tunelab_tokens_per_second": summary["medians"]["tunelab"]["tokens_per_second"],
            "tunelab_gflops": round(flops / 1e9, 2),
            "fraction_of_matmul": round(flops / 1e9 / rate, 3),
        }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    Path(args.out).write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
