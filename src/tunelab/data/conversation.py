"""The one canonical conversation type every source format becomes."""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Conversation:
    """An ordered list of messages; training learns the assistant turns."""

    messages: list[Message]
    location: Location | None = None
    tools: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dicts(self) -> list[dict[str, str]]:
        """Messages in the shape chat templates expect."""
        return [
            {"role": m.role, "content": m.content}
            | ({"reasoning_content": m.reasoning} if m.reasoning else {})
            for m in self.messages
        ]


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
