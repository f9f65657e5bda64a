"""From a recipe's data section to preference samples: read pairs (or rated answers), check
them row by row, render them with the model's chat template, cut them, split them.

The same data settings as SFT apply where they mean something for a pair: registry entries,
limits, `system`, `replace`, `reasoning`, `max_length` (auto or fixed), `val_ratio`, `eval`
and `on_bad_row`. Rendering a few thousand pairs takes seconds, so nothing is cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.conversation import Conversation, RowError
from tunelab.data.load import DataReport, raise_for_bad_rows, resolve_source
from tunelab.data.pipeline import cut_samples
from tunelab.data.preference import (
    KTO,
    PAIR,
    PreferenceRow,
    PreferenceSample,
    detect_kind,
    read_preferences,
    render_preferences,
)
from tunelab.data.readers import read_records
from tunelab.data.render import IGNORE_INDEX, ConversationRenderer, RenderedSample, truncate
from tunelab.data.stats import suggest_max_length
from tunelab.data.transforms import (
    add_default_system,
    drop_reasoning,
    hold_out,
    replace_placeholders,
)
from tunelab.errors import TunelabError
from tunelab.recipe import DataConfig, DataSource


@dataclass(frozen=True)
class Asked:
    """What a preference objective reads: its name (for messages) and the kind of its rows,
    chosen/rejected pairs (PAIR) or rated answers (KTO, which also takes a pair as two rated
    answers)."""

    objective: str
    kind: str = PAIR

    @property
    def noun(self) -> str:
        return "rated answers" if self.kind == KTO else "preference pairs"

    @property
    def registry_kinds(self) -> tuple[str, ...]:
        """The dataset_info.json entry kinds it reads."""
        return ("preference", "kto") if self.kind == KTO else ("preference",)


@dataclass
class PreparedPreferences:
    """Training-ready preference samples and everything said about them."""

    train: list[PreferenceSample]
    eval: list[PreferenceSample] | None
    report: DataReport
    max_length: int
    max_length_note: str
    kind: str  # preference (pairs) or kto (rated answers)
    cache_notes: list[str] = field(default_factory=list)
    stop_token_trained: int = 0  # samples whose (chosen) answer ends with a special token


def prepare_preferences(
    config: DataConfig,
    base_dir: Path | None,
    tokenizer,
    template: str,
    seed: int,
    asked: Asked,
    context: int | None = None,
    template_args: dict | None = None,
) -> PreparedPreferences:
    """Everything a preference trainer needs from the data section (`asked`: what the
    objective reads)."""
    renderer = ConversationRenderer(tokenizer, template, template_args=template_args)
    thinking = (template_args or {}).get("enable_thinking")
    train, report = _rendered_split(config, base_dir, "train", renderer, asked, thinking)
    max_length, note = _max_length(config, train, context)
    train = _cut_all(train, max_length, report, config.on_bad_row)
    notes = [f"train data: {len(train)} {asked.noun} rendered with the chat template"]
    evaluation = None
    if config.eval:
        held_out, held_report = _rendered_split(config, base_dir, "eval", renderer, asked, thinking)
        evaluation = _cut_all(held_out, max_length, held_report, config.on_bad_row)
    elif config.val_ratio:
        train, evaluation, split_note = hold_out(train, config.val_ratio, seed, asked.noun)
        notes.append(split_note)
    report.truncated = sum(s.truncated for s in train)
    prepared = PreparedPreferences(train, evaluation, report, max_length, note, asked.kind, notes)
    stops = set(tokenizer.all_special_ids)
    prepared.stop_token_trained = sum(bool(s.chosen_ids) and s.chosen_ids[-1] in stops
                                      for s in train)  # fmt: skip
    return prepared


def _rendered_split(
    config: DataConfig, base_dir, split: str, renderer, asked: Asked, thinking
) -> tuple[list[PreferenceSample], DataReport]:
    """Every row of a split read, transformed and rendered; bad rows in the report."""
    rows, report = read_split(config, base_dir, split, asked)
    report.placeholders_replaced = _transform(rows, config, thinking, report)
    rows = _short_answers(rows, config.max_answer_chars, report)
    samples = []
    for sample in render_preferences(renderer, rows):
        if isinstance(sample, RowError):
            report.bad_rows.append(str(sample))
        else:
            samples.append(sample)
    raise_for_bad_rows(report, config.on_bad_row, split)
    if not samples:
        raise TunelabError(f"the {split} data has no usable {asked.noun}.")
    return samples, report


def read_split(
    config: DataConfig, base_dir, split: str, asked: Asked
) -> tuple[list[PreferenceRow], DataReport]:
    """Every row of a split read and checked (KTO: pairs become two rated answers), with the
    report of each source and every bad row; nothing rendered yet."""
    report = DataReport()
    rows: list[PreferenceRow] = []
    for source in config.sources(split):
        rows += _read_source(source, config, base_dir, asked, report)
    if asked.kind == KTO:
        rows = [rated for row in rows for rated in unpaired(row)]
    return rows, report


def _read_source(
    source: DataSource, config: DataConfig, base_dir, asked: Asked, report: DataReport
) -> list[PreferenceRow]:
    resolved = resolve_source(source, config, base_dir, asked.registry_kinds)
    kind = resolved.kind or _file_kind(resolved.file, asked)
    rows, bad = read_preferences(resolved.file, kind, resolved.columns, resolved.limit)
    report.bad_rows += bad
    report.sources.append(
        {
            "name": resolved.name,
            "file": str(resolved.file),
            "format": kind,
            "evidence": "the registry entry" if resolved.kind else "detected from the first record",
            "read": len(rows) + len(bad),
            "kept": len(rows),
            "bad": len(bad),
        }
    )
    return rows


def _file_kind(file: Path, asked: Asked, look: int = 100) -> str:
    """Pairs or rated answers, from the keys of the first records that tell (a bad first row
    is reported as such later); refused if the objective cannot train on it."""
    first = None
    for number, (location, record) in enumerate(read_records(file)):
        kind = None if isinstance(record, RowError) else detect_kind(record)
        first = first or (location, record)
        if kind is not None or number + 1 >= look:
            break
    if first is None:
        raise TunelabError(f"{file} holds no records.")
    if kind is None:
        location, record = first
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise TunelabError(
            f"{location}: train.objective {asked.objective} needs preference data, but this record "
            f"has neither `chosen` and `rejected` answers nor a true/false `label` (its keys: "
            f"{keys}); check data.train or the objective."
        )
    if kind == KTO and asked.kind == PAIR:
        raise TunelabError(
            f"{file} holds answers rated true/false (KTO data), but train.objective "
            f"{asked.objective} needs chosen/rejected pairs; use train.objective: kto."
        )
    return kind


def unpaired(row: PreferenceRow) -> list[PreferenceRow]:
    """A pair as two rated answers (the chosen one desirable), as KTO takes it."""
    if row.rejected is None:
        return [row]
    return [
        PreferenceRow(row.prompt, row.chosen, None, True),
        PreferenceRow(row.prompt, row.rejected, None, False),
    ]


def _transform(rows: list[PreferenceRow], config: DataConfig, thinking, report) -> int:
    """`data.system`, `data.replace` and `data.reasoning` on every prompt and answer."""
    prompts = list({id(row.prompt): row.prompt for row in rows}.values())  # KTO rows share one
    report.system_added = add_default_system(prompts, config.system)
    answers = [Conversation([a for a in (row.chosen, row.rejected) if a]) for row in rows]
    replaced = replace_placeholders(prompts, config.replace)
    replaced += replace_placeholders(answers, config.replace)
    strip = config.reasoning == "strip" or (config.reasoning == "auto" and thinking is False)
    report.reasoning_dropped = drop_reasoning(answers) if strip else 0
    report.reasoning_turns = sum(m.has_reasoning for a in answers for m in a.messages)
    return replaced


def _short_answers(rows: list[PreferenceRow], limit: int | None, report) -> list[PreferenceRow]:
    """`data.max_answer_chars`: rows with an answer longer than that are dropped, and listed."""
    if not limit:
        return rows
    kept = []
    for row in rows:
        longest = max(len(a.content) for a in (row.chosen, row.rejected) if a is not None)
        if longest > limit:
            report.long_answers_dropped.append(f"{row.location}: answer of {longest} characters")
        else:
            kept.append(row)
    return kept


def answer_sequences(sample: PreferenceSample) -> list[RenderedSample]:
    """Prompt + each answer, as SFT samples (for the cutoff rule)."""
    return [
        RenderedSample(sample.prompt_ids + answer, [IGNORE_INDEX] * len(sample.prompt_ids) + answer)
        for answer in (sample.chosen_ids, sample.rejected_ids)
        if answer is not None
    ]


def _max_length(config: DataConfig, samples, context: int | None) -> tuple[int, str]:
    if config.max_length != "auto":
        return config.max_length, f"max_length {config.max_length} (from the recipe)"
    sequences = [seq for sample in samples for seq in answer_sequences(sample)]
    length = suggest_max_length(sequences)
    if context and length > context:
        return context, f"max_length auto: {context} (the model's context)"
    return length, (
        f"max_length auto: {length} (smallest multiple of 64 losing under 1% of the answers' "
        "tokens)"
    )


def cut_pair(sample: PreferenceSample, limit: int) -> PreferenceSample:
    """Prompt + answer within `limit` tokens for each answer, the prompt the same for both: the
    cut SFT makes (answer end first, else the middle of a long prompt), sized by the longer
    answer."""
    answers = [a for a in (sample.chosen_ids, sample.rejected_ids) if a is not None]
    longest = max(answers, key=len)
    if len(sample.prompt_ids) + len(longest) <= limit:
        return sample
    labels = [IGNORE_INDEX] * len(sample.prompt_ids) + longest
    short = truncate(sample.prompt_ids + longest, labels, limit)
    first = next((i for i, label in enumerate(short.labels) if label != IGNORE_INDEX), limit)
    prompt, room = short.input_ids[:first], limit - first
    cut = [a[:room] if a is not None else None for a in (sample.chosen_ids, sample.rejected_ids)]
    return PreferenceSample(prompt, cut[0], cut[1], sample.label, sample.location, truncated=True)


def _cut_all(samples, limit: int, report: DataReport, on_bad_row: str) -> list:
    return cut_samples(
        samples,
        limit,
        report,
        on_bad_row,
        lambda sample: cut_pair(sample, limit),
        lambda short: all(short.answers),
    )
