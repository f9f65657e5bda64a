"""Turn a recipe's data sources into validated conversations, counting every bad row."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tunelab.data.conversation import Conversation, RowError
from tunelab.data.formats import FORMATS_BY_NAME, Columns, Format, detect_format
from tunelab.data.readers import read_records
from tunelab.data.registry import lookup
from tunelab.data.transforms import (
    add_default_system,
    dedupe,
    drop_long_answers,
    drop_reasoning,
    replace_placeholders,
)
from tunelab.data.validate import check_conversation
from tunelab.errors import TunelabError
from tunelab.recipe import DataConfig, DataSource

BUILTIN_DATA = {"identity": "identity.json", "general": "general.json"}


@dataclass
class ResolvedSource:
    """A data source pinned to a file, a format and a column map."""

    name: str
    file: Path
    format: str  # a name in FORMATS_BY_NAME, or "auto"
    columns: dict = field(default_factory=dict)
    origin: str = "file"  # file, registry or builtin
    limit: int | None = None
    kind: str | None = None  # a registry entry's kind (sft, preference, kto); None: a file


@dataclass
class DataReport:
    """What loading did: counts per source, transforms applied, bad rows."""

    sources: list[dict] = field(default_factory=list)
    bad_rows: list[str] = field(default_factory=list)
    placeholders_replaced: int = 0
    system_added: int = 0
    long_answers_dropped: list[str] = field(default_factory=list)
    duplicates_dropped: list[str] = field(default_factory=list)
    truncated: int = 0
    turn_samples: int = 0  # extra samples: conversations trained one turn per sample
    reasoning_turns: int = 0  # assistant turns that carry reasoning (after `data.reasoning`)
    reasoning_dropped: int = 0  # assistant turns whose reasoning `data.reasoning` dropped

    @property
    def kept(self) -> int:
        return (
            sum(s["kept"] for s in self.sources)
            - len(self.long_answers_dropped)
            - len(self.duplicates_dropped)
        )

    def as_dict(self) -> dict:
        return {
            "sources": self.sources,
            "kept": self.kept,
            "skipped": len(self.bad_rows),
            "skipped_rows": self.bad_rows,
            "placeholders_replaced": self.placeholders_replaced,
            "system_added": self.system_added,
            "long_answers_dropped": len(self.long_answers_dropped),
            "long_answers_dropped_rows": self.long_answers_dropped,
            "duplicates_dropped": len(self.duplicates_dropped),
            "duplicates_dropped_rows": self.duplicates_dropped,
            "truncated": self.truncated,
            "extra_turn_samples": self.turn_samples,
            "reasoning_turns": self.reasoning_turns,
            "reasoning_dropped": self.reasoning_dropped,
        }

    @classmethod
    def from_dict(cls, data: dict) -> DataReport:
        return cls(
            sources=data["sources"],
            bad_rows=data["skipped_rows"],
            placeholders_replaced=data["placeholders_replaced"],
            system_added=data["system_added"],
            long_answers_dropped=data["long_answers_dropped_rows"],
            duplicates_dropped=data["duplicates_dropped_rows"],
            truncated=data["truncated"],
            turn_samples=data.get("extra_turn_samples", 0),
            reasoning_turns=data.get("reasoning_turns", 0),
            reasoning_dropped=data.get("reasoning_dropped", 0),
        )


def builtin_data_path(name: str) -> Path:
    """The packaged file of a built-in data set."""
    return Path(str(resources.files("tunelab.data.builtin").joinpath(BUILTIN_DATA[name])))


def resolve_source(
    source: DataSource,
    config: DataConfig,
    base_dir: Path | None,
    kinds: tuple[str, ...] = ("sft",),
) -> ResolvedSource:
    """Find what a data entry names: a file, a registry entry, or a built-in set (in that order).

    A registry entry must be of one of `kinds` (sft; preference and kto for those objectives).
    """
    resolved = _resolve(source, config, base_dir, kinds)
    resolved.limit = source.limit
    return resolved


def _resolve(source: DataSource, config: DataConfig, base_dir, kinds) -> ResolvedSource:
    for candidate in _candidate_paths(source.path, base_dir):
        if candidate.is_file():
            return ResolvedSource(source.path, candidate, source.format, dict(source.columns))
    if config.registry:
        registry = find_path(config.registry, base_dir)
        entry = lookup(registry, source.path)
        if entry.kind not in kinds:
            raise TunelabError(_wrong_kind(source.path, registry, entry.kind, kinds))
        return ResolvedSource(
            entry.name, entry.file, entry.format_name, entry.columns, "registry", kind=entry.kind
        )
    if source.path in BUILTIN_DATA:
        return ResolvedSource(
            source.path, builtin_data_path(source.path), source.format, dict(source.columns)
        )
    tried = " or ".join(str(p) for p in _candidate_paths(source.path, base_dir))
    close = difflib.get_close_matches(source.path, list(BUILTIN_DATA), n=1)
    hint = f" Did you mean the built-in `{close[0]}`?" if close else ""
    raise TunelabError(
        f"data set `{source.path}` is not a file ({tried}), not a built-in name "
        f"({', '.join(BUILTIN_DATA)}), and no data.registry is set.{hint}"
    )


def _wrong_kind(name: str, registry: Path, kind: str, kinds: tuple[str, ...]) -> str:
    if kinds == ("sft",):
        return (
            f"data set `{name}` in {registry} is {kind} data, not supervised fine-tuning "
            "conversations; pick an SFT entry for data.train, or train it with a preference "
            "objective (train.objective: dpo, orpo, simpo or kto)."
        )
    return (
        f"data set `{name}` in {registry} is {kind} data; train.objective "
        f"{'kto takes rated answers or pairs' if 'kto' in kinds else 'dpo, orpo and simpo need preference pairs'}, "
        "so pick such an entry (ranking: true, or a kto_tag column)."
    )


def _candidate_paths(text: str, base_dir: Path | None) -> list[Path]:
    path = Path(text).expanduser()
    if path.is_absolute() or base_dir is None:
        return [path]
    return [path, base_dir / path]


def find_path(text: str, base_dir: Path | None) -> Path:
    """The path as given if it exists, else beside the recipe (base_dir)."""
    for candidate in _candidate_paths(text, base_dir):
        if candidate.exists():
            return candidate
    return Path(text)


def read_source(resolved: ResolvedSource, report: DataReport) -> list[Conversation]:
    """Convert every record of one source; bad rows go to the report, not to the floor."""
    conversations, bad = [], 0
    fmt: Format | None = FORMATS_BY_NAME.get(resolved.format)
    columns: Columns | None = None
    for number, (location, record) in enumerate(read_records(resolved.file)):
        if resolved.limit is not None and number >= resolved.limit:
            break
        try:
            if isinstance(record, RowError):
                raise record
            if fmt is None:
                fmt = detect_format(record)
                if fmt is None:
                    keys = (
                        ", ".join(sorted(record))
                        if isinstance(record, dict)
                        else type(record).__name__
                    )
                    raise TunelabError(
                        f"{location}: cannot tell the data format from the record's keys ({keys}); "
                        "set format (alpaca, sharegpt, messages, xtuner, qa, prompt_completion) "
                        "or columns for this data set."
                    )
            if columns is None:
                _refuse_rated_rows(record, location)
                columns = Columns.for_format(fmt.name, resolved.columns)
            if not isinstance(record, dict):
                raise RowError(
                    location, None, f"must be a JSON object, found {type(record).__name__}"
                )
            conversations.append(fmt.convert(record, location, columns))
        except RowError as exc:
            report.bad_rows.append(str(exc))
            bad += 1
    report.sources.append(
        {
            "name": resolved.name,
            "file": str(resolved.file),
            "format": fmt.name if fmt else resolved.format,
            "evidence": _evidence(resolved, fmt),
            "read": len(conversations) + bad,
            "kept": len(conversations),
            "bad": bad,
        }
    )
    return conversations


def _refuse_rated_rows(record: object, location: str) -> None:
    """KTO rows (an answer rated true or false) are not conversations to imitate: supervised
    fine-tuning would train the answers rated false as well."""
    if isinstance(record, dict) and (isinstance(record.get("label"), bool) or "kto_tag" in record):
        raise TunelabError(
            f"{location}: the rows are rated answers (a `label` true or false, KTO data); "
            "supervised fine-tuning would train the answers rated false too. Train them with "
            "train.objective: kto, or give conversations to imitate."
        )


def _evidence(resolved: ResolvedSource, fmt: Format | None) -> str:
    if fmt is None:
        return "no readable records"
    if resolved.origin == "registry":
        return "the registry entry's formatting"
    if resolved.format != "auto":
        return "set in the recipe"
    return f"detected: the first record has {fmt.evidence}"


def load_conversations(
    config: DataConfig,
    base_dir: Path | None = None,
    split: str = "train",
    allow_empty: bool = False,
    thinking: bool | None = None,
) -> tuple[list[Conversation], DataReport]:
    """All conversations of a split, transformed and checked, with the report of what happened.

    `thinking` is the template's `enable_thinking` argument, if set: with `data.reasoning: auto`,
    False drops the reasoning, as a non-thinking prompt never asks for it."""
    report = DataReport()
    conversations: list[Conversation] = []
    for source in config.sources(split):
        resolved = resolve_source(source, config, base_dir)
        start = len(report.bad_rows)
        items = read_source(resolved, report)
        report.placeholders_replaced += replace_placeholders(items, config.replace)
        report.system_added += add_default_system(items, config.system)
        good = []
        for conversation in items:
            try:
                check_conversation(conversation)
                good.append(conversation)
            except RowError as exc:
                report.bad_rows.append(str(exc))
        report.sources[-1]["kept"] = len(good)
        report.sources[-1]["bad"] = len(report.bad_rows) - start
        conversations += good
    conversations, report.long_answers_dropped = drop_long_answers(
        conversations, config.max_answer_chars
    )
    if config.dedupe:
        conversations, report.duplicates_dropped = dedupe(conversations)
    strip = config.reasoning == "strip" or (config.reasoning == "auto" and thinking is False)
    report.reasoning_dropped = drop_reasoning(conversations) if strip else 0
    report.reasoning_turns = sum(
        1 for c in conversations for m in c.messages if m.role == "assistant" and m.has_reasoning
    )
    raise_for_bad_rows(report, config.on_bad_row, split)
    if not conversations and not allow_empty:
        raise TunelabError(f"the {split} data has no usable conversations.")
    return conversations, report


def raise_for_bad_rows(report: DataReport, on_bad_row: str, split: str = "train") -> None:
    """With on_bad_row: error, stop with every bad row listed (the first 50 on screen)."""
    if not report.bad_rows or on_bad_row != "error":
        return
    shown = "\n  ".join(report.bad_rows[:50])
    more = (
        f"\n  ... and {len(report.bad_rows) - 50} more; `tunelab data check` lists them all"
        if len(report.bad_rows) > 50
        else ""
    )
    raise TunelabError(
        f"{len(report.bad_rows)} bad row(s) in the {split} data; fix them or set "
        f"data.on_bad_row: skip to train without them:\n  {shown}{more}"
    )
