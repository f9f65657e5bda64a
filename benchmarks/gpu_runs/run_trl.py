"""TRL's SFTTrainer: its defaults but for the shared settings (bf16, no gradient checkpointing,
learning rate, steps), on conversational prompt/completion rows (the loss on the answer).

    mode "padded" (TRL's default), "padding_free" (one row per batch, positions restarting per
    sample; TRL enforces no max_length there, so rows are not cut) or "packing" (rows packed up
    to max_length, batch 1: TRL's token budget)
"""

import torch
from common import conversations, dtype, lora_config, settings, training_arguments
from datasets import Dataset
from probe import GpuProbe, guarded
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

s = settings()
mode = s["trl_mode"]
rows = [
    {
        "prompt": [{"role": "user", "content": user}],
        "completion": [{"role": "assistant", "content": answer}],
    }
    for user, answer in conversations(s["data"])
]
tokenizer = AutoTokenizer.from_pretrained(s["model"])
model = AutoModelForCausalLM.from_pretrained(s["model"], dtype=dtype(), attn_implementation="sdpa")
if torch.cuda.is_available():
    model = model.cuda()
batch = 1 if mode == "packing" else s["batch_size"]
config = SFTConfig(
    **training_arguments(s, batch),
    max_length={"packing": s.get("batch_tokens"), "padding_free": None}.get(mode, s["cutoff"]),
    padding_free=mode != "padded",
    packing=mode == "packing",
)
probe = GpuProbe()
trainer = SFTTrainer(
    model=model,
    args=config,
    train_dataset=Dataset.from_list(rows),
    processing_class=tokenizer,
    peft_config=lora_config() if s["method"] == "lora" else None,
    callbacks=[probe],
)
guarded(trainer.train, probe)
