"""Run events: what happens during a run, as small records that anyone can follow.

A run emits `started`, `step`, `eval`, `sample`, `checkpoint`, then `finished`, `stopped`
(Ctrl-C: a checkpoint was saved to resume from) or `failed`.
Subscribers get each event in order: the console view draws the progress bar from them, and
`EventFile` appends them to the run folder's events.jsonl, so a browser or a server can follow
a run without parsing console output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("started", "step", "eval", "sample", "checkpoint", "finished", "stopped", "failed")
EVENTS_FILE = "events.jsonl"


@dataclass
class RunEvent:
    kind: str
    step: int = 0
    data: dict = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return asdict(self)


Subscriber = Callable[[RunEvent], None]


class RunEvents:
    """Hands each emitted event to every subscriber, in the order they subscribed."""

    def __init__(self, *subscribers: Subscriber):
        self.subscribers: list[Subscriber] = list(subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.append(subscriber)

    def emit(self, kind: str, step: int = 0, **data) -> RunEvent:
        if kind not in KINDS:
            raise ValueError(f"unknown run event {kind!r}")
        event = RunEvent(kind, step, data)
        for subscriber in self.subscribers:
            subscriber(event)
        return event


class EventFile:
    """A subscriber that appends each event as one JSON line (flushed, so readers see it)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, event: RunEvent) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(event.as_dict(), ensure_ascii=False, default=str) + "\n")


def read_events(path: Path) -> list[RunEvent]:
    """The events in an events.jsonl (a line still being written is left out)."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(RunEvent(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return events
