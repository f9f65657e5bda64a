"""A reasoning model's answer told apart from its reasoning: the `<think>...</think>` block it
writes first (or, after a generation prompt that already opened `<think>`, as DeepSeek-R1's
does, everything up to `</think>`).
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def prompt_opens_thinking(prompt_tail: str) -> bool:
    """Whether a prompt ends inside an opened think block (its last few tokens, decoded)."""
    return prompt_tail.rstrip().endswith(OPEN)


def split_reasoning(text: str, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning, answer) of a whole generated text; reasoning is None when there is none."""
    splitter = ReasoningSplitter(opened)
    parts = splitter.feed(text) + splitter.flush()
    reasoning = "".join(p for kind, p in parts if kind == "reasoning")
    answer = "".join(p for kind, p in parts if kind == "content")
    return (reasoning.strip() if splitter.saw_reasoning else None), answer.strip()


class ReasoningSplitter:
    """Pieces of a streamed answer routed to ("reasoning", text) or ("content", text).

    Text that could still turn out to be `<think>` or `</think>` is held back until it is
    known; `flush` hands out what is left at the end.
    """

    def __init__(self, opened: bool = False):
        self.state = "reasoning" if opened else "start"
        self.saw_reasoning = opened
        self._held = ""

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self._held += piece
        out: list[tuple[str, str]] = []
        while True:
            if self.state == "start":
                stripped = self._held.lstrip()
                if stripped.startswith(OPEN):
                    self._held = stripped[len(OPEN) :]
                    self.state, self.saw_reasoning = "reasoning", True
                    continue
                if OPEN.startswith(stripped):  # could still become <think>
                    return out
                self.state = "content"
            if self.state == "reasoning":
                before, found, after = self._held.partition(CLOSE)
                if found:
                    out.append(("reasoning", before))
                    self._held = after.lstrip("\n")
                    self.state = "after"
                    continue
                keep = _partial_suffix(self._held, CLOSE)
                out.append(("reasoning", self._held[: len(self._held) - keep]))
                self._held = self._held[len(self._held) - keep :]
                return [p for p in out if p[1]]
            if self.state == "after":  # drop the blank line between </think> and the answer
                if not self._held.strip("\n") and self._held == "\n" * len(self._held):
                    return [p for p in out if p[1]]
                self._held = self._held.lstrip("\n")
                self.state = "content"
            out.append(("content", self._held))
            self._held = ""
            return [p for p in out if p[1]]

    def flush(self) -> list[tuple[str, str]]:
        kind = "reasoning" if self.state == "reasoning" else "content"
        held, self._held = self._held, ""
        return [(kind, held)] if held and self.state != "after" else []


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
