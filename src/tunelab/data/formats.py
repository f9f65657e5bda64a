"""Source formats: one small converter each, tried in order when the format is `auto`.

Column and tag names follow LLaMA-Factory's dataset_info.json, so its registries are read as
they are: alpaca (prompt/query/response/system/history) and sharegpt (messages with role and
content tags). OpenAI messages are sharegpt with role/content tags.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from tunelab.data.conversation import Conversation, Location, Message, RowError
from tunelab.data.tool_calls import calls_from_openai, calls_from_text


@dataclass
class Columns:
    """Where a format finds its fields in a record (dataset_info.json `columns` and `tags`)."""

    prompt: str = "instruction"
    query: str = "input"
    response: str = "output"
    system: str = "system"
    history: str = "history"
    messages: str = "conversations"
    tools: str = "tools"
    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"

    @classmethod
    def for_format(cls, name: str, overrides: dict | None = None) -> Columns:
        base = cls(**_FORMAT_DEFAULTS.get(name, {}))
        for key, value in (overrides or {}).items():
            if hasattr(base, key) and value:
                setattr(base, key, value)
        return base


_FORMAT_DEFAULTS: dict[str, dict] = {
    "alpaca": {},
    "qa": {"prompt": "question", "response": "answer", "query": "context"},
    "prompt_completion": {"prompt": "prompt", "response": "completion", "query": "input"},
    "sharegpt": {},
    "messages": {
        "messages": "messages",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function_call",
        "system_tag": "system",
    },
}


def _text(record: dict, key: str, location: Location, required: bool) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise RowError(location, key, "missing; every record needs it")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RowError(location, key, f"must be text, found {type(value).__name__}")
    if required and not value.strip():
        raise RowError(location, key, "is empty")
    return value


def from_alpaca(record: dict, location: Location, columns: Columns) -> Conversation:
    """instruction (+ input) -> output, with optional system and [[question, answer], ...] history."""
    instruction = _text(record, columns.prompt, location, required=False)
    query = _text(record, columns.query, location, required=False)
    response = _text(record, columns.response, location, required=True)
    user = "\n".join(part for part in (instruction, query) if part)
    if not user.strip():
        raise RowError(location, columns.prompt, f"is empty and so is `{columns.query}`")
    messages: list[Message] = []
    system = _text(record, columns.system, location, required=False)
    if system:
        messages.append(Message("system", system))
    history = record.get(columns.history) or []
    if not isinstance(history, list):
        raise RowError(location, columns.history, "must be a list of [question, answer] pairs")
    for turn, pair in enumerate(history):
        if not (
            isinstance(pair, (list, tuple))
            and len(pair) == 2
            and all(isinstance(x, str) for x in pair)
        ):
            raise RowError(
                location, f"{columns.history}[{turn}]", "must be a [question, answer] pair of texts"
            )
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    messages += [Message("user", user), Message("assistant", response)]
    return Conversation(messages, location)


def from_sharegpt(record: dict, location: Location, columns: Columns) -> Conversation:
    """A list of turns with role and content tags (sharegpt, OpenAI messages), tools kept."""
    turns = record.get(columns.messages)
    if turns is None:
        raise RowError(location, columns.messages, "missing; every record needs it")
    if not isinstance(turns, list) or not turns:
        raise RowError(location, columns.messages, "must be a non-empty list of turns")
    roles = {
        columns.user_tag: "user",
        columns.assistant_tag: "assistant",
        columns.system_tag: "system",
        columns.observation_tag: "tool",
        columns.function_tag: "assistant",
        # Both vocabularies appear in the wild, often mixed within one file.
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "system": "system",
        "tool": "tool",
    }
    messages = []
    for turn, item in enumerate(turns):
        where = f"{columns.messages}[{turn}]"
        if not isinstance(item, dict):
            raise RowError(location, where, f"must be an object, found {type(item).__name__}")
        tag = item.get(columns.role_tag)
        if tag not in roles:
            known = ", ".join(
                sorted(
                    {
                        columns.user_tag,
                        columns.assistant_tag,
                        columns.system_tag,
                        columns.observation_tag,
                        columns.function_tag,
                    }
                )
            )
            raise RowError(
                location,
                f"{where}.{columns.role_tag}",
                f"unknown role {tag!r}; expected one of {known}",
            )
        messages.append(
            read_turn(item, roles[tag], tag == columns.function_tag, columns, location, where)
        )
    if messages[0].role == "system" and columns.system in record and record[columns.system]:
        raise RowError(location, columns.system, "given twice: as a field and as the first turn")
    system = record.get(columns.system)
    if isinstance(system, str) and system.strip():
        messages.insert(0, Message("system", system))
    return Conversation(
        messages, location, tools=_tools(record.get(columns.tools), location, columns)
    )


def read_turn(
    item: dict, role: str, is_call: bool, columns: Columns, location: Location, where: str
) -> Message:
    """One turn: its text, reasoning and tool calls (a function_call turn is all call)."""
    spot = f"{where}.{columns.content_tag}"
    value = item.get(columns.content_tag)
    if is_call:
        return Message(
            role, "", tool_calls=calls_from_text(_content(value, location, spot), location, spot)
        )
    calls = None
    if item.get("tool_calls") not in (None, []):
        calls = calls_from_openai(item["tool_calls"], location, f"{where}.tool_calls")
    if calls and value in (None, ""):  # OpenAI: a turn that only calls has no content
        value = ""
    text, reasoning, part_calls = _content_reasoning_calls(value, location, spot, bool(calls))
    calls = (calls or []) + part_calls
    return Message(role, text, _reasoning(item, location, where) or reasoning, calls or None)


def _reasoning(item: dict, location: Location, where: str) -> str | None:
    """An assistant turn's reasoning as OpenAI-style servers and vLLM write it."""
    for key in ("reasoning_content", "reasoning"):
        value = item.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise RowError(location, f"{where}.{key}", "must be text")
        return value.strip("\n")
    return None


