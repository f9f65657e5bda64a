"""LLaMA-Factory's side of the speed benchmark: its run_exp with the shared settings."""

import json
import os
import sys
from pathlib import Path

from llamafactory_env import allow_import

allow_import()

from llamafactory.train.tuner import run_exp  # noqa: E402
from probe import Probe  # noqa: E402

settings = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
folder = settings["workdir"] + "/llamafactory-data"
os.makedirs(folder, exist_ok=True)
with open(folder + "/dataset_info.json", "w", encoding="utf-8") as handle:
    json.dump({"bench": {"file_name": os.path.abspath(settings["data"])}}, handle)
run_exp(
    {
        "model_name_or_path": settings["model"],
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": settings["dropout"],
        "lora_target": "all",
        "dataset": "bench",
        "dataset_dir": folder,
        "template": "smollm2",
        "cutoff_len": settings["cutoff"],
        "overwrite_cache": True,
        "output_dir": settings["workdir"] + "/llamafactory-run",
        "overwrite_output_dir": True,
        "per_device_train_batch_size": settings["batch_size"],
        "gradient_accumulation_steps": 1,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.03,
        "max_steps": settings["steps"],
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        # LLaMA-Factory checkpoints activations unless told not to
        "disable_gradient_checkpointing": not settings["checkpointing"],
        "fp16": False,
        "seed": settings["seed"],
        "use_cpu": True,
        "include_num_input_tokens_seen": "non_padding",
    },
    callbacks=[Probe()],
)
