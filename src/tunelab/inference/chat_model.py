"""The one generation engine: a model ready to answer (base, base + adapter from a run
folder, or a merged folder), used by chat, eval, compare, the demo and the sample answers
during training.

Stop tokens come from the tokenizer and the model's generation config; decoding is greedy
unless `Sampling` asks otherwise; `stream` yields the answer as it is generated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: temperature 0 is greedy (the default everywhere)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None

    def options(self) -> dict:
        if self.temperature <= 0:
            return {"do_sample": False}
        options = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        if self.top_k:
            options["top_k"] = self.top_k
        return options


GREEDY = Sampling()


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

    def _config(self, max_new_tokens: int, stop_strings, sampling: Sampling):
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_token_ids(),
            pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=stop_strings or None,
            use_cache=True,  # also for a model being trained, whose config turns it off
            **sampling.options(),
        )

    def _batch(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask for a batch of prompts."""
        longest = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = [[pad] * (longest - len(p)) + p for p in prompts]
        mask = [[0] * (longest - len(p)) + [1] * len(p) for p in prompts]
        return torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device)

    @torch.inference_mode()
    def generate_ids(
        self,
        prompts: list[list[int]],
        max_new_tokens: int = 256,
        stop_strings: list[str] | None = None,
        sampling: Sampling = GREEDY,
    ) -> tuple[list[str], int]:
        """Continuations of token-id prompts (one left-padded batch, KV cache on).

        Returns the texts (cut at the first stop string) and the number of generated tokens.
        """
        input_ids, attention = self._batch(prompts)
        longest = input_ids.shape[1]
        max_new_tokens = self.room_for(longest, max_new_tokens)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=self._config(max_new_tokens, stop_strings, sampling),
            tokenizer=self.tokenizer,
        )
        texts, generated = [], 0
        stops = set(self.stop_token_ids()) | {self.tokenizer.pad_token_id}
        for row in output[:, longest:].tolist():
            # Count up to and including the first stop token; the rest is batch padding.
            length = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            generated += length
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            for stop in stop_strings or []:
                text = text.split(stop)[0]
            texts.append(text.strip())
        return texts, generated

    def stream(
        self,
        messages: list[dict],
        max_new_tokens: int = 256,
        sampling: Sampling = GREEDY,
        tools: list[dict] | None = None,
    ) -> Iterator[str]:
        """The answer to one conversation, piece by piece as it is generated."""
        from transformers import TextIteratorStreamer

        prompt = self.renderer.prompt_ids(messages, tools)
        input_ids, attention = self._batch([prompt])
        max_new_tokens = self.room_for(len(prompt), max_new_tokens)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        config = self._config(max_new_tokens, None, sampling)

        def run():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    generation_config=config,
                    streamer=streamer,
                )

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()

    def generate(
        self,
        conversations: list[list[dict]],
        max_new_tokens: int = 256,
        tools: list[dict] | None = None,
        sampling: Sampling = GREEDY,
    ) -> list[str]:
        """Answers to a batch of conversations (with tool schemas, as in training)."""
        prompts = [self.renderer.prompt_ids(messages, tools) for messages in conversations]
        return self.generate_ids(prompts, max_new_tokens, sampling=sampling)[0]

    def answer(self, prompt: str, system: str | None = None, max_new_tokens: int = 256) -> str:
        """The greedy answer to one user prompt."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        return self.generate([messages], max_new_tokens)[0]


def open_chat_model(
    target: str | Path,
    with_adapter: bool = True,
    quantized: bool = True,
    template_args: dict | None = None,
) -> ChatModel:
    """Load a run folder (its trained weights, or the base alone), a model folder, or an alias.

    `quantized=False` loads a qlora run's base in full precision (for merging).
    `template_args` (e.g. {"enable_thinking": False}) go to the chat template; a run's own
    (model.template_args in its recipe) are the default.
    """
    path = Path(target)
    if (path / RECIPE_FILE).is_file():
        model = _open_run(RunFolder.open(path), with_adapter, quantized)
    else:
        model = _open_source(resolve_model(str(target)), "auto", str(target))
    if template_args:
        model.renderer.template_args.update(template_args)
    return model


def _open_run(run: RunFolder, with_adapter: bool, quantized: bool) -> ChatModel:
    if not with_adapter:
        recipe = run.final_run().recipe()
        model = _open_source(
            resolve_model(recipe.model.path),
            recipe.model.template,
            f"base of {run.path}",
            recipe.model.dtype,
        )
        model.renderer.template_args.update(recipe.model.template_args)
        return model
    weights = run.trained()
    dtype_setting = weights.recipe.model.dtype
    if weights.model is not None:
        model = _open_source(
            ModelSource(str(weights.model), weights.model),
            "auto",
            f"{weights.run.path} (trained model)",
            dtype_setting,
        )
        model.renderer.template_args.update(weights.recipe.model.template_args)
        return model
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
    renderer = ConversationRenderer(
        tokenizer, tokenizer.chat_template, template_args=weights.recipe.model.template_args
    )
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
