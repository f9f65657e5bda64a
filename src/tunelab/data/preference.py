"""Preference data: a prompt with a chosen and a rejected answer (DPO, ORPO, SimPO), or with
one answer marked desirable or not (KTO), in the layouts people bring.

- LLaMA-Factory ranking, sharegpt: the prompt's turns under `conversations`, `chosen` and
  `rejected` one message each (`{"from": "gpt", "value": ...}`) or plain text.
- LLaMA-Factory ranking, alpaca: `instruction` (+ `input`, `system`, `history`), `chosen` and
  `rejected` as text.
- TRL: `prompt` (text or a list of messages), `chosen` and `rejected` (text or messages).
- KTO: LLaMA-Factory's messages ending with the answer plus a boolean tag (`label`), or TRL's
  `prompt`, `completion` and `label`.

Every row is checked like an SFT row: a bad one is one located sentence, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from tunelab.data.conversation import Conversation, Location, Message, RowError
from tunelab.data.encoding import encode_ids
from tunelab.data.formats import Columns, from_alpaca, from_sharegpt, read_turn
from tunelab.data.readers import read_records
from tunelab.data.render import template_refusal

PAIR, KTO = "preference", "kto"


@dataclass
class PreferenceRow:
    """The conversation up to the answer, then a chosen and a rejected answer (a pair), or
    one answer and whether it is desirable (KTO: `rejected` is None, `label` is set)."""

    prompt: Conversation
    chosen: Message
    rejected: Message | None = None
    label: bool | None = None

    @property
    def location(self) -> Location | None:
        return self.prompt.location

    def conversation(self, answer: Message) -> Conversation:
        """The prompt followed by one of the answers, as a conversation to render."""
        prompt = self.prompt
        return Conversation([*prompt.messages, answer], prompt.location, prompt.tools)


def read_preference(record: dict, location: Location, kind: str, columns: dict) -> PreferenceRow:
    """One record of a preference (`kind` "preference") or KTO data set."""
    names = {"chosen": "chosen", "rejected": "rejected", "kto_tag": "label", **columns}
    if kind == KTO:
        return _kto(record, location, names)
    if "chosen_messages" in record or "rejected_messages" in record:
        return _two_conversations(record, location)
    prompt = _prompt(record, location, names)
    chosen = _answer(record, location, names["chosen"], names)
    rejected = _answer(record, location, names["rejected"], names)
    return _checked(PreferenceRow(prompt, chosen, rejected), location, names["rejected"])


def _checked(row: PreferenceRow, location: Location, field: str) -> PreferenceRow:
    """A pair whose prompt ends where the answers start and whose answers differ."""
    last = row.prompt.messages[-1].role if row.prompt.messages else None
    if last not in ("user", "tool"):
        raise RowError(
            location, field, "its prompt must end with the user's turn, where the answers start"
        )
    chosen, rejected = row.chosen, row.rejected
    if (chosen.content, chosen.reasoning, chosen.tool_calls) == (
        rejected.content, rejected.reasoning, rejected.tool_calls,
    ):  # fmt: skip
        raise RowError(
            location, field, "is the same answer as the chosen one; the pair teaches nothing"
        )
    return row


def _two_conversations(record: dict, location: Location) -> PreferenceRow:
    """LLaMA-Factory's newer layout: `chosen_messages` and `rejected_messages`, two whole
    conversations that share every turn but the last answer."""
    sides = []
    for key in ("chosen_messages", "rejected_messages"):
        if not isinstance(record.get(key), list):
            raise RowError(location, key, "missing; give both conversations as message lists")
        sides.append(from_sharegpt({"messages": record[key]}, location, _messages_columns()))
    (*prompt, chosen), (*other, rejected) = (side.messages for side in sides)
    if [(m.role, m.content) for m in prompt] != [(m.role, m.content) for m in other]:
        raise RowError(
            location, "rejected_messages", "differs from chosen_messages before the last answer"
        )
    return _checked(
        PreferenceRow(Conversation(prompt, location), chosen, rejected),
        location,
        "rejected_messages",
    )


def _kto(record: dict, location: Location, names: dict) -> PreferenceRow:
    tag = names["kto_tag"]
    label = record.get(tag)
    if not isinstance(label, bool):
        found = "missing" if label is None else f"{type(label).__name__} {label!r:.20}"
        raise RowError(location, tag, f"must be true or false (desirable or not), found {found}")
    if "completion" in record and "prompt" in record:  # TRL's unpaired layout
        return PreferenceRow(
            _prompt(record, location, names),
            _answer(record, location, "completion", names),
            None,
            label,
        )
    whole = _conversation(record, location, names)
    *turns, answer = whole.messages
    if answer.role != "assistant":
        raise RowError(
            location, names.get("messages", "messages"), "must end with the answer to rate"
        )
    return PreferenceRow(Conversation(turns, location, whole.tools), answer, None, label)


def _prompt(record: dict, location: Location, names: dict) -> Conversation:
    """The conversation before the answer, which must end where the answer starts."""
    if "prompt" in record and "instruction" not in record:  # TRL
        value = record["prompt"]
        if isinstance(value, str):
            if not value.strip():
                raise RowError(location, "prompt", "is empty")
            prompt = Conversation([Message("user", value)], location)
        else:
            prompt = from_sharegpt({"messages": value}, location, _messages_columns())
    elif names.get("messages", "conversations") in record or "messages" in record:
        prompt = _conversation(record, location, names)
    else:  # alpaca ranking: its answer columns are chosen/rejected, so build it without one
        filled = {**record, names.get("response", "output"): "-"}
        columns = Columns.for_format("alpaca", _alpaca_columns(names))
        prompt = from_alpaca(filled, location, columns)
        prompt.messages.pop()
    return prompt


def _conversation(record: dict, location: Location, names: dict) -> Conversation:
    key = names.get("messages") or ("messages" if "messages" in record else "conversations")
    layout = "messages" if key == "messages" and _is_openai(record.get(key)) else "sharegpt"
    overrides = {k: v for k, v in names.items() if k not in ("chosen", "rejected", "kto_tag")}
    columns = Columns.for_format(layout, overrides)
    return from_sharegpt(record, location, columns)


def _answer(record: dict, location: Location, key: str, names: dict) -> Message:
    """One answer: text, one message, or a list of messages ending with the answer."""
    value = record.get(key)
    if value is None:
        raise RowError(
            location, key, "missing; a preference row needs a chosen and a rejected answer"
        )
    if isinstance(value, list):  # TRL's conversational layout: [{"role": "assistant", ...}]
        if not value:
            raise RowError(location, key, "is an empty list; give the answer")
        value = value[-1]
    if isinstance(value, str):
        if not value.strip():
            raise RowError(location, key, "is empty")
        return Message("assistant", value)
    if not isinstance(value, dict):
        raise RowError(location, key, f"must be text or a message, found {type(value).__name__}")
    layout = "messages" if "role" in value else "sharegpt"
    columns = Columns.for_format(layout)
    role = value.get(columns.role_tag)
    if role not in (None, "assistant", "gpt", "function_call", "model"):
        raise RowError(
            location,
            f"{key}.{columns.role_tag}",
            f"is {role!r}: an answer must be the assistant's turn (gpt or assistant)",
        )
    return read_turn(
        value, "assistant", value.get(columns.role_tag) == "function_call", columns, location, key
    )


def _is_openai(turns: object) -> bool:
    return (
        isinstance(turns, list)
        and bool(turns)
        and isinstance(turns[0], dict)
        and "role" in turns[0]
    )


def _messages_columns() -> Columns:
    return Columns.for_format("messages")


def _alpaca_columns(names: dict) -> dict:
    return {k: v for k, v in names.items() if k in ("prompt", "query", "system", "history")}


def detect_kind(record: object) -> str | None:
    """Whether a record is a preference pair or a KTO row, from its keys (None: neither)."""
    if not isinstance(record, dict):
        return None
    if ("chosen" in record and "rejected" in record) or "chosen_messages" in record:
        return PAIR
    if isinstance(record.get("label"), bool) or "kto_tag" in record:
        return KTO
    return None


def read_preferences(
    file: Path, kind: str, columns: dict | None = None, limit: int | None = None
) -> tuple[list[PreferenceRow], list[str]]:
    """Every row of a preference or KTO file, and each bad row as one located sentence."""
    rows, bad = [], []
    for number, (location, record) in enumerate(read_records(file)):
        if limit is not None and number >= limit:
            break
        try:
            if isinstance(record, RowError):
                raise record
            if not isinstance(record, dict):
                raise RowError(
                    location, None, f"must be a JSON object, found {type(record).__name__}"
                )
            rows.append(read_preference(record, location, kind, columns or {}))
        except RowError as exc:
            bad.append(str(exc))
    return rows, bad


@dataclass
class PreferenceSample:
    """A row as token ids: the prompt as served, then each answer through its stop token."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None
    label: bool | None = None
    location: str | None = None
    truncated: bool = False

    @property
    def answers(self) -> list[list[int]]:
        return [a for a in (self.chosen_ids, self.rejected_ids) if a is not None]

    @property
    def trained_tokens(self) -> int:
        return sum(len(a) for a in self.answers)

    @property
    def input_ids(self) -> list[int]:
        """Every token the model reads for this row: the prompt before each answer."""
        return [t for a in self.answers for t in (*self.prompt_ids, *a)]


