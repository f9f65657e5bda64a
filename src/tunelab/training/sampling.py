"""Answers to fixed prompts while training: on screen and in samples.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.console import Console
from transformers import TrainerCallback

from tunelab.data.render import ConversationRenderer


class SampleAnswers(TrainerCallback):
    """Greedy answers to `prompts` before training, every `every` steps, and at the end."""

    def __init__(
        self,
        path: Path,
        renderer: ConversationRenderer,
        prompts: list[str],
        every: int | None,
        max_new_tokens: int,
        console: Console,
    ):
        self.path = path
        self.renderer = renderer
        self.prompts = prompts
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.console = console
        self.last_step = -1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._answer(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._answer(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step != self.last_step:
            self._answer(model, state.global_step)

    @torch.no_grad()
    def _answer(self, model, step: int) -> None:
        if not self.prompts or model is None:
            return
        self.last_step = step
        was_training = model.training
        model.eval()
        tokenizer = self.renderer.tokenizer
        device = next(model.parameters()).device
        rows = []
        for prompt in self.prompts:
            ids = self.renderer.prompt_ids([{"role": "user", "content": prompt}])
            output = model.generate(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            answer = tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()
            rows.append({"step": step, "prompt": prompt, "answer": answer})
            self.console.print(
                f"[dim]step {step}[/] [bold]{prompt}[/] -> {answer}", highlight=False
            )
        with self.path.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if was_training:
            model.train()
