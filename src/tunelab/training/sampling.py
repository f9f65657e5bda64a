"""Answers to fixed prompts while training: on screen and in samples.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from tunelab.data.render import ConversationRenderer
from tunelab.events import RunEvents
from tunelab.inference.chat_model import ChatModel
from tunelab.ranks import is_main


class SampleAnswers(TrainerCallback):
    """Greedy answers to `prompts` before training, every `every` steps, and at the end."""

    def __init__(
        self,
        path: Path,
        renderer: ConversationRenderer,
        prompts: list[str],
        every: int | None,
        max_new_tokens: int,
        events: RunEvents,
    ):
        self.path = path
        self.renderer = renderer
        self.prompts = prompts
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.events = events
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

    def _answer(self, model, step: int) -> None:
        if not self.prompts or model is None or not is_main():
            return
        self.last_step = step
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        # the same engine as `tunelab chat`: same stop tokens, same decoding, one prompt a call
        engine = ChatModel(model, self.renderer.tokenizer, self.renderer, device, "training")
        rows = []
        for prompt in self.prompts:
            answer = engine.answer(prompt, max_new_tokens=self.max_new_tokens)
            rows.append({"step": step, "prompt": prompt, "answer": answer})
            self.events.emit("sample", step, prompt=prompt, answer=answer)
        with self.path.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if was_training:
            model.train()
