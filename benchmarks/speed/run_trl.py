"""TRL's side of the speed benchmark: SFTTrainer with its defaults except the shared settings.

Alpaca rows become conversational prompt/completion pairs, so the loss is on the answer only
(TRL's completion-only loss), as in the other tools. bf16 and gradient checkpointing, which
SFTConfig turns on by default, follow the shared settings, as in the other tools.
"""

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from probe import Probe
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

settings = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
rows = json.loads(Path(settings["data"]).read_text(encoding="utf-8"))
pairs = [
    {
        "prompt": [
            {
                "role": "user",
                "content": "\n".join(p for p in (r["instruction"], r.get("input", "")) if p),
            }
        ],
        "completion": [{"role": "assistant", "content": r["output"]}],
    }
    for r in rows
]
tokenizer = AutoTokenizer.from_pretrained(settings["model"])
model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype=torch.float32)
config = SFTConfig(
    output_dir=settings["workdir"] + "/trl-run",
    max_steps=settings["steps"],
    per_device_train_batch_size=settings["batch_size"],
    learning_rate=2e-4,
    lr_scheduler_type="cosine",
    warmup_steps=0.03,
    max_length=settings["cutoff"],
    bf16=False,
    gradient_checkpointing=settings["checkpointing"],
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    seed=settings["seed"],
    use_cpu=True,
    dataloader_num_workers=0,
    include_num_input_tokens_seen="non_padding",
)
trainer = SFTTrainer(
    model=model,
    args=config,
    train_dataset=Dataset.from_list(pairs),
    processing_class=tokenizer,
    peft_config=LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=settings["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    ),
    callbacks=[Probe()],
)
trainer.train()
