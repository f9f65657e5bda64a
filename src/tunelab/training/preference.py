"""Preference objectives on TRL's trainers: DPO, SimPO (CPO's simpo loss), ORPO and KTO.

tunelab renders the pairs itself (the model's chat template, the stop token, the cut, as
`tunelab.data.preference_pipeline` does), so each trainer here takes those token ids as they
are instead of tokenizing text again; TRL computes the losses and their metrics. Its own
tokenization would differ where a template renders a prompt alone otherwise than followed by an
answer, or where TRL appends an eos token the template does not write.
"""

from __future__ import annotations

import copy

from transformers import TrainerCallback

from tunelab.data.preference import PreferenceSample
from tunelab.errors import TunelabError
from tunelab.training.collator import LargestBatch

REFERENCE_FREE = ("orpo", "simpo")  # no reference model at all
PAIRED = ("dpo", "orpo", "simpo")
OBJECTIVES = (*PAIRED, "kto")


def check_objective(recipe) -> None:
    """Methods a preference objective can train: weights or a LoRA-family adapter."""
    objective, method = recipe.train.objective, recipe.method.type
    if objective not in OBJECTIVES:
        return
    if method in ("ptuning", "prefix", "prompt"):
        raise TunelabError(
            f"train.objective {objective} needs weights or a LoRA adapter to train, and "
            f"method.type {method} learns virtual tokens, which TRL's preference trainers do "
            "not handle; use method.type lora (or dora, qlora, freeze, full)."
        )
    if objective == "kto" and recipe.train.batch_size < 2:
        raise TunelabError(
            "train.objective kto estimates its KL term from the other answers in a batch, so "
            "train.batch_size must be at least 2."
        )


def needs_reference_copy(recipe, method) -> bool:
    """Whether the run keeps a frozen copy of the model as reference: full and freeze tuning
    with dpo or kto (an adapter is switched off instead; precompute scores pairs first)."""
    return (
        recipe.train.objective in ("dpo", "kto")
        and not method.saves_adapter
        and recipe.preference.reference == "auto"
    )


def reference_copy(model):
    """A frozen copy of the model before training, for the reference log-probabilities."""
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


def dataset(samples: list[PreferenceSample], objective: str):
    """The samples as the `datasets.Dataset` TRL's trainers take, already as token ids."""
    from datasets import Dataset

    if objective == "kto":
        rows = [
            {"prompt_ids": s.prompt_ids, "completion_ids": s.chosen_ids, "label": s.label}
            for s in samples
        ]
        return Dataset.from_list(rows)
    rows = [
        {"prompt_ids": s.prompt_ids, "chosen_ids": s.chosen_ids, "rejected_ids": s.rejected_ids,
         "length": len(s.prompt_ids) + max(len(a) for a in s.answers)}  # for grouped batches
        for s in samples
    ]  # fmt: skip
    if objective in REFERENCE_FREE:  # their trainers read text columns before our ids
        for row in rows:
            row.update(prompt="", chosen="", rejected="")
    return Dataset.from_list(rows)


def build(recipe, arguments: dict, model, reference, tokenizer, data, callbacks):
    """The TRL trainer for the recipe's objective, over already rendered samples.

    `arguments` are the TrainingArguments every run shares; `reference` is a frozen copy (or
    None: the adapter switched off, precomputed log-probs, or no reference at all).
    """
    objective, settings = recipe.train.objective, recipe.preference
    trainer_class, config_class, options = _objective(objective, settings)
    args = config_class(
        # the weights' dtype decides, as in SFT runs (DeepSpeed's config says it too)
        **{"bf16": False, **arguments, **options},
        gradient_checkpointing=False,  # set on the model by the runner when asked
        max_length=None,  # the samples are already cut to data.max_length
    )
    extra = {"ref_model": reference} if objective in ("dpo", "kto") else {}
    train = dataset(data.train, objective)
    held_out = dataset(data.eval, objective) if data.eval else None
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )
    trainer.data_collator = LargestBatch(trainer.data_collator)
    if objective in REFERENCE_FREE:
        trainer.add_callback(CountTokens(trainer.data_collator))
    return trainer


class CountTokens(TrainerCallback):
    """ORPO's and CPO's batches have no `input_ids`, by which the Trainer counts the tokens
    seen; this counts them from the collator instead (each answer with its prompt, no
    padding), on top of what a resumed run had seen."""

    def __init__(self, collator: LargestBatch):
        self.collator = collator
        self.start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.collator.seen = state.num_input_tokens_seen, 0

    def on_step_end(self, args, state, control, **kwargs):
        state.num_input_tokens_seen = self.start + self.collator.seen


def _objective(objective: str, settings) -> tuple[type, type, dict]:
    """(trainer, its config class, the recipe's settings in its terms)."""
    if objective == "dpo":
        from trl import DPOConfig

        return _dpo_trainer(), DPOConfig, {
            "beta": settings.beta,
            "loss_type": [settings.loss],
            "label_smoothing": settings.label_smoothing,
            "precompute_ref_log_probs": settings.reference == "precompute",
        }  # fmt: skip
    if objective == "kto":
        from trl import KTOConfig

        return _kto_trainer(), KTOConfig, {
            "beta": settings.beta,
            "desirable_weight": settings.desirable_weight,
            "undesirable_weight": settings.undesirable_weight,
            "precompute_ref_log_probs": settings.reference == "precompute",
            "train_sampling_strategy": "sequential",  # its KL pairs are fixed batches
        }  # fmt: skip
    if objective == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return _orpo_trainer(), ORPOConfig, {"beta": settings.beta}
    from trl.experimental.cpo import CPOConfig

    return _cpo_trainer(), CPOConfig, {
        "beta": settings.beta,
        "loss_type": "simpo",
        "cpo_alpha": 0.0,  # SimPO: no behaviour-cloning term
        "simpo_gamma": settings.simpo_gamma,
    }  # fmt: skip


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
