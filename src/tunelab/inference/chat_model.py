"""A model ready to answer: base, base + adapter from a run folder, or a merged folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.data.render import ConversationRenderer
from tunelab.errors import TunelabError
from tunelab.methods import get_method
from tunelab.models.load import load_model, load_tokenizer, pick_device, pick_dtype
from tunelab.models.sources import ModelSource, resolve_model
from tunelab.run import RECIPE_FILE, RunFolder
from tunelab.templates import resolve_template


@dataclass
class ChatModel:
    model: torch.nn.Module
    tokenizer: object
    renderer: ConversationRenderer
    device: torch.device
    description: str

    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's eos and the model's own eos list."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return sorted(i for i in ids if i is not None)

    def room_for(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """How many tokens may follow a prompt within the model's context; a prompt that
        fills the context is refused before anything is generated."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if not context:
            return max_new_tokens
        if prompt_tokens >= context:
            raise TunelabError(
                f"the prompt is {prompt_tokens:,} tokens, which fills the model's context of "
                f"{context:,} tokens (max_position_embeddings); shorten it."
            )
        return min(max_new_tokens, context - prompt_tokens)

    @torch.inference_mode()
    def generate_ids(
        self,
        prompts: list[list[int]],
        max_new_tokens: int = 256,
        stop_strings: list[str] | None = None,
    ) -> tuple[list[str], int]:
        """Greedy continuations of token-id prompts (one left-padded batch, KV cache on).

        Returns the texts (cut at the first stop string) and the number of generated tokens.
        """
        from transformers import GenerationConfig

        longest = max(len(p) for p in prompts)
        max_new_tokens = self.room_for(longest, max_new_tokens)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor(
            [[pad] * (longest - len(p)) + p for p in prompts], device=self.device
        )
        attention = torch.tensor(
            [[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=self.device
        )
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.stop_token_ids(),
            pad_token_id=pad,
            stop_strings=stop_strings or None,
            use_cache=True,  # also for a model being trained, whose config turns it off
        )
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=config,
            tokenizer=self.tokenizer,
        )
        texts, generated = [], 0
        stops = set(self.stop_token_ids()) | {pad}
        for row in output[:, longest:].tolist():
            # Count up to and including the first stop token; the rest is batch padding.
            length = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            generated += length
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            for stop in stop_strings or []:
                text = text.split(stop)[0]
            texts.append(text.strip())
        return texts, generated

    def generate(
        self,
        conversations: list[list[dict]],
        max_new_tokens: int = 256,
        tools: list[dict] | None = None,
    ) -> list[str]:
        """Greedy answers to a batch of conversations (with tool schemas, as in training)."""
        prompts = [self.renderer.prompt_ids(messages, tools) for messages in conversations]
        return self.generate_ids(prompts, max_new_tokens)[0]

    def answer(self, prompt: str, system: str | None = None, max_new_tokens: int = 256) -> str:
        """The greedy answer to one user prompt."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return self.generate([messages], max_new_tokens)[0]


def open_chat_model(
    target: str | Path, with_adapter: bool = True, quantized: bool = True
) -> ChatModel:
    """Load a run folder (its trained weights, or the base alone), a model folder, or an alias.

    `quantized=False` loads a qlora run's base in full precision (for merging).
    """
    path = Path(target)
    if (path / RECIPE_FILE).is_file():
        return _open_run(RunFolder.open(path), with_adapter, quantized)
    source = resolve_model(str(target))
    return _open_source(source, "auto", str(target))


def _open_run(run: RunFolder, with_adapter: bool, quantized: bool) -> ChatModel:
    if not with_adapter:
        recipe = run.final_run().recipe()
        return _open_source(
            resolve_model(recipe.model.path),
            recipe.model.template,
            f"base of {run.path}",
            recipe.model.dtype,
        )
    weights = run.trained()
    dtype_setting = weights.recipe.model.dtype
    if weights.model is not None:
        return _open_source(
            ModelSource(str(weights.model), weights.model),
            "auto",
            f"{weights.run.path} (trained model)",
            dtype_setting,
        )
    from peft import PeftModel

    method_config = weights.recipe.method
    device = pick_device()
    options = (
        get_method(method_config.type).load_options(method_config, device) if quantized else {}
    )
    tokenizer = load_tokenizer(ModelSource(str(weights.adapter), weights.adapter))
    base = load_model(
        resolve_model(weights.base), pick_dtype(dtype_setting, device), device, **options
    )
    model = PeftModel.from_pretrained(base, weights.adapter).eval()
    renderer = ConversationRenderer(tokenizer, tokenizer.chat_template)
    return ChatModel(model, tokenizer, renderer, device, f"{weights.run.path} (base + adapter)")


def _open_source(
    source: ModelSource, template: str, description: str, dtype: str = "auto"
) -> ChatModel:
    device = pick_device()
    tokenizer = load_tokenizer(source)
    chat_template = resolve_template(template, tokenizer)
    model = load_model(source, pick_dtype(dtype, device), device).eval()
    return ChatModel(
        model, tokenizer, ConversationRenderer(tokenizer, chat_template), device, description
    )
