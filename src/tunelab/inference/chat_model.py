"""The one generation engine: a model ready to answer (base, base + adapter from a run
folder, or a merged folder), used by chat, eval, compare, the demo and the sample answers
during training.

Stop tokens come from the tokenizer and the model's generation config; decoding is greedy
unless `Sampling` asks otherwise; `stream` yields the answer as it is generated. A run is
answered with its own chat template and its recipe's default system prompt (`data.system`).
Several LoRA runs on one base share one model, each answering through its own adapter
(`open_chat_models`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.data.render import ConversationRenderer
from tunelab.errors import TunelabError
from tunelab.inference.batch import Row, RowFollower, StepLogprobs
from tunelab.methods import get_method
from tunelab.models.load import load_model, load_tokenizer, pick_device, pick_dtype
from tunelab.models.sources import ModelSource, resolve_model
from tunelab.reasoning import prompt_opens_thinking
from tunelab.run import RunFolder, TrainedWeights, is_run_target
from tunelab.templates import resolve_template


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: temperature 0 is greedy (the default everywhere)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float = 1.0  # above 1 discourages repeating tokens (greedy too)

    def options(self) -> dict:
        options = {"do_sample": self.temperature > 0}
        if self.repetition_penalty != 1.0:
            options["repetition_penalty"] = self.repetition_penalty
        if self.temperature <= 0:
            return options
        options.update(temperature=self.temperature, top_p=self.top_p)
        if self.top_k:
            options["top_k"] = self.top_k
        return options


GREEDY = Sampling()
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


def stop_token_ids(tokenizer, model) -> list[int]:
    """Tokens that end an answer: the tokenizer's eos and the model's own eos list."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)