def render_preference(renderer, row: PreferenceRow) -> PreferenceSample:
    """The row rendered with the model's chat template: each answer as the model generates it
    after the prompt's generation prompt (the same rule as SFT's masks), the prompt and the
    answers tokenized apart, as when served."""
    [sample] = render_preferences(renderer, [row])
    if isinstance(sample, RowError):
        raise sample
    return sample


def render_preferences(renderer, rows: list[PreferenceRow]) -> list:
    """Each row as `render_preference` renders it, or the RowError that refuses it; every
    text tokenized in one batch (on the tokenizer's threads)."""
    texts: list[str | None] = []
    refused: dict[int, RowError] = {}
    for index, row in enumerate(rows):
        try:
            prompt, chosen = _final_turn(renderer, row.conversation(row.chosen))
            rejected = None
            if row.rejected is not None:
                _, rejected = _final_turn(renderer, row.conversation(row.rejected))
        except RowError as exc:
            refused[index] = exc
            prompt = chosen = rejected = None
        texts += [prompt, chosen, rejected]
    encoded = iter(encode_ids(renderer.tokenizer, [t for t in texts if t is not None]))
    ids = [next(encoded) if t is not None else None for t in texts]
    return [
        refused.get(index)
        or PreferenceSample(*ids[3 * index : 3 * index + 3], row.label, _where(row))
        for index, row in enumerate(rows)
    ]


def _where(row: PreferenceRow) -> str | None:
    return str(row.location) if row.location else None


def _final_turn(renderer, conversation: Conversation) -> tuple[str, str]:
    """(the generation prompt, the answer as generated) of the conversation's last turn."""
    try:
        pieces = renderer.texts_and_spans(conversation)
    except (TemplateError, TypeError) as exc:
        raise template_refusal(conversation, exc) from None
    text, spans, *_ = pieces[-1]
    start, end = spans[-1]
    return text[:start], text[start:end]
