"""A plain transformers script: Trainer (+ peft for LoRA), padded batches, loss on the answer.

Each alpaca row is rendered with the model's chat template; the prompt's tokens (everything up
to the assistant's turn) are labelled -100, the answer and its end-of-turn token are trained.
"""

import torch
from common import conversations, dtype, lora_config, settings, training_arguments
from probe import GpuProbe, guarded
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
)

s = settings()
tokenizer = AutoTokenizer.from_pretrained(s["model"])
rows = []
for user, answer in conversations(s["data"]):
    messages = [{"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][: s["cutoff"]]
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    rows.append({"input_ids": ids, "labels": [-100] * start + ids[start:]})
model = AutoModelForCausalLM.from_pretrained(s["model"], dtype=dtype(), attn_implementation="sdpa")
if torch.cuda.is_available():
    model = model.cuda()
if s["method"] == "lora":
    from peft import get_peft_model

    model = get_peft_model(model, lora_config())
probe = GpuProbe()
trainer = Trainer(
    model=model,
    args=TrainingArguments(**training_arguments(s, s["batch_size"]), remove_unused_columns=False),
    train_dataset=rows,
    data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    callbacks=[probe],
)
guarded(trainer.train, probe)