@dataclass
class ChatModel:
    model: torch.nn.Module
    tokenizer: object
    renderer: ConversationRenderer
    device: torch.device
    description: str
    system: str | None = None  # default system prompt for conversations without one
    adapter: str | None = None  # the adapter that answers, when the model holds several

    def prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The token ids that prompt this model for the next answer to a conversation."""
        if self.system and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": self.system}, *messages]
        return self.renderer.prompt_ids(messages, tools)

    def opens_thinking(self, prompt: list[int]) -> bool:
        """Whether the prompt ends inside an opened <think> block (DeepSeek-R1's prompts do)."""
        return prompt_opens_thinking(self.tokenizer.decode(prompt[-4:]))

    def context(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's eos and the model's own eos list."""
        return stop_token_ids(self.tokenizer, self.model)

    def room_for(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """How many tokens may follow a prompt within the model's context; a prompt that
        fills the context is refused before anything is generated."""
        context = self.context()
        if not context:
            return max_new_tokens
        if prompt_tokens >= context:
            raise TunelabError(
                f"the prompt is {prompt_tokens:,} tokens, which fills the model's context of "
                f"{context:,} tokens (max_position_embeddings); shorten it."
            )
        return min(max_new_tokens, context - prompt_tokens)

    def _config(self, max_new_tokens: int, sampling: Sampling):
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_token_ids(),
            pad_token_id=self.tokenizer.pad_token_id,
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

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def mixed_batches(self) -> bool:
        """Whether rows for different adapters can share a batch (peft cannot mix DoRA)."""
        configs = getattr(self.model, "peft_config", {})
        return not any(getattr(c, "use_dora", False) for c in configs.values())

    def _adapter_choice(self, rows: list[Row]):
        """(context, generate options) that make each row answer through its adapter."""
        adapters = {row.adapter for row in rows}
        if adapters == {None} or not hasattr(self.model, "peft_config"):
            return contextlib.nullcontext(), {}
        if len(adapters) == 1:
            (name,) = adapters
            if name == BASE_ADAPTER:
                return self.model.disable_adapter(), {}
            self.model.set_adapter(name)
            return contextlib.nullcontext(), {}
        return contextlib.nullcontext(), {"adapter_names": [row.adapter for row in rows]}

    @torch.inference_mode()
    def run_rows(self, rows: list[Row], sampling: Sampling = GREEDY) -> None:
        """Generate one batch of rows; each ends on its own stop token, stop string or limit
        (or when cancelled), and hands out its text as it grows."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        for row in rows:
            row.max_new_tokens = self.room_for(len(row.prompt), row.max_new_tokens)
        input_ids, attention = self._batch([row.prompt for row in rows])
        logprobs = StepLogprobs() if any(r.logprobs is not None for r in rows) else None
        follower = RowFollower(rows, set(self.stop_token_ids()), self._decode, logprobs)
        context, options = self._adapter_choice(rows)
        if logprobs is not None:
            options["logits_processor"] = LogitsProcessorList([logprobs])
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with context:
            self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=self._config(max(r.max_new_tokens for r in rows), sampling),
                streamer=follower,
                stopping_criteria=StoppingCriteriaList([follower]),
                **options,
            )

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
        rows = [Row(p, max_new_tokens, list(stop_strings or []), self.adapter) for p in prompts]
        self.run_rows(rows, sampling)
        return [row.text.strip() for row in rows], sum(len(row.tokens) for row in rows)

    def stream(
        self,
        messages: list[dict],
        max_new_tokens: int = 256,
        sampling: Sampling = GREEDY,
        tools: list[dict] | None = None,
    ) -> Iterator[str]:
        """The answer to one conversation, piece by piece as it is generated; closing the
        iterator early stops the generation."""
        prompt = self.prompt_ids(messages, tools)
        pieces: queue.SimpleQueue = queue.SimpleQueue()
        row = Row(prompt, self.room_for(len(prompt), max_new_tokens), adapter=self.adapter)
        row.on_text = pieces.put
        failure: list[BaseException] = []

        def run():
            try:
                self.run_rows([row], sampling)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            finally:
                pieces.put(None)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while (piece := pieces.get()) is not None:
                yield piece
        finally:
            row.cancelled.set()
            worker.join()
        if failure:
            raise failure[0]

    def generate(
        self,
        conversations: list[list[dict]],
        max_new_tokens: int = 256,
        tools: list[dict] | None = None,
        sampling: Sampling = GREEDY,
    ) -> list[str]:
        """Answers to a batch of conversations (with tool schemas, as in training)."""
        prompts = [self.prompt_ids(messages, tools) for messages in conversations]
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
    if is_run_target(target):
        model = _open_run(RunFolder.open(target), with_adapter, quantized)
    else:
        model = _open_source(resolve_model(str(target)), "auto", str(target))
    if template_args:
        model.renderer.template_args.update(template_args)
    return model


def open_chat_models(targets: list[str], with_base: bool = False) -> dict[str, ChatModel]:
    """Several targets at once, by the name a client asks for (a run folder's name, a model
    folder's name, an alias).

    LoRA-family runs on the same base share one loaded base, each answering through its own
    adapter; `with_base` adds the first run's base, answering without any adapter.
    """
    opened: dict[str, ChatModel] = {}
    groups: dict[tuple, list[tuple[str, TrainedWeights]]] = {}
    first_run: RunFolder | None = None
    for name, target in served_names(targets).items():
        if not is_run_target(target):
            opened[name] = open_chat_model(target)
            continue
        run = RunFolder.open(target)
        first_run = first_run or run
        weights = run.trained()
        method = get_method(weights.recipe.method.type)
        if weights.adapter is None or method.family != "lora":
            opened[name] = open_chat_model(target)
            continue
        key = (weights.base, weights.recipe.model.dtype, weights.recipe.method.type == "qlora")
        groups.setdefault(key, []).append((name, weights))
    base_name = None
    if with_base:
        if first_run is None:
            raise TunelabError("--base needs a run folder among the targets, to know its base.")
        base_name = Path(first_run.final_run().recipe().model.path).name
        if base_name in opened or any(base_name == n for g in groups.values() for n, _ in g):
            raise TunelabError(f"the base `{base_name}` has the same name as a target.")
    for group in groups.values():
        shares_base = base_name is not None and group[0][1].run.path == first_run.path
        opened.update(_open_adapters(group, base_name if shares_base else None))
    if base_name is not None and base_name not in opened:
        opened[base_name] = _open_run(first_run, with_adapter=False, quantized=True)
    return opened


def served_names(targets: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for target in targets:
        name = Path(str(target).rstrip("/")).name or str(target)
        if name in names:
            raise TunelabError(
                f"`{names[name]}` and `{target}` would both be served as `{name}`; "
                "give one of them another folder name."
            )
        names[name] = str(target)
    return names


def _open_adapters(
    group: list[tuple[str, TrainedWeights]], base_name: str | None
) -> dict[str, ChatModel]:
    """One base with every adapter of the group loaded on it under the run's name."""
    from peft import PeftModel

    first = group[0][1]
    base, device = _load_base(first, quantized=True)
    model = None
    for name, weights in group:
        if model is None:
            model = PeftModel.from_pretrained(base, weights.adapter, adapter_name=name)
        else:
            model.load_adapter(weights.adapter, adapter_name=name)
    model.eval()
    opened = {}
    for name, weights in group:
        variant = _adapter_variant(model, weights, device, f"{weights.run.path} (base + adapter)")
        variant.adapter = name
        opened[name] = variant
    if base_name is not None:
        variant = _base_variant(model, first, device)
        variant.adapter = BASE_ADAPTER
        opened[base_name] = variant
    return opened


def _adapter_variant(model, weights: TrainedWeights, device, description: str) -> ChatModel:
    """The run's adapter with its own tokenizer, chat template and system prompt."""
    trusted = weights.recipe.model.trust_remote_code
    tokenizer = load_tokenizer(ModelSource(str(weights.adapter), weights.adapter, None, trusted))
    renderer = ConversationRenderer(
        tokenizer, tokenizer.chat_template, template_args=weights.recipe.model.template_args
    )
    return ChatModel(
        model, tokenizer, renderer, device, description, system=weights.recipe.data.system
    )


def _base_variant(model, weights: TrainedWeights, device) -> ChatModel:
    """The base of a run, prompted as the run was (its template and system prompt)."""
    recipe = weights.recipe
    tokenizer = load_tokenizer(resolve_model(recipe.model.path, recipe.model.trust_remote_code))
    renderer = ConversationRenderer(
        tokenizer,
        resolve_template(recipe.model.template, tokenizer),
        template_args=recipe.model.template_args,
    )
    return ChatModel(
        model, tokenizer, renderer, device, f"base of {weights.run.path}", system=recipe.data.system
    )


def _open_run(run: RunFolder, with_adapter: bool, quantized: bool) -> ChatModel:
    if not with_adapter:
        recipe = run.final_run().recipe()
        model = _open_source(
            resolve_model(recipe.model.path, recipe.model.trust_remote_code),
            recipe.model.template,
            f"base of {run.path}",
            recipe.model.dtype,
        )
        model.renderer.template_args.update(recipe.model.template_args)
        model.system = recipe.data.system
        return model
    weights = run.trained()
    dtype_setting = weights.recipe.model.dtype
    if weights.model is not None:
        model = _open_source(
            ModelSource(
                str(weights.model), weights.model, None, weights.recipe.model.trust_remote_code
            ),
            "auto",
            f"{weights.run.path} (trained model)",
            dtype_setting,
        )
        model.renderer.template_args.update(weights.recipe.model.template_args)
        model.system = weights.recipe.data.system
        return model
    from peft import PeftModel

    base, device = _load_base(weights, quantized)
    model = PeftModel.from_pretrained(base, weights.adapter).eval()
    return _adapter_variant(model, weights, device, f"{weights.run.path} (base + adapter)")


def _load_base(weights: TrainedWeights, quantized: bool):
    """(the base model an adapter run trained on, its device); a qlora base in 4-bit unless
    `quantized` is False."""
    method = weights.recipe.method
    device = pick_device()
    options = get_method(method.type).load_options(method, device) if quantized else {}
    dtype = pick_dtype(weights.recipe.model.dtype, device)
    source = resolve_model(weights.base, weights.recipe.model.trust_remote_code)
    return load_model(source, dtype, device, **options), device


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
