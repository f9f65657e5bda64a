"""What the peers' runners share: the settings, the alpaca rows as chat turns, LoRA's config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def settings() -> dict:
    return json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))


def dtype() -> torch.dtype:
    """bf16 on a GPU (as every tool trains there), fp32 on a CPU check of the script."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def conversations(path: str) -> list[tuple[str, str]]:
    """(user, assistant) of each alpaca row."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return [
        ("\n".join(p for p in (r["instruction"], r.get("input", "")) if p), r["output"])
        for r in rows
    ]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def training_arguments(s: dict, batch_size: int) -> dict:
    """The TrainingArguments (or SFTConfig) settings every peer shares."""
    return dict(
        output_dir=s["workdir"] + "/run",
        max_steps=s["steps"],
        per_device_train_batch_size=batch_size,
        learning_rate=1e-4 if s["method"] == "full" else 2e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
    )
