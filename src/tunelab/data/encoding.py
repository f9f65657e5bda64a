"""Tokenizing rendered texts in bulk, and finding the tokens of the answers in them.

Preprocessing is bound by the tokenizer. Texts go to the fast tokenizer's own batch encoder
(what `tokenizer(texts)` calls underneath, without building the per-token Python lists it
converts every result into), on all of the tokenizer's threads while it runs; the setting that
keeps them off elsewhere (forked data workers) is put back afterwards. An answer's tokens are
found from its first and last character, not from a list of every token's offsets.

A byte-level BPE tokenizer (GPT-2's kind: Llama 3, Qwen, SmolLM, DeepSeek) writes each text's
bytes exactly, one token after another. For those, `ByteEdges` finds the tokens from each token's
byte length instead, and the tokenizer skips its offsets (`encode_batch_fast`, a third to
two-fifths less of its time); the answers' tokens and the clean-edge test come out the same.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import unicodedata
from contextlib import contextmanager

import numpy as np

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
        if _plain_backend(backend):
            return backend.encode_batch(texts, add_special_tokens=False)
        return tokenizer(texts, add_special_tokens=False).encodings


def encode_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, no special tokens added (no offsets kept where the tokenizer
    can skip them)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if texts and _plain_backend(backend) and hasattr(backend, "encode_batch_fast"):
        with tokenizer_threads():
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return [e.ids for e in encode_batch(tokenizer, texts)]


def _plain_backend(backend) -> bool:
    return backend is not None and backend.truncation is None and backend.padding is None


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


UNSURE = object()  # ByteEdges cannot tell for this text: ask the tokenizer's offsets


class ByteEdges:
    """Token edges from token byte lengths, for a tokenizer whose tokens spell each text's
    bytes exactly and whose offsets are not trimmed: there a token's characters are those its
    bytes fall in, so a span starts and ends on token edges exactly when its bytes do, and the
    tokens starting inside it are those whose first byte is inside it."""

    def __init__(self, backend, added: dict, nfc: bool):
        self.backend = backend
        self.nfc = nfc  # the tokenizer normalises to NFC: only texts already in NFC are exact
        # bytes of each token id, looked up when first seen (reading the whole vocabulary
        # costs more than a small data set's tokenizing saves)
        self.lengths = np.full(backend.get_vocab_size(with_added_tokens=True), -1, np.int64)
        for index, token in added.items():
            self.lengths[index] = len(token.content.encode())

    @classmethod
    def of(cls, tokenizer) -> ByteEdges | None:
        """For a byte-level BPE tokenizer that writes texts as they are; None otherwise."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        needed = ("encode_batch_fast", "get_added_tokens_decoder")  # tokenizers >= 0.21
        if not (_plain_backend(backend) and all(hasattr(backend, n) for n in needed)):
            return None
        model = backend.model
        affixes = ("continuing_subword_prefix", "end_of_word_suffix")  # "##" and the like
        if type(model).__name__ != "BPE" or any(getattr(model, a, None) for a in affixes):
            return None
        normalizer = _parts(backend.normalizer)
        if not ({p.get("type") for p in normalizer} <= {"NFC"} and _byte_level(backend)):
            return None
        added = backend.get_added_tokens_decoder()
        if any(token.lstrip or token.rstrip or token.single_word for token in added.values()):
            return None
        return cls(backend, added, nfc=bool(normalizer))

    def labels(self, texts: list[str], ids: list[list[int]], spans: list[list[tuple]]) -> list:
        """For each text (its token ids and answer spans): labels as `answer_labels` makes
        them, None when a span's edges are not token edges, or UNSURE."""
        counts = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(counts.sum()))
        if flat.size and (flat.max() >= len(self.lengths) or flat.min() < 0):
            return [UNSURE] * len(texts)
        sizes = self._sizes(flat)
        before = np.concatenate(([0], np.cumsum(sizes)))  # bytes before each token, in a row
        first_token = np.cumsum(counts) - counts
        text_start = before[first_token].tolist()
        spelled = (before[first_token + counts] - before[first_token]).tolist()
        results: list = []
        edges, owners = [], []
        for k, text in enumerate(texts):
            if spelled[k] != _byte(text, len(text)) or (
                self.nfc and not unicodedata.is_normalized("NFC", text)
            ):
                results.append(UNSURE)  # the tokens do not spell this text's bytes
                continue
            results.append([IGNORE_INDEX] * len(ids[k]))
            for start, end in spans[k]:
                if end > start:
                    edges.append(
                        (text_start[k] + _byte(text, start), text_start[k] + _byte(text, end))
                    )
                    owners.append(k)
        if edges:
            self._label_spans(results, ids, owners, first_token.tolist(), before, edges)
        return results

    @staticmethod
    def _label_spans(results, ids, owners, first_token, before, edges) -> None:
        """Label each span's tokens in `results`; a text with a span that does not start and
        end on token edges gets None."""
        at = np.array(edges, np.int64)
        first = np.searchsorted(before, at[:, 0], side="right") - 1  # token holding the byte
        last = np.searchsorted(before, at[:, 1], side="left") - 1  # token ending there
        clean = (before[first] == at[:, 0]) & (before[last + 1] == at[:, 1])
        for k, a, b, ok in zip(owners, first.tolist(), last.tolist(), clean.tolist()):
            if not ok:
                results[k] = None
            elif results[k] is not None:
                a, b = a - first_token[k], b - first_token[k] + 1
                results[k][a:b] = ids[k][a:b]

    def _sizes(self, flat: np.ndarray) -> np.ndarray:
        sizes = self.lengths[flat]
        if (sizes < 0).any():
            for index in np.unique(flat[sizes < 0]).tolist():
                # one character per byte in a byte-level vocabulary
                self.lengths[index] = len(self.backend.id_to_token(index) or "")
            sizes = self.lengths[flat]
        return sizes


def _byte(text: str, index: int) -> int:
    return index if text.isascii() else len(text[:index].encode())


def _parts(component) -> list[dict]:
    """A normalizer, pre-tokenizer or post-processor as its JSON parts (a Sequence's items)."""
    if component is None:
        return []
    state = json.loads(component.__getstate__())
    if state.get("type") == "Sequence":  # a nested Sequence is a part no check allows
        items = state.get("normalizers") or state.get("pretokenizers") or state.get("processors")
        return list(items or [])
    return [state]


def _byte_level(backend) -> bool:
    """Pre-tokenizing only splits the text (one part maps bytes to characters, adding no
    space in front), and post-processing keeps offsets untrimmed."""
    pre = _parts(backend.pre_tokenizer)
    levels = [p for p in pre if p.get("type") == "ByteLevel"]
    if (
        len(levels) != 1
        or levels[0].get("add_prefix_space")
        or any(p.get("type") not in {"ByteLevel", "Split"} for p in pre)
    ):
        return False
    post = _parts(backend.post_processor)
    return all(
        p.get("type") in {"TemplateProcessing", "ByteLevel"} and not p.get("trim_offsets")
        for p in post
    )
