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
from tunelab.objectives.base import Batching, Objective, TrainerParts
from tunelab.ranks import is_main
from tunelab.rewards import RewardContext, Rewards, build_rewards
from tunelab.run import REWARDS_FILE, SAMPLES_FILE

ENGINES = ("transformers generate", "vLLM (colocated)")


class GRPO(Objective):
    """Answers sampled per prompt, scored by the recipe's rewards, learned from by their
    advantage within the group (TRL's GRPOTrainer)."""

    name = "grpo"
    samples_noun = "prompts"

    def check(self, recipe) -> None:
        """Its rewards are listed, a batch holds whole groups, its method has weights."""
        cfg, group = recipe.train, recipe.grpo.generations
        if not recipe.grpo.rewards:
            raise TunelabError(
                "train.objective grpo learns from rewards; list them in grpo.rewards, e.g. "
                "rewards: [gsm8k, format]"
            )
        if recipe.method.type in ("ptuning", "prefix", "prompt"):
            raise TunelabError(
                f"train.objective grpo needs weights or a LoRA adapter to train, and method.type "
                f"{recipe.method.type} learns virtual tokens; use method.type lora (or dora, "
                "qlora, freeze, full)."
            )
        if (cfg.batch_size * cfg.grad_accum) % group:
            raise TunelabError(
                f"train.batch_size x train.grad_accum ({cfg.batch_size} x {cfg.grad_accum}) "
                f"counts sampled answers per step and must be a multiple of grpo.generations "
                f"({group}), so each prompt's group is whole; e.g. train.batch_size: {group * 2}."
            )

    def batching(self, packing: bool, group_by_length, method_family: str, fit) -> Batching:
        return Batching(False, False, "TRL's grpo trainer pads the answers sampled per prompt")

    def prepare(self, recipe, tokenizer, template: str, context: int | None):
        from tunelab.data.prompt_pipeline import prepare_prompts

        room = context - recipe.grpo.max_completion_length if context else None
        return prepare_prompts(recipe.data, recipe.source_dir, tokenizer, template,
                               recipe.train.seed, room, recipe.model.template_args,
                               recipe.grpo.max_completion_length)  # fmt: skip

    def lengths(self, target, tokenizer, template: str) -> tuple[dict, list]:
        """Each prompt as rendered (the answers are sampled)."""
        from tunelab.data.prompt_pipeline import prepare_prompts
        from tunelab.data.stats import length_stats

        config = target.config.model_copy(update={"on_bad_row": "skip"})
        prepared = prepare_prompts(config, target.base_dir, tokenizer, template, 0,
                                   template_args=target.template_args)  # fmt: skip
        stats = {**length_stats(prepared.train), "model": target.model, "objective": self.name,
                 "measured": "prompts (answers are sampled)"}  # fmt: skip
        return stats, prepared.train

    def preview(self, target, tokenizer, template: str, n: int) -> list:
        from tunelab.objectives.sft import rendered_preview

        return rendered_preview(target, tokenizer, template, n)

    def read_rows(self, target, config):
        """The prompts, with the columns rewards read."""
        from tunelab.data.load import DataReport
        from tunelab.data.prompt_pipeline import read_prompts

        report = DataReport()
        rows = [row for source in config.sources("train")
                for row in read_prompts(source, config, target.base_dir, report)]  # fmt: skip
        return rows, report

    def largest_step(self, recipe, data, packed: bool) -> tuple[int, int | None]:
        """The longest prompt, each answer as long as allowed."""
        longest = max(len(s.prompt_ids) for s in data.train)
        return recipe.train.batch_size * (longest + recipe.grpo.max_completion_length), None

    def reference(self, recipe) -> bool:
        return recipe.grpo.beta != 0  # a KL term against the starting weights

    def generation_bytes(self, recipe, prof, tokens_per_step: int) -> int:
        """The key/value cache of every sampled answer, the fp32 logits of one step."""
        cache = prof.kv_bytes_per_token * tokens_per_step
        return cache + 2 * recipe.train.batch_size * prof.vocab_size * 4

    def sampling(self, recipe) -> tuple[int, int]:
        return recipe.grpo.generations, recipe.grpo.max_completion_length

    def build_trainer(self, parts: TrainerParts):
        """GRPO's trainer with the recipe's rewards (what each one is goes into rewards.json)."""
        recipe, run, tokenizer = parts.recipe, parts.run, parts.tokenizer
        rewards = rewards_for(recipe, parts.data, tokenizer, parts.model, tokenizer.chat_template)
        if run.writer:
            run.write_json(REWARDS_FILE, {"generation": engine(recipe), "rewards": rewards.record})
        log = CompletionLog(run.file(SAMPLES_FILE), recipe.train.sample_every)
        return build(parts, rewards, log)

    def summary(self, run) -> dict:
        return run.read_json(REWARDS_FILE)  # the sampling engine and each reward


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


def build(parts: TrainerParts, rewards: Rewards, log):
    """The TRL trainer for a grpo recipe, over already rendered prompts."""
    from trl import GRPOConfig

    recipe, data = parts.recipe, parts.data
    cfg = recipe.grpo
    use_vllm = engine(recipe) == ENGINES[1]
    args = GRPOConfig(
        # the weights' dtype decides, as in SFT runs (DeepSpeed's config says it too)
        **{"bf16": False, **parts.arguments},
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
        model=parts.model,
        reward_funcs=rewards.functions,
        args=args,
        train_dataset=dataset(data.train),
        eval_dataset=dataset(data.eval) if data.eval else None,
        processing_class=parts.tokenizer,
        callbacks=parts.callbacks,
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
