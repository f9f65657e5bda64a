"""GPU throughput and memory: tunelab against a plain transformers script and TRL, one run.

Every configuration trains a Qwen2.5-1.5B-shaped model built from its config (random bf16
weights, nothing downloaded) on alpaca_en_demo.json at cutoff 1024, LoRA (r8 alpha 16, all
linear layers) and full fine-tuning, bf16, no gradient checkpointing, the same steps and
learning rate, each as a fresh process measured by the same callback (gpu_runs/probe.py):

- tunelab: packed rows (its default), at each batch size, and with `train.batch_tokens`;
- transformers: Trainer (+ peft), padded batches, the loss on the answer (gpu_runs/run_transformers.py);
- trl: SFTTrainer with its defaults but the shared settings, padded; trl-padding-free: its
  padding-free mode; at the token budget, TRL's packing (rows up to the budget, batch 1).

Reported per run: steady real tokens/s (input tokens without padding, after --warmup steps),
peak allocated memory, MFU (6N FLOPs per token for full, 4N for LoRA, N the multiplied weights
with the lm_head, attention scores left out; over the card's dense bf16 peak), the first and
last loss (equal training shows), and an out-of-memory run as a result. tunelab's rows also give
its memory estimate made before loading, and the attention kernel it used. `--memory-7b` adds
Qwen2.5-7B-shaped LoRA and QLoRA rows (estimate against measured). Writes a JSON file and, on a
GPU, docs/speed-gpu.md.

    python benchmarks/gpu.py                              # the whole matrix on a CUDA GPU
    python benchmarks/gpu.py --batches 16 --tools tunelab,transformers --methods lora
    python benchmarks/gpu.py --smoke                      # a check of the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUNS = HERE / "gpu_runs"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
# published shapes (Qwen2.5-1.5B and -7B); the weights are random
QWEN25_15B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
    "rope_theta": 1000000.0,
}
QWEN25_7B = {
    **QWEN25_15B,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
}
SMOKE = {
    **QWEN25_15B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 49152,
}
# dense bf16 peak FLOP/s by card name (no sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}
TOOLS = ("tunelab", "transformers", "trl", "trl-padding-free")


def build_model(folder: Path, shape: dict, tokenizer_dir: str | None = None) -> None:
    """The model of `shape` with random weights and the built-in model's tokenizer (or the
    tokenizer files in `tokenizer_dir`), saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if tokenizer_dir is None:
        from tunelab.models.sources import resolve_model

        tokenizer_dir = resolve_model("smollm2-135m-instruct").folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    Qwen2ForCausalLM(config).to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # ChatML, ids far below the vocabulary size


def peak_flops() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return f"CPU ({os.cpu_count()} cores, {platform.machine()})", None
    name = torch.cuda.get_device_name(0)
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_one(tool: str, settings: dict, work: Path) -> dict:
    """One configuration in a fresh process; its probe record, or why there is none."""
    folder = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=work))
    settings = {**settings, "workdir": str(folder)}
    script = {"trl-padding-free": "run_trl.py", "trl": "run_trl.py"}.get(tool, f"run_{tool}.py")
    if tool.startswith("trl"):
        settings["trl_mode"] = (
            "packing"
            if settings.get("batch_tokens")
            else ("padding_free" if tool == "trl-padding-free" else "padded")
        )
    (folder / "settings.json").write_text(json.dumps(settings))
    result = folder / "result.json"
    env = {
        **os.environ,
        "BENCH_RESULT": str(result),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(RUNS), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(RUNS / script), str(folder / "settings.json")],
        capture_output=True,
        text=True,
        env=env,
    )
    if not result.exists():
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        return {"error": lines[-1][:300], "wall_seconds": round(time.perf_counter() - started, 1)}
    record = json.loads(result.read_text())
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    return record


def measured(record: dict, warmup: int, flops_per_token: float, peak: float | None) -> dict:
    """Steady tokens/s after `warmup` steps, memory, MFU and losses of one probe record."""
    if "error" in record:
        return {"error": record["error"]}
    row = {"peak_gib": round(record["peak_bytes"] / 2**30, 2)}
    if record.get("oom"):
        return {**row, "oom": True}
    times, tokens = record["step_times"], record["step_tokens"]
    skip = min(warmup, len(times) - 2)
    if skip < 0:
        return {**row, "error": "fewer than 2 steps ran"}
    seconds = times[-1] - times[skip]
    rate = (tokens[-1] - tokens[skip]) / seconds if seconds > 0 else None
    losses = record["losses"]
    row.update(
        tokens_per_second=round(rate, 1) if rate else None,
        tokens_per_step=round((tokens[-1] - tokens[skip]) / max(len(times) - 1 - skip, 1)),
        mfu=round(flops_per_token * rate / peak, 4) if rate and peak else None,
        first_loss=round(losses[0], 4) if losses else None,
        last_loss=round(losses[-1], 4) if losses else None,
    )
    if record.get("estimated_bytes"):
        row["estimated_gib"] = round(record["estimated_bytes"] / 2**30, 2)
        row["measured_over_estimated"] = round(record["peak_bytes"] / record["estimated_bytes"], 3)
    for key in ("attention", "fused_kernels"):
        if record.get(key):
            row[key] = record[key]
    return row


