"""One batch of answers generated together, each row with its own limits.

Every row has its own prompt, token limit, stop strings, adapter and a way to be cancelled;
its text is handed out piece by piece as it grows (for streaming) and it stops on its own
when it is done, while the other rows of the batch go on. `transformers`' `generate` does
the decoding (left-padded batch, KV cache); this module only follows each row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

REPLACEMENT = "\ufffd"  # what a partial multi-byte character decodes to


@dataclass
class Row:
    """One answer being generated."""

    prompt: list[int]
    max_new_tokens: int
    stop_strings: list[str] = field(default_factory=list)
    adapter: str | None = None  # which of a multi-adapter model's adapters answers
    on_text: Callable[[str], None] | None = None  # called with each new piece of text
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop", "length" or "cancelled" once done
    logprobs: int | None = None  # keep each token's log-probability and this many others
    token_logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)
    _sent: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int, stop_ids: set[int], decode: Callable[[list[int]], str],
            logprobs: torch.Tensor | None = None) -> None:  # fmt: skip
        """Take the next generated token (and the log-probabilities it was drawn from); ends
        the row on a stop token, stop string or limit."""
        if self.done:
            return
        if self.cancelled.is_set():
            self.finish_reason = "cancelled"
            return
        self.tokens.append(token)
        if token in stop_ids:  # the stop token is not part of the answer, nor its logprob
            self._finish("stop", decode, self.tokens[:-1])
            return
        if logprobs is not None and self.logprobs is not None:
            self.token_logprobs.append(_chosen(logprobs, token, self.logprobs))
        if self.on_text is not None or self.stop_strings:
            self.text = decode(self.tokens)
            if self._cut_at_stop_string():
                self._finish("stop")
                return
        if len(self.tokens) >= self.max_new_tokens:
            self._finish("length", decode, self.tokens)
        else:
            self._send(self._settled())

    def end(self, decode: Callable[[list[int]], str]) -> None:
        """The batch is over: a row still open ran out of room."""
        if not self.done:
            self._finish("length", decode, self.tokens)

    def _cut_at_stop_string(self) -> bool:
        hits = [self.text.find(s) for s in self.stop_strings if s and s in self.text]
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        return True

    def _settled(self) -> int:
        """How much of the text can be sent: not a partial character at the end, nor what
        could still become a stop string."""
        end = len(self.text)
        while end and self.text[end - 1] == REPLACEMENT:
            end -= 1
        hold = max((len(s) - 1 for s in self.stop_strings), default=0)
        return max(self._sent, end - hold)

    def _send(self, upto: int) -> None:
        if self.on_text is not None and upto > self._sent:
            piece = self.text[self._sent : upto]
            self._sent = upto
            self.on_text(piece)

    def _finish(self, reason: str, decode=None, tokens: list[int] | None = None) -> None:
        self.finish_reason = reason
        if decode is not None:
            self.text = decode(tokens)
            self._cut_at_stop_string()
        self.text = self.text.rstrip(REPLACEMENT)
        self._send(len(self.text))


def _chosen(logprobs: torch.Tensor, token: int, others: int):
    """(token, its log-probability, the `others` most likely tokens with theirs)."""
    top = torch.topk(logprobs, others) if others else None
    alternatives = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist()))
    return token, float(logprobs[token]), [(i, v) for i, v in alternatives if v > float("-inf")]


class StepLogprobs:
    """A logits processor that keeps the log-probabilities of the distribution each step's
    tokens are drawn from (after temperature, top-k and top-p, which come before it)."""

    def __init__(self):
        self.last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores


class RowFollower:
    """A `generate` streamer and stopping criterion in one: hands each step's tokens to their
    rows and tells `generate` which rows are finished."""

    def __init__(self, rows: list[Row], stop_ids: set[int], decode: Callable[[list[int]], str],
                 logprobs: StepLogprobs | None = None):  # fmt: skip
        self.rows = rows
        self.stop_ids = stop_ids
        self.decode = decode
        self.logprobs = logprobs
        self._prompt_seen = False

    # streamer protocol
    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompts
            self._prompt_seen = True
            return
        step = self.logprobs.last if self.logprobs is not None else None
        for index, (row, token) in enumerate(zip(self.rows, value.reshape(-1).tolist())):
            row.add(token, self.stop_ids, self.decode, None if step is None else step[index])

    def end(self) -> None:
        for row in self.rows:
            row.end(self.decode)

    # stopping-criterion protocol
    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        for row in self.rows:  # a cancelled row stops even between its own tokens
            if not row.done and row.cancelled.is_set():
                row.finish_reason = "cancelled"
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)
