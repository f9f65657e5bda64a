"""From a recipe's data section to prompts for a grpo run: each record read and checked,
its prompt rendered with the model's chat template ready for the answer, and its columns kept
for the rewards.

Two layouts are read: TRL's (a `prompt`, as text or messages, beside any other columns) and
every SFT layout tunelab reads (GSM8K's question/answer, alpaca, sharegpt, messages, registry
entries), whose final assistant turn becomes the `answer` column. The record's other plain
fields (text, numbers, booleans) become columns too, under their own names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.conversation import Conversation, Location, Message, RowError
from tunelab.data.load import DataReport, raise_for_bad_rows, read_source, resolve_source
from tunelab.data.readers import read_records
from tunelab.data.render import ConversationRenderer, message_from_dict
from tunelab.data.transforms import add_default_system, hold_out, replace_placeholders
from tunelab.errors import TunelabError
from tunelab.recipe import DataConfig, DataSource

PLAIN = (str, int, float, bool)


@dataclass
class PromptSample:
    """One prompt as the trainer samples answers to it, with the columns rewards read."""

    prompt_ids: list[int]
    prompt: str  # the rendered prompt text, as reward functions get it
    columns: dict
    location: str = ""
    truncated: bool = False  # (prompts are never cut; over-long ones are left out)
    trained_tokens: int = 0  # the answers are sampled while training

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids


@dataclass
class PreparedPrompts:
    """Training-ready prompts and everything said about them."""

    train: list[PromptSample]
    eval: list[PromptSample] | None
    report: DataReport
    max_length: int  # the longest prompt kept
    max_length_note: str
    kind: str = "prompts"
    cache_notes: list[str] = field(default_factory=list)
    stop_token_trained: int = 0

    @property
    def columns(self) -> set[str]:
        """The columns every training prompt has (what a reward may ask for)."""
        sets = [set(s.columns) for s in self.train]
        return set.intersection(*sets) if sets else set()


def prepare_prompts(
    config: DataConfig,
    base_dir: Path | None,
    tokenizer,
    template: str,
    seed: int,
    room: int | None = None,
    template_args: dict | None = None,
    answer_tokens: int = 0,
) -> PreparedPrompts:
    """Every prompt of the data section rendered; `room` is how long a prompt may be (the
    model's context less the longest answer), a fixed `data.max_length` bounds it too.
    `max_length` is the longest sequence a step can hold: the longest prompt and an answer of
    `answer_tokens`."""
    renderer = ConversationRenderer(tokenizer, template, template_args=template_args)
    limit = config.max_length if isinstance(config.max_length, int) else None
    limit = min(x for x in (limit, room) if x) if (limit or room) else None
    train, report, notes = _split(config, base_dir, "train", renderer, limit)
    evaluation = None
    if config.eval:
        evaluation, _, more = _split(config, base_dir, "eval", renderer, limit)
        notes += more
    elif config.val_ratio:
        train, evaluation, split_note = hold_out(train, config.val_ratio, seed, "prompts")
        notes.append(split_note)
    longest = max(len(s.prompt_ids) for s in train)
    note = f"prompts: up to {longest} tokens" + (f" (limit {limit})" if limit else "")
    if answer_tokens:
        note += f", answers up to {answer_tokens}"
    notes.insert(0, f"train data: {len(train)} prompts rendered with the chat template")
    length = longest + answer_tokens
    return PreparedPrompts(train, evaluation, report, length, note, cache_notes=notes)


def _split(config: DataConfig, base_dir, split: str, renderer, limit: int | None):
    """(samples, report, notes) of one split: read, checked, rendered, over-long ones left out."""
    report, samples = DataReport(), []
    for source in config.sources(split):
        for conversation, columns in read_prompts(source, config, base_dir, report):
            try:
                samples.append(_rendered(renderer, conversation, columns))
            except RowError as exc:
                report.bad_rows.append(str(exc))
    raise_for_bad_rows(report, config.on_bad_row, split)
    notes = []
    if limit:
        kept = [s for s in samples if len(s.prompt_ids) <= limit]
        if len(kept) < len(samples):
            notes.append(
                f"{len(samples) - len(kept)} {split} prompt(s) longer than {limit} tokens left "
                f"out (the first: {next(s for s in samples if s not in kept).location})"
            )
        samples = kept
    if not samples:
        raise TunelabError(f"the {split} data has no usable prompts.")
    return samples, report, notes


def _rendered(renderer, conversation: Conversation, columns: dict) -> PromptSample:
    """The prompt as served: its messages and tool schemas, ready for the next answer."""
    location = conversation.location
    tools = json.loads(conversation.tools) if conversation.tools else None
    try:
        ids = renderer.prompt_ids([m.as_dict() for m in conversation.messages], tools)
    except Exception as exc:  # the template itself refuses the conversation
        raise RowError(location, None, f"the chat template refuses it: {exc}") from None
    text = renderer.tokenizer.decode(ids, skip_special_tokens=False)
    return PromptSample(ids, text, columns, str(location or ""))


def read_prompts(source: DataSource, config: DataConfig, base_dir, report: DataReport):
    """(prompt conversation, columns) of each good record of one source."""
    resolved = resolve_source(source, config, base_dir)
    first = next((r for _, r in read_records(resolved.file) if isinstance(r, dict)), None)
    if first is not None and "prompt" in first and "completion" not in first:
        rows = list(_trl_layout(resolved, report))
    else:
        rows = list(_conversation_layout(resolved, report))
    conversations = [conversation for conversation, _ in rows]
    report.placeholders_replaced += replace_placeholders(conversations, config.replace)
    report.system_added += add_default_system(conversations, config.system)
    return rows


def _trl_layout(resolved, report: DataReport):
    """Records with a `prompt` (text or a list of messages) and any other columns."""
    kept = bad = 0
    for number, (location, record) in enumerate(read_records(resolved.file)):
        if resolved.limit is not None and number >= resolved.limit:
            break
        try:
            messages = _prompt_messages(record, location)
        except RowError as exc:
            report.bad_rows.append(str(exc))
            bad += 1
            continue
        kept += 1
        tools = record.get("tools")
        tools = json.dumps(tools) if isinstance(tools, list) else tools
        yield Conversation(messages, location, tools), _plain_columns(record, skip=("prompt",))
    _source_line(report, resolved, "prompt", "detected: the first record has `prompt`", kept, bad)


def _prompt_messages(record, location: Location) -> list[Message]:
    if isinstance(record, RowError):
        raise record
    if not isinstance(record, dict):
        raise RowError(location, None, f"must be a JSON object, found {type(record).__name__}")
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return [Message("user", prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        try:
            messages = [message_from_dict(m) for m in prompt]
        except (KeyError, TypeError, ValueError) as exc:
            raise RowError(location, "prompt", f"a message is malformed ({exc})") from None
        if messages[-1].role not in ("user", "tool"):
            raise RowError(
                location,
                "prompt",
                "must end with a user turn (or a tool result), the one to answer",
            )
        return messages
    raise RowError(location, "prompt", "must be non-empty text or a list of messages")


def _conversation_layout(resolved, report: DataReport):
    """Records in an SFT layout: the prompt is the conversation before its last answer, which
    becomes the `answer` column."""
    records = {
        str(location): record
        for number, (location, record) in enumerate(read_records(resolved.file))
        if resolved.limit is None or number < resolved.limit
    }
    for conversation in read_source(resolved, report):
        messages = conversation.messages
        answers = [i for i, m in enumerate(messages) if m.role == "assistant"]
        last = answers[-1] if answers else len(messages)
        prompt = messages[:last]
        if not prompt or prompt[-1].role not in ("user", "tool"):
            ends = prompt[-1].role if prompt else "nothing"
            report.bad_rows.append(str(RowError(conversation.location, None, (
                f"the prompt before its last answer ends with {ends}; it must end with a user "
                "turn (or a tool result) to answer")))
            )  # fmt: skip
            continue
        record = records.get(str(conversation.location), {})
        columns = _plain_columns(record)
        if last < len(messages):
            columns.setdefault("answer", messages[last].content)
        yield Conversation(prompt, conversation.location, conversation.tools), columns


def _plain_columns(record, skip: tuple[str, ...] = ()) -> dict:
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in record.items() if isinstance(v, PLAIN) and k not in skip}


def _source_line(report: DataReport, resolved, fmt: str, evidence: str, kept: int, bad: int):
    report.sources.append(
        {
            "name": resolved.name,
            "file": str(resolved.file),
            "format": fmt,
            "evidence": evidence,
            "read": kept + bad,
            "kept": kept,
            "bad": bad,
        }
    )