def configurations(args) -> list[dict]:
    """(tool, method, batch or budget) in the order they run."""
    tools = args.tools.split(",")
    runs = []
    for method in args.methods.split(","):
        for batch in [int(b) for b in args.batches.split(",") if b]:
            runs += [{"tool": t, "method": method, "batch_size": batch} for t in tools]
        if args.budget:
            for tool in ("tunelab", "trl"):
                if tool in tools:
                    runs.append(
                        {
                            "tool": tool,
                            "method": method,
                            "batch_size": None,
                            "batch_tokens": args.budget,
                        }
                    )
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of tokens/s")
    parser.add_argument("--batches", default="8,16,32")
    parser.add_argument("--budget", type=int, default=32768, help="token budget; 0: none")
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--memory-7b", action="store_true", help="add the 7B-shaped memory rows")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape: checks the script")
    parser.add_argument("--tokenizer", help="tokenizer files (default: the built-in model's)")
    parser.add_argument(
        "--out", default=None, help="JSON results (default: benchmarks/results/gpu.json)"
    )
    parser.add_argument(
        "--doc", default=None, help="markdown report (GPU default: docs/speed-gpu.md)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.batches, args.budget = 4, 1, "2", 1024

    from transformers import AutoConfig

    from tunelab.estimation import linear_parameters

    work = Path(tempfile.mkdtemp(prefix="tunelab-gpu-"))
    model_dir = work / "model"
    build_model(model_dir, SMOKE if args.smoke else QWEN25_15B, args.tokenizer)
    n = linear_parameters(AutoConfig.from_pretrained(model_dir))
    device, peak = peak_flops()
    shared = {
        "model": str(model_dir),
        "data": args.data,
        "cutoff": args.cutoff,
        "steps": args.steps,
    }
    rows = []
    for config in configurations(args):
        tool = config["tool"]
        if tool.startswith("trl") and not installed("trl"):
            row = {"error": "trl is not installed"}
        else:
            record = run_one(tool, {**shared, **config}, work)
            per_token = (6 if config["method"] == "full" else 4) * n
            row = measured(record, args.warmup, per_token, peak)
        rows.append({**config, **row})
        print(json.dumps(rows[-1]), flush=True)
    if args.memory_7b:
        rows += memory_rows(work, shared, args)
    report = {
        "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:]),
        "device": device,
        "model": "smoke shape" if args.smoke else "Qwen2.5-1.5B shape",
        "linear_parameters": n,
        "settings": {k: getattr(args, k) for k in ("steps", "warmup", "cutoff", "budget")},
        "runs": rows,
    }
    # a smoke check's figures stay in its scratch folder, never beside measured ones
    args.out = args.out or str(work / "gpu.json" if args.smoke else HERE / "results" / "gpu.json")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    measured_here = peak and not args.smoke
    doc = args.doc or str(
        REPO / "docs" / "speed-gpu.md" if measured_here else work / "speed-gpu.md"
    )
    Path(doc).write_text(markdown(report))
    print(f"wrote {args.out} and {doc}")
    return 0


def memory_rows(work: Path, shared: dict, args) -> list[dict]:
    """tunelab's LoRA and QLoRA on the 7B shape at batch 4: its estimate against the peak."""
    model_dir = work / "model-7b"
    shape = {**QWEN25_7B, "num_hidden_layers": 2} if args.smoke else QWEN25_7B
    build_model(model_dir, shape, args.tokenizer)
    rows = []
    for method in ("lora", "qlora"):
        config = {"tool": "tunelab", "method": method, "batch_size": 4, "shape": "7B"}
        settings = {**shared, **config, "model": str(model_dir), "steps": min(args.steps, 8)}
        row = measured(run_one("tunelab", settings, work), 1, 0.0, None)
        rows.append({**config, **row})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# GPU speed and memory: tunelab, plain transformers and TRL (one run, same card)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Device: {report['device']}. Model: {report['model']} (random weights, bf16 on a GPU), "
        f"alpaca_en_demo.json, cutoff {s['cutoff']}, {s['steps']} steps, tokens/s after "
        f"{s['warmup']} warm-up steps; peak: max allocated on a GPU, peak RSS on a CPU. Batch "
        f"`-` is the token budget ({s['budget']:,} tokens per pass).",
        "",
        "| method | batch | tool | real tok/s | peak GiB | MFU | loss first -> last | notes |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for r in report["runs"]:
        batch = r["batch_size"] if r.get("batch_size") else "-"
        if "error" in r:
            cells = ["", "", "", "", r["error"]]
        elif r.get("oom"):
            cells = ["out of memory", f"{r['peak_gib']}", "", "", ""]
        else:
            notes = ", ".join(
                f"{k} {r[k]}"
                for k in ("attention", "estimated_gib", "measured_over_estimated", "shape")
                if r.get(k)
            )
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") else ""
            cells = [
                f"{r['tokens_per_second']:,.0f}" if r.get("tokens_per_second") else "",
                f"{r['peak_gib']}",
                mfu,
                f"{r.get('first_loss')} -> {r.get('last_loss')}",
                notes,
            ]
        lines.append(f"| {r['method']} | {batch} | {r['tool']} | " + " | ".join(cells) + " |")
    lines += ["", *ratio_lines(report["runs"])]
    return "\n".join(lines) + "\n"


def ratio_lines(runs: list[dict]) -> list[str]:
    """tunelab over each peer at the same method and batch: tokens/s and peak memory."""
    ok = [r for r in runs if r.get("tokens_per_second") and not r.get("shape")]
    ours = {(r["method"], r["batch_size"]): r for r in ok if r["tool"] == "tunelab"}
    lines = [
        "tunelab / peer at the same method and batch (tok/s: higher is better; memory: lower):",
        "",
    ]
    lines += ["| method | batch | peer | tok/s | peak memory |", "|---|---:|---|---:|---:|"]
    for r in ok:
        mine = ours.get((r["method"], r["batch_size"]))
        if r["tool"] == "tunelab" or mine is None:
            continue
        lines.append(
            f"| {r['method']} | {r['batch_size'] or '-'} | {r['tool']} | "
            f"{mine['tokens_per_second'] / r['tokens_per_second']:.2f}x | "
            f"{mine['peak_gib'] / r['peak_gib']:.2f}x |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
