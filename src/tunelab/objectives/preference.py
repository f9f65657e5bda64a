"""Preference objectives on TRL's trainers: DPO, SimPO (CPO's simpo loss), ORPO and KTO.

tunelab renders the pairs itself (the model's chat template, the stop token, the cut, as
`tunelab.data.preference_pipeline` does), so each trainer here takes those token ids as they
are instead of tokenizing text again; TRL computes the losses and their metrics. Its own
tokenization would differ where a template renders a prompt alone otherwise than followed by an
answer, or where TRL appends an eos token the template does not write.
"""

from __future__ import annotations

from tunelab.data.preference import KTO as RATED
from tunelab.data.preference import PAIR, PreferenceSample
from tunelab.data.preference_pipeline import (
    Asked,
    answer_sequences,
    prepare_preferences,
    read_split,
)
from tunelab.errors import TunelabError
from tunelab.objectives.base import Batching, Objective, TrainerParts
from tunelab.objectives.collator import LargestBatch


class PreferenceObjective(Objective):
    """A preference loss on TRL's trainer: its data are chosen/rejected pairs (or rated
    answers), each answer padded after its prompt."""

    registry_kinds = ("preference",)
    data_kind = PAIR
    regroups = True  # its batches may be grouped by length
    reference_model = True  # learns against a reference model's log-probabilities

    @property
    def asked(self) -> Asked:
        return Asked(self.name, self.data_kind)

    def check(self, recipe) -> None:
        """Methods a preference objective can train: weights or a LoRA-family adapter."""
        method = recipe.method.type
        if method in ("ptuning", "prefix", "prompt"):
            raise TunelabError(
                f"train.objective {self.name} needs weights or a LoRA adapter to train, and "
                f"method.type {method} learns virtual tokens, which TRL's preference trainers "
                "do not handle; use method.type lora (or dora, qlora, freeze, full)."
            )

    def batching(self, packing: bool, group_by_length, method_family: str, fit) -> Batching:
        grouped = self.regroups and group_by_length is not False
        return Batching(
            False, grouped, f"TRL's {self.name} trainer pads each answer after its prompt"
        )

    def prepare(self, recipe, tokenizer, template: str, context: int | None):
        return prepare_preferences(recipe.data, recipe.source_dir, tokenizer, template,
                                   recipe.train.seed, self.asked, context,
                                   recipe.model.template_args)  # fmt: skip

    def _prepared(self, target, tokenizer, template: str, **update):
        config = target.config.model_copy(update={"val_ratio": None, "eval": None, **update})
        return prepare_preferences(config, target.base_dir, tokenizer, template, 0, self.asked,
                                   template_args=target.template_args)  # fmt: skip

    def lengths(self, target, tokenizer, template: str) -> tuple[dict, list]:
        """Each answer after its prompt is one sequence (what the trainer pads and runs), the
        answers' tokens the trained ones."""
        from tunelab.data.stats import full_report

        prepared = self._prepared(target, tokenizer, template, on_bad_row="skip",
                                  max_length="auto")  # fmt: skip
        sequences = [seq for sample in prepared.train for seq in answer_sequences(sample)]
        stats = {**full_report(sequences), "model": target.model, "objective": self.name,
                 "measured": "sequences (each answer after its prompt)"}  # fmt: skip
        return stats, sequences

    def preview(self, target, tokenizer, template: str, n: int) -> list:
        """The prompt, then each answer (chosen and rejected, or the rated one)."""
        from dataclasses import replace

        shown = []
        for sample in self._prepared(target, tokenizer, template).train[:n]:
            names = ["chosen", "rejected"] if sample.rejected_ids is not None else [
                {True: "rated desirable", False: "rated undesirable"}.get(sample.label, "answer")
            ]  # fmt: skip
            for name, sequence in zip(names, answer_sequences(sample)):
                shown.append(replace(sequence, location=f"{sample.location or ''} {name}".strip()))
        return shown

    def read_rows(self, target, config):
        return read_split(config, target.base_dir, "train", self.asked)

    def largest_step(self, recipe, data, packed: bool) -> tuple[int, int | None]:
        return worst_case_pairs(data.train, recipe.train.batch_size), None

    def reference(self, recipe) -> bool:
        return self.reference_model and recipe.preference.reference != "precompute"

    def keeps_reference_copy(self, recipe, method) -> bool:
        """Full and freeze tuning keep a frozen copy (an adapter is switched off instead;
        precompute scores the pairs first)."""
        return (
            self.reference_model
            and not method.saves_adapter
            and recipe.preference.reference == "auto"
        )

    def build_trainer(self, parts: TrainerParts):
        return build(self, parts)

    def trainer(self, settings) -> tuple[type, type, dict]:
        """(trainer, its config class, the recipe's settings in its terms)."""
        raise NotImplementedError


