"""Batching of concurrent requests onto the one generation engine.

One worker thread owns the models. Requests that arrive together (within a short window)
and can share a batch are generated as one left-padded batch: the same loaded model, the
same sampling (a seeded request gets a batch of its own, so that its seed means what it
says), and for DoRA adapters, which peft cannot mix in one batch, the same adapter. Each row
ends on its own; a cancelled row (its client went away) stops being generated at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from tunelab.inference.batch import Row
from tunelab.inference.chat_model import ChatModel, Sampling


@dataclass(eq=False)
class Job:
    """One request: its row, how to sample it, and how it reports back to the event loop.

    A streamed job gets its text as ("text", piece) events on `events`, then ("done", None)
    or ("error", exception); every job sets `done` when it is over.
    """

    model: ChatModel
    row: Row
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    streamed: bool = False
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None

    def __post_init__(self):
        if self.streamed:
            self.row.on_text = lambda piece: self._put(("text", piece))

    def _put(self, event: tuple) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def finish(self) -> None:
        self._put(("done", None))
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.done.set)

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self._put(("error", exc))
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.done.set)

    def batch_key(self) -> tuple:
        model = self.model
        greedy = Sampling(repetition_penalty=self.sampling.repetition_penalty)
        sampling = self.sampling if self.sampling.temperature > 0 else greedy
        alone = id(self) if sampling.seed is not None else None
        adapter = None if model.mixed_batches() else model.adapter
        return (id(model.model), sampling, alone, adapter)


class Scheduler:
    def __init__(self, max_batch: int = 8, wait_s: float = 0.05):
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.running = 0
        self.batches = 0
        self.cancelled = 0
        self.generated_tokens = 0
        self._pending: list[Job] = []
        self._wake = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="tunelab-generate", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, job: Job) -> None:
        with self._wake:
            self._pending.append(job)
            self._wake.notify()

    def close(self) -> None:
        """Stop: queued requests are dropped and running ones cancelled."""
        with self._wake:
            self._closed = True
            for job in self._pending:
                job.row.cancelled.set()
                job.finish()
            self._pending.clear()
            self._wake.notify()
        self._worker.join(timeout=30)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self.running = len(batch)
            try:
                batch[0].model.run_rows([job.row for job in batch], batch[0].sampling)
            except Exception as exc:  # reported to each client; the server goes on
                for job in batch:
                    job.fail(exc)
            else:
                for job in batch:
                    job.finish()
            finally:
                self.batches += 1
                self.generated_tokens += sum(len(job.row.tokens) for job in batch)
                self.cancelled += sum(job.row.finish_reason == "cancelled" for job in batch)
                self.running = 0

    def _next_batch(self) -> list[Job] | None:
        with self._wake:
            while not self._closed:
                self._pending = [j for j in self._pending if not self._dropped(j)]
                if self._pending:
                    break
                self._wake.wait()
            if self._closed:
                return None
            self._gather()
            key = self._pending[0].batch_key()
            batch = [job for job in self._pending if job.batch_key() == key][: self.max_batch]
            self._pending = [job for job in self._pending if job not in batch]
            return batch

    def _gather(self) -> None:
        """Give requests sent at about the same time a moment to join the batch."""
        deadline = time.monotonic() + self.wait_s
        while len(self._pending) < self.max_batch and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)

    def _dropped(self, job: Job) -> bool:
        if job.row.cancelled.is_set():
            self.cancelled += 1
            job.finish()
            return True
        return False
