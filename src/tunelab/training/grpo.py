"""GRPO on TRL's trainer: answers sampled for each prompt, scored by the recipe's rewards,
learned from by their advantage within the group.

tunelab renders the prompts itself (the model's chat template, thinking on or off), so the
trainer takes those token ids as they are instead of applying the template again; TRL samples,
computes the loss and its metrics. Sampled answers with their rewards go to samples.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.ranks import is_main
from tunelab.rewards import RewardContext, Rewards, build_rewards

ENGINES = ("transformers generate", "vLLM (colocated)")


def check_grpo(recipe) -> None:
    """A grpo recipe's batch holds whole groups, and its method has weights to train."""
    if recipe.train.objective != "grpo":
        return
    cfg, group = recipe.train, recipe.grpo.generations
    if recipe.method.type in ("ptuning", "prefix", "prompt"):
        raise TunelabError(
            f"train.objective grpo needs weights or a LoRA adapter to train, and method.type "
            f"{recipe.method.type} learns virtual tokens; use method.type lora (or dora, "
            "qlora, freeze, full)."
        )
    if (cfg.batch_size * cfg.grad_accum) % group:
        raise TunelabError(
            f"train.batch_size x train.grad_accum ({cfg.batch_size} x {cfg.grad_accum}) counts "
            f"sampled answers per step and must be a multiple of grpo.generations ({group}), "
            f"so each prompt's group is whole; e.g. train.batch_size: {group * 2}."
        )


def engine(recipe) -> str:
    """Which engine samples the answers: vLLM colocated on a CUDA GPU when it is installed
    (and not switched off), else transformers' generate."""
    import importlib.util

    import torch

    vllm = recipe.grpo.vllm == "auto" and torch.cuda.is_available()
    return ENGINES[1] if vllm and importlib.util.find_spec("vllm") else ENGINES[0]


def reward_context(recipe, tokenizer, model, template: str) -> RewardContext:
    """What the built-in rewards need of this run: its stop tokens, whether answers reason."""
    from tunelab.inference.chat_model import stop_token_ids

    thinking = recipe.model.template_args.get("enable_thinking", True)
    reasons = "<think>" in (template or "") and thinking is not False
    return RewardContext(set(stop_token_ids(tokenizer, model)), reasons,
                         recipe.grpo.max_completion_length)  # fmt: skip


def rewards_for(recipe, data, tokenizer, model, template: str) -> Rewards:
    context = reward_context(recipe, tokenizer, model, template)
    return build_rewards(recipe.grpo.rewards, recipe.source_dir, context, data.columns)


def dataset(samples):
    """The prompts as the `datasets.Dataset` TRL's trainer takes: the rendered text as
    `prompt`, its ids, and every column the rewards may read."""
    from datasets import Dataset

    rows = [{**s.columns, "prompt": s.prompt, "prompt_ids": s.prompt_ids} for s in samples]
    return Dataset.from_list(rows)


def build(recipe, arguments: dict, model, tokenizer, data, callbacks, rewards: Rewards, log):
    """The TRL trainer for a grpo recipe, over already rendered prompts."""
    from trl import GRPOConfig

    cfg = recipe.grpo
    use_vllm = engine(recipe) == ENGINES[1]
    args = GRPOConfig(
        # the weights' dtype decides, as in SFT runs (DeepSpeed's config says it too)
        **{"bf16": False, **arguments},
        gradient_checkpointing=False,  # set on the model by the runner when asked
        num_generations=cfg.generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        loss_type=cfg.loss,
        importance_sampling_level=cfg.importance_sampling,
        epsilon=cfg.epsilon,
        scale_rewards=cfg.scale_rewards,
        mask_truncated_completions=cfg.mask_truncated,
        reward_weights=rewards.weights,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        log_completions=False,  # samples.jsonl keeps them
        shuffle_dataset=True,
    )
    trainer = _trainer_class()(
        model=model,
        reward_funcs=rewards.functions,
        args=args,
        train_dataset=dataset(data.train),
        eval_dataset=dataset(data.eval) if data.eval else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.completion_log = log
    return trainer


class CompletionLog:
    """Sampled answers with each reward, into samples.jsonl: the first group of a step every
    `every` steps (every step when unset)."""

    def __init__(self, path: Path, every: int | None):
        self.path = path
        self.every = every or 1

    def add(self, step: int, prompts, completions, rewards: dict, group: int) -> None:
        if step % self.every or not is_main():
            return
        with self.path.open("a", encoding="utf-8") as handle:
            for index in range(min(group, len(completions))):
                row = {
                    "step": step,
                    "kind": "completion",
                    "prompt": prompts[index],
                    "completion": completions[index],
                    "rewards": {name: values[index] for name, values in rewards.items()},
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _trainer_class():
    """(Made on first use, so TRL loads only when it is needed.)"""
    from trl import GRPOTrainer

    class RenderedGRPOTrainer(GRPOTrainer):
        """GRPO on tunelab's prompt ids (`prompt_ids`); `prompt` is the same prompt as text,
        which reward functions get."""

        completion_log: CompletionLog | None = None
        _batch_ids: list | None = None

        def _generate_and_score_completions(self, inputs):
            self._batch_ids = [list(x["prompt_ids"]) for x in inputs]
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                self._batch_ids = None

        def _tokenize_prompts(self, prompts: list):
            if self._batch_ids is None or len(self._batch_ids) != len(prompts):
                raise RuntimeError("prompts reached the trainer without their token ids")
            return self._batch_ids, None, {}

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self.completion_log is not None and self.model.training:
                start = self.accelerator.process_index * len(prompts)  # this process's rows
                local = rewards[start : start + len(prompts)]
                by_name = {n: local[:, i].tolist() for i, n in enumerate(self.reward_func_names)}
                step = self.state.global_step + 1
                self.completion_log.add(step, prompts, completions, by_name, self.num_generations)
            return rewards

        def create_model_card(self, *args, **kwargs) -> None:
            return None  # the run folder records the run

    return RenderedGRPOTrainer
