"""GPU throughput of a Qwen2.5-1.5B-shaped model built from its config (random weights, nothing
downloaded): LoRA and full fine-tuning through tunelab, packed batches, bf16.

Reports real tokens/s, peak memory (torch.cuda.max_memory_allocated), and model FLOPs utilisation:
FLOPs per token (6N for full, 4N for LoRA: no weight gradients for the frozen base; N = the
parameters multiplied per token, lm_head included, attention scores left out) times tokens/s,
over the card's dense bf16 peak.

    python benchmarks/gpu.py --steps 30            # on a machine with a CUDA GPU
    python benchmarks/gpu.py --layers 2 --steps 2  # a quick check of the script itself (CPU works)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
# Qwen2.5-1.5B's published shape
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
# dense bf16 peak FLOP/s by card name (no sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def build_model(folder: Path, layers: int) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tunelab.models.sources import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct").folder)
    config = Qwen2Config(
        **{**QWEN25_15B, "num_hidden_layers": layers},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # ChatML, ids far below the vocabulary size


def peak_flops() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_BF16.items():
        if key in name:
            return name, value
    return name, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=QWEN25_15B["num_hidden_layers"])
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu.json"))
    args = parser.parse_args()

    from transformers import AutoConfig

    from tunelab.estimation import linear_parameters

    work = Path(tempfile.mkdtemp(prefix="tunelab-gpu-"))
    model_dir = work / "qwen2.5-1.5b-shaped"
    build_model(model_dir, args.layers)
    n = linear_parameters(AutoConfig.from_pretrained(model_dir))
    device, peak = peak_flops()
    results = []
    for method in args.methods.split(","):
        out = work / f"run-{method}"
        overrides = [
            f"model.path={model_dir}",
            f"data.train=[{args.data}]",
            f"data.max_length={args.cutoff}",
            f"method.type={method}",
            f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            "train.tensorboard=false",
            f"output={out}",
        ]
        recipe = work / "recipe.yaml"
        recipe.write_text("model: {path: x}\ndata: {train: [x]}\noutput: x\n", encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "tunelab", "train", str(recipe), "--overwrite", *overrides],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(done.stderr[-3000:])
            return 1
        summary = json.loads((out / "summary.json").read_text())
        per_token = (6 if method == "full" else 4) * n
        tps = summary["tokens_per_second"]
        results.append(
            {
                "method": method,
                "device": device,
                "layers": args.layers,
                "tokens_per_second": tps,
                "peak_memory_gib": round(summary["peak_memory_bytes"] / 2**30, 2),
                "peak_memory_kind": summary["peak_memory_kind"],
                "estimated_gib": round(summary["memory"]["estimated_bytes"] / 2**30, 2)
                if summary.get("memory")
                else None,
                "time_to_first_step": summary["time_to_first_step_seconds"],
                "flops_per_token": per_token,
                "mfu": round(per_token * tps / peak, 4) if peak else None,
                "fused_kernels": summary.get("fused_kernels"),
                "final_loss": summary["final_loss"],
            }
        )
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
