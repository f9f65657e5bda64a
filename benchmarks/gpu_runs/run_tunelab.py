"""tunelab's side of the GPU benchmark: a recipe with the shared settings (packed rows)."""

import yaml
from common import settings
from probe import GpuProbe, guarded

import tunelab

s = settings()
train = {
    "max_steps": s["steps"],
    "batch_size": s["batch_size"] or 1,
    "lr": 1e-4 if s["method"] == "full" else 2e-4,
    "scheduler": "constant",
    "warmup_ratio": 0,
    "seed": 0,
    "tensorboard": False,
    "log_every": 1,
}
if s.get("batch_tokens"):
    train["batch_tokens"] = s["batch_tokens"]
method = {"type": s["method"]}
if s["method"] in ("lora", "qlora"):
    method.update(r=8, alpha=16, dropout=0.0, target="all-linear")
recipe = {
    "model": {"path": s["model"]},
    "data": {"train": [{"path": s["data"], "format": "alpaca"}], "max_length": s["cutoff"]},
    "method": method,
    "train": {**train, **s.get("tunelab_train", {})},
    "output": s["workdir"] + "/run",
}
path = s["workdir"] + "/tunelab.yaml"
with open(path, "w", encoding="utf-8") as handle:
    yaml.safe_dump(recipe, handle)
probe = GpuProbe()


def train() -> dict:
    summary = tunelab.train(path, overwrite=True, callbacks=[probe]).summary
    memory = summary.get("memory") or {}
    return {  # what tunelab itself says: its estimate, attention and kernels
        "estimated_bytes": memory.get("estimated_bytes"),
        "attention": summary.get("attention"),
        "fused_kernels": summary.get("fused_kernels"),
    }


guarded(train, probe)