def _tools(value: object, location: Location, columns: Columns) -> str | None:
    """Tool schemas as a JSON string (files store them as a string or as a list)."""
    if value in (None, "", []):
        return None
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        raise RowError(
            location, columns.tools, f"must be a JSON list of tools, found {type(value).__name__}"
        )
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise RowError(location, columns.tools, f"is not valid JSON ({exc.msg})") from None
    if not isinstance(parsed, list):
        raise RowError(location, columns.tools, "must be a JSON list of tools")
    return value


def _content_reasoning_calls(value: object, location: Location, where: str, calls: bool):
    """A turn's text, and its reasoning and tool calls when the content is a list of parts
    (the text may be empty when the turn calls a tool)."""
    if isinstance(value, list):
        text, reasoning, part_calls = _parts(value, location, where)
        return _content(text, location, where, calls or bool(part_calls)), reasoning, part_calls
    return _content(value, location, where, calls), None, []


def _content(value: object, location: Location, where: str, may_be_empty: bool = False) -> str:
    if value is None:
        raise RowError(location, where, "missing")
    if not isinstance(value, str):
        raise RowError(location, where, f"must be text, found {type(value).__name__}")
    if not value.strip() and not may_be_empty:
        raise RowError(location, where, "is empty")
    return value


PART_KINDS = {
    "text": "text",
    "reasoning": "reasoning",
    "thinking": "reasoning",
    "tool_call": "tool_call",
}


def _parts(parts: list, location: Location, where: str) -> tuple[str, str | None, list[dict]]:
    """Content parts, as OpenAI ({"type": "text", "text": ...}) and LLaMA-Factory's newer
    format ({"type": ..., "value": ...}, with reasoning and tool_call parts) write them: the
    text, the reasoning and the tool calls (a call's JSON, as a function_call turn holds it)."""
    found: dict[str, list[str]] = {"text": [], "reasoning": [], "tool_call": []}
    calls: list[dict] = []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get("text", part.get("value")) if isinstance(part, dict) else None
        if kind not in PART_KINDS:
            raise RowError(
                location,
                f"{where}[{index}].type",
                f"content part {kind!r} is not supported (text, reasoning and tool_call are)",
            )
        if not isinstance(text, str):
            raise RowError(location, f"{where}[{index}]", "needs its text as `text` or `value`")
        if PART_KINDS[kind] == "tool_call":
            calls += calls_from_text(text, location, f"{where}[{index}].value")
        else:
            found[PART_KINDS[kind]].append(text)
    reasoning = "\n".join(found["reasoning"]).strip("\n") or None
    return "\n".join(found["text"]), reasoning, calls


def from_xtuner(record: dict, location: Location, columns: Columns) -> Conversation:
    """XTuner's `conversation`: a list of {system?, input, output} turns, at the top of the
    record or nested as `input: {conversation: [...]}`."""
    outer = "conversation"
    if "conversation" not in record and isinstance(record.get("input"), dict):
        record, outer = record["input"], "input.conversation"
    turns = record.get("conversation")
    if turns is None:
        raise RowError(location, outer, "missing; every record needs it")
    if not isinstance(turns, list) or not turns:
        raise RowError(location, outer, "must be a non-empty list of turns")
    messages: list[Message] = []
    for turn, item in enumerate(turns):
        where = f"{outer}[{turn}]"
        if not isinstance(item, dict):
            raise RowError(location, where, f"must be an object, found {type(item).__name__}")
        system = _text(item, "system", location, required=False)
        if system.strip():
            if turn:
                raise RowError(
                    location, f"{where}.system", "a system prompt is only allowed in the first turn"
                )
            messages.append(Message("system", system))
        messages.append(Message("user", _content(item.get("input"), location, f"{where}.input")))
        messages.append(
            Message("assistant", _content(item.get("output"), location, f"{where}.output"))
        )
    return Conversation(messages, location)


@dataclass
class Format:
    name: str
    convert: Callable[[dict, Location, Columns], Conversation]
    detect: Callable[[dict], bool]
    evidence: str = field(default="")


FORMATS: list[Format] = [
    Format(
        "messages",
        from_sharegpt,
        lambda r: isinstance(r.get("messages"), list),
        "a `messages` list",
    ),
    Format(
        "sharegpt",
        from_sharegpt,
        lambda r: isinstance(r.get("conversations"), list),
        "a `conversations` list",
    ),
    Format(
        "xtuner",
        from_xtuner,
        lambda r: (
            isinstance(r.get("conversation"), list)
            or isinstance(r.get("input"), dict)
            and isinstance(r["input"].get("conversation"), list)
        ),
        "a `conversation` list (XTuner), at the top or under `input`",
    ),
    Format(
        "alpaca",
        from_alpaca,
        lambda r: "output" in r and ("instruction" in r or "input" in r),
        "`instruction`/`input` and `output` fields",
    ),
    Format(
        "qa",
        from_alpaca,
        lambda r: "question" in r and "answer" in r,
        "`question` and `answer` fields",
    ),
    Format(
        "prompt_completion",
        from_alpaca,
        lambda r: isinstance(r.get("prompt"), str) and "completion" in r,
        "`prompt` and `completion` fields",
    ),
]
FORMATS_BY_NAME = {f.name: f for f in FORMATS}


def detect_format(record: object) -> Format | None:
    """The first format whose fingerprint matches the record, or None."""
    if not isinstance(record, dict):
        return None
    return next((f for f in FORMATS if f.detect(record)), None)
