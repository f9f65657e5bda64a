"""What every training objective provides, and how batches are built. An objective (sft, each
preference loss, grpo) owns its data preparation, its batching, its trainer, what the
estimate counts for it (largest step, reference, generation) and its summary fields; the
rest of tunelab asks it and never branches on its name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Batching:
    """How a run's batches are built, and why."""

    packed: bool
    group_by_length: bool
    reason: str

    def describe(self) -> str:
        shape = "packed (padding-free)" if self.packed else "padded"
        grouped = ", grouped by length" if self.group_by_length else ""
        return f"batches: {shape}{grouped}{f' ({self.reason})' if self.reason else ''}"


@dataclass(frozen=True)
class TrainerParts:
    """What an objective's trainer is built from: the TrainingArguments every run shares and
    the run's pieces (`reference`: a frozen copy of the model, or None; `liger`: liger's
    fused loss is on)."""

    recipe: object
    run: object
    arguments: dict
    model: object
    tokenizer: object
    data: object
    callbacks: list
    reference: object = None
    batching: Batching | None = None
    liger: bool = False


class Objective:
    """A training objective. Subclasses set the class attributes and override what differs."""

    name: str = ""
    registry_kinds: tuple[str, ...] = ("sft",)  # dataset_info.json entry kinds it reads
    fused_loss: bool = False  # liger's fused cross-entropy applies to its loss
    samples_noun: str = "samples"  # what its data rows are, in sentences

    def check(self, recipe) -> None:
        """Refuse, in one sentence, what this objective cannot train (before anything loads)."""

    def batching(self, packing: bool, group_by_length, method_family: str, fit) -> Batching:
        """How its batches are built (`fit`: what the model's layers allow packed rows)."""
        raise NotImplementedError

    def check_batch_tokens(self, recipe) -> None:
        """Refuse `train.batch_tokens` where its trainer batches the data itself."""
        raise _batch_tokens_refused(self.name)

    def prepare(self, recipe, tokenizer, template: str, context: int | None):
        """The recipe's data as its trainer takes it (`context`: the model's positions)."""
        raise NotImplementedError

    def lengths(self, target, tokenizer, template: str) -> tuple[dict, list]:
        """(length report, the sequences its histogram shows) for `tunelab data stats`."""
        raise NotImplementedError

    def preview(self, target, tokenizer, template: str, n: int) -> list:
        """The first `n` sequences as the trainer reads them, trained tokens marked."""
        raise NotImplementedError

    def read_rows(self, target, config) -> tuple[list, object] | None:
        """(rows, report) for `tunelab data check`, or None where conversations are read."""
        return None

    def largest_step(self, recipe, data, packed: bool) -> tuple[int, int | None]:
        """(tokens, positions with logits: None for all) of the largest step the data makes."""
        raise NotImplementedError

    def reference(self, recipe) -> bool:
        """Whether the run computes a reference model's log-probabilities while it trains."""
        return False

    def keeps_reference_copy(self, recipe, method) -> bool:
        """Whether the run holds a frozen copy of the weights as that reference."""
        return False

    def generation_bytes(self, recipe, prof, tokens_per_step: int) -> int:
        """Memory its sampling adds to the estimate (none where it samples nothing)."""
        return 0

    def sampling(self, recipe) -> tuple[int, int]:
        """(rows each sample becomes, tokens each adds) when counting steps and tokens."""
        return 1, 0

    def build_trainer(self, parts: TrainerParts):
        """The trainer that runs this objective."""
        raise NotImplementedError

    def summary(self, run) -> dict:
        """What it adds to summary.json once the run has trained."""
        return {}


def _batch_tokens_refused(name: str) -> Exception:
    from tunelab.errors import TunelabError

    return TunelabError(
        f"train.batch_tokens applies to sft runs, not train.objective {name} (its trainer "
        "batches pairs or prompts itself); remove batch_tokens and set train.batch_size."
    )
