"""The one canonical conversation type every source format becomes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Location:
    """Where a record came from: a file and a 1-based line (jsonl) or 0-based index (json)."""

    file: str
    line: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}"
        if self.index is not None:
            return f"{self.file}[{self.index}]"
        return self.file


@dataclass
class Message:
    role: Role
    content: str
    reasoning: str | None = None  # an assistant turn's reasoning, apart from its answer
    # an assistant turn's tool calls, as chat templates take them:
    # [{"type": "function", "function": {"name": ..., "arguments": {...}}}]
    tool_calls: list[dict] | None = None

    @property
    def has_reasoning(self) -> bool:
        """Reasoning as its own field, or as a leading <think>...</think> block in the content."""
        head = self.content.lstrip()
        return bool(self.reasoning) or (head.startswith("<think>") and "</think>" in head)

    def with_reasoning(self) -> str:
        """The content with the reasoning in front as a think block, for formats and
        templates that have no field of their own for it."""
        if not self.reasoning:
            return self.content
        return f"<think>\n{self.reasoning}\n</think>\n\n{self.content}"

    def with_calls(self) -> str:
        """The content with each tool call after it as a JSON line (`{"name", "arguments"}`,
        as a function_call turn holds it), for templates with no place for calls."""
        calls = [
            json.dumps(
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                ensure_ascii=False,
            )
            for c in self.tool_calls or []
        ]
        return "\n".join([self.content, *calls] if self.content else calls)

    def as_dict(self, reasoning: bool = True, calls: bool = True) -> dict:
        """The message in the shape chat templates expect; reasoning and tool calls as fields
        of their own, or written into the content for a template that reads no such field."""
        text = self.content if calls else self.with_calls()
        shaped = {"role": self.role, "content": text}
        if self.reasoning and reasoning:
            shaped["reasoning_content"] = self.reasoning
        elif self.reasoning:
            shaped["content"] = replace(self, content=text).with_reasoning()
        if calls and self.tool_calls:
            shaped["tool_calls"] = self.tool_calls
        return shaped


@dataclass
class Conversation:
    """An ordered list of messages; training learns the assistant turns."""

    messages: list[Message]
    location: Location | None = None
    tools: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dicts(self, reasoning: bool = True, calls: bool = True) -> list[dict]:
        """Messages in the shape chat templates expect (see `Message.as_dict`)."""
        return [m.as_dict(reasoning, calls) for m in self.messages]


class RowError(Exception):
    """One bad record: where it is, which field, and why."""

    def __init__(self, location: Location | None, field_name: str | None, reason: str):
        self.location = location
        self.field_name = field_name
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.location) if self.location else "record"
        field_part = f" field `{self.field_name}`" if self.field_name else ""
        return f"{where}{field_part}: {self.reason}"