class DPO(PreferenceObjective):
    name = "dpo"

    def trainer(self, settings) -> tuple[type, type, dict]:
        from trl import DPOConfig

        return _dpo_trainer(), DPOConfig, {
            "beta": settings.beta,
            "loss_type": [settings.loss],
            "label_smoothing": settings.label_smoothing,
            "precompute_ref_log_probs": settings.reference == "precompute",
        }  # fmt: skip


class KTO(PreferenceObjective):
    name = "kto"
    registry_kinds = ("preference", "kto")
    data_kind = RATED
    samples_noun = "rated answers"
    regroups = False  # its KL term pairs answers within fixed batches

    def check(self, recipe) -> None:
        super().check(recipe)
        if recipe.train.batch_size < 2:
            raise TunelabError(
                "train.objective kto estimates its KL term from the other answers in a batch, "
                "so train.batch_size must be at least 2."
            )

    def trainer(self, settings) -> tuple[type, type, dict]:
        from trl import KTOConfig

        return _kto_trainer(), KTOConfig, {
            "beta": settings.beta,
            "desirable_weight": settings.desirable_weight,
            "undesirable_weight": settings.undesirable_weight,
            "precompute_ref_log_probs": settings.reference == "precompute",
            "train_sampling_strategy": "sequential",  # its KL pairs are fixed batches
        }  # fmt: skip

    def rows(self, samples: list[PreferenceSample]) -> list[dict]:
        return [{"prompt_ids": s.prompt_ids, "completion_ids": s.chosen_ids, "label": s.label}
                for s in samples]  # fmt: skip


class ORPO(PreferenceObjective):
    name = "orpo"
    reference_model = False

    def trainer(self, settings) -> tuple[type, type, dict]:
        from trl.experimental.orpo import ORPOConfig

        return _orpo_trainer(), ORPOConfig, {"beta": settings.beta}


class SimPO(PreferenceObjective):
    """SimPO as CPO's simpo loss without the behaviour-cloning term."""

    name = "simpo"
    reference_model = False

    def trainer(self, settings) -> tuple[type, type, dict]:
        from trl.experimental.cpo import CPOConfig

        return _cpo_trainer(), CPOConfig, {
            "beta": settings.beta,
            "loss_type": "simpo",
            "cpo_alpha": 0.0,  # SimPO: no behaviour-cloning term
            "simpo_gamma": settings.simpo_gamma,
        }  # fmt: skip


def worst_case_pairs(samples, batch_size: int) -> int:
    """Tokens of a preference run's largest step: its `batch_size` longest rows, each answer
    after the prompt, all padded to the longest (as TRL's trainers batch them)."""

    def longest(sample) -> int:
        return len(sample.prompt_ids) + max(len(a) for a in sample.answers)

    rows = sorted(samples, key=longest, reverse=True)[:batch_size]
    return sum(len(s.answers) for s in rows) * longest(rows[0]) if rows else 0


def dataset(objective: PreferenceObjective, samples: list[PreferenceSample]):
    """The samples as the `datasets.Dataset` TRL's trainers take, already as token ids."""
    from datasets import Dataset

    if objective.data_kind == RATED:
        return Dataset.from_list(objective.rows(samples))
    rows = [
        {"prompt_ids": s.prompt_ids, "chosen_ids": s.chosen_ids, "rejected_ids": s.rejected_ids,
         "length": len(s.prompt_ids) + max(len(a) for a in s.answers)}  # for grouped batches
        for s in samples
    ]  # fmt: skip
    if not objective.reference_model:  # their trainers read text columns before our ids
        for row in rows:
            row.update(prompt="", chosen="", rejected="")
    return Dataset.from_list(rows)


