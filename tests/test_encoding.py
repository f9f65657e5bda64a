"""Bulk tokenizing and answer spans: the same ids as the tokenizer's own call, and the same
trained tokens as a mask made from every token's offsets."""

from __future__ import annotations

import os
import random

import pytest

from tunelab.data.encoding import IGNORE_INDEX, answer_labels, encode_batch, tokenizer_threads

TEXTS = [
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n2 + 2 = 4.<|im_end|>\n",
    "<|im_start|>user\n请用中文回答：天空为什么是蓝色的？<|im_end|>\n<|im_start|>assistant\n因为瑞利散射。😀<|im_end|>",
    "  leading spaces,\ttabs\n\n\nand   runs of   spaces  ",
    "naïve café — déjà vu … ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 <think>\nhmm\n</think>\n\nok",
]


def offsets_mask(tokenizer, text: str, spans) -> tuple[list[int], list[int] | None]:
    """The reference: every token's offsets; trained when it starts inside a span; clean when
    each span starts where a token starts and ends where a token ends, and no token reaches
    across either edge (a character split into byte tokens: ' ∑' and '∑' both hold its bytes)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    starts, ends = {s for s, _ in offsets}, {e for _, e in offsets}
    edges = [edge for s, e in spans if e > s for edge in (s, e)]
    if not all(s in starts and e in ends for s, e in spans if e > s) or any(
        start < edge < end for start, end in offsets for edge in edges
    ):
        return ids, None
    labels = [
        token if any(s <= start < e for s, e in spans) else IGNORE_INDEX
        for token, (start, _end) in zip(ids, offsets)
    ]
    return ids, labels


def test_bulk_ids_equal_the_tokenizers_own(builtin_tokenizer):
    encodings = encode_batch(builtin_tokenizer, TEXTS)
    for text, encoding in zip(TEXTS, encodings):
        assert encoding.ids == builtin_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_answer_labels_equal_an_offsets_mask_on_every_span(builtin_tokenizer):
    rng = random.Random(0)
    checked = clean = 0
    for text, encoding in zip(TEXTS, encode_batch(builtin_tokenizer, TEXTS)):
        for _ in range(300):
            a, b = sorted(rng.sample(range(len(text) + 1), 2))
            c, d = sorted(rng.sample(range(b, len(text) + 1), 2)) if b < len(text) else (b, b)
            spans = [(a, b), (c, d)]
            ids, expected = offsets_mask(builtin_tokenizer, text, spans)
            assert answer_labels(encoding, encoding.ids, spans) == expected, (text, spans)
            checked += 1
            clean += expected is not None
    assert checked == 1200 and 50 < clean < checked  # both outcomes were exercised


def test_threads_are_on_only_while_tokenizing(builtin_tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with tokenizer_threads():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with pytest.raises(RuntimeError), tokenizer_threads():
        raise RuntimeError
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # set, so a forked worker is quiet
    with tokenizer_threads():  # two users at once (two threads): on until the last one ends
        with tokenizer_threads():
            pass
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
