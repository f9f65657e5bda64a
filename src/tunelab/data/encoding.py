"""Tokenizing rendered texts in bulk, and finding the tokens of the answers in them.

Preprocessing is bound by the tokenizer. Texts go to the fast tokenizer's own batch encoder
(what `tokenizer(texts)` calls underneath, without building the per-token Python lists it
converts every result into), on all of the tokenizer's threads while it runs; the setting that
keeps them off elsewhere (forked data workers) is put back afterwards. An answer's tokens are
found from its first and last character, not from a list of every token's offsets.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

IGNORE_INDEX = -100


_threads_lock = threading.Lock()
_threads_users = 0
_threads_before: str | None = None


@contextmanager
def tokenizer_threads():
    """Let the tokenizer use its threads for the duration (it reads the setting per call);
    callers on several threads at once share one setting, put back when the last one ends."""
    global _threads_users, _threads_before
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "true"
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:  # left set, so that a forked worker does not warn
                os.environ["TOKENIZERS_PARALLELISM"] = _threads_before or "false"


def encode_batch(tokenizer, texts: list[str]) -> list:
    """Each text's `tokenizers.Encoding` (ids, char/token maps), no special tokens added."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    with tokenizer_threads():
        if backend is not None and backend.truncation is None and backend.padding is None:
            return backend.encode_batch(texts, add_special_tokens=False)
        return tokenizer(texts, add_special_tokens=False).encodings


def answer_labels(encoding, ids: list[int], spans: list[tuple[int, int]]) -> list[int] | None:
    """Labels training the tokens (`ids`, the encoding's) that start inside an answer's
    character span, the rest ignored; None when a span does not start and end on a token edge
    (a token straddles it)."""
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        if end <= start:
            continue
        tokens = token_range(encoding, len(ids), start, end)
        if tokens is None:
            return None
        first, last = tokens
        labels[first : last + 1] = ids[first : last + 1]
    return labels


def token_range(encoding, count: int, start: int, end: int) -> tuple[int, int] | None:
    """The first and last token of the characters [start, end), if both are token edges.

    A character may belong to more than one token (a multi-byte character split into bytes):
    the range takes all of them."""
    first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
    if first is None or last is None:
        return None
    while first > 0 and encoding.token_to_chars(first - 1)[0] >= start:
        first -= 1
    while last + 1 < count and encoding.token_to_chars(last + 1)[0] < end:
        last += 1
    if encoding.token_to_chars(first)[0] != start or encoding.token_to_chars(last)[1] != end:
        return None
    return first, last