def build(objective: PreferenceObjective, parts: TrainerParts):
    """The TRL trainer for the objective, over already rendered samples; `parts.reference`
    is a frozen copy (or None: the adapter switched off, precomputed log-probs, or no
    reference at all)."""
    trainer_class, config_class, options = objective.trainer(parts.recipe.preference)
    args = config_class(
        # the weights' dtype decides, as in SFT runs (DeepSpeed's config says it too)
        **{"bf16": False, **parts.arguments, **options},
        gradient_checkpointing=False,  # set on the model by the runner when asked
        max_length=None,  # the samples are already cut to data.max_length
    )
    extra = {"ref_model": parts.reference} if objective.reference_model else {}
    data = parts.data
    trainer = trainer_class(
        model=parts.model,
        args=args,
        train_dataset=dataset(objective, data.train),
        eval_dataset=dataset(objective, data.eval) if data.eval else None,
        processing_class=parts.tokenizer,
        callbacks=parts.callbacks,
        **extra,
    )
    trainer.data_collator = LargestBatch(trainer.data_collator)
    if not objective.reference_model:
        trainer.add_callback(_count_tokens(trainer.data_collator))
    return trainer


def _count_tokens(collator: LargestBatch):
    """ORPO's and CPO's batches have no `input_ids`, by which the Trainer counts the tokens
    seen; this callback counts them from the collator instead (each answer with its prompt,
    no padding), on top of what a resumed run had seen."""
    from transformers import TrainerCallback

    class CountTokens(TrainerCallback):
        def __init__(self):
            self.start = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, collator.seen = state.num_input_tokens_seen, 0

        def on_step_end(self, args, state, control, **kwargs):
            state.num_input_tokens_seen = self.start + collator.seen

    return CountTokens()


class _NoModelCard:
    """The run folder records the run: TRL's model card is not written into checkpoints."""

    def create_model_card(self, *args, **kwargs) -> None:
        return None


def _dpo_trainer():
    """(Each trainer class is made on first use, so TRL loads only when it is needed.)"""
    from trl import DPOTrainer

    class RenderedDPOTrainer(_NoModelCard, DPOTrainer):
        """DPO on tunelab's token ids (`prompt_ids`, `chosen_ids`, `rejected_ids`)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return RenderedDPOTrainer


def _kto_trainer():
    from trl import KTOTrainer

    class RenderedKTOTrainer(_NoModelCard, KTOTrainer):
        """KTO on tunelab's token ids (`prompt_ids`, `completion_ids`, `label`). The KL term's
        mismatched answers are made as TRL makes them: each batch's answers turned by one."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset
            size = args.per_device_train_batch_size

            def turned(batch):
                answers = batch["completion_ids"]
                return {"KL_completion_ids": answers[-1:] + answers[:-1]}

            return dataset.map(turned, batched=True, batch_size=size)

    return RenderedKTOTrainer


def pair_features(feature: dict) -> dict:
    """One pair in the layout of TRL's ORPO and CPO trainers: each answer after the prompt,
    the prompt's labels masked."""
    prompt = feature["prompt_ids"]
    batch = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = feature[f"{side}_ids"]
        batch[f"{side}_input_ids"] = prompt + answer
        batch[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        batch[f"{side}_labels"] = [-100] * len(prompt) + answer
    return batch


def _orpo_trainer():
    from trl.experimental.orpo import ORPOTrainer

    class RenderedORPOTrainer(_NoModelCard, ORPOTrainer):
        """ORPO on tunelab's token ids."""

        def tokenize_row(self, feature, model=None):
            return pair_features(feature)

    return RenderedORPOTrainer


def _cpo_trainer():
    from trl.experimental.cpo import CPOTrainer

    class RenderedCPOTrainer(_NoModelCard, CPOTrainer):
        """CPO's trainer (SimPO loss) on tunelab's token ids."""

        def tokenize_row(self, feature, model=None):
            return pair_features(feature)

    return RenderedCPOTrainer
