"""Reasoning told apart from the answer, whole and when streamed in any pieces."""

from __future__ import annotations

import pytest

from tunelab.inference.reasoning import ReasoningSplitter, prompt_opens_thinking, split_reasoning

CASES = [
    ("<think>\nAdd them.\n</think>\n\nThe answer is 4.", False, ("Add them.", "The answer is 4.")),
    ("Add them: 2+2.\n</think>\n\n4", True, ("Add them: 2+2.", "4")),
    ("\n</think>\n\nJust 4.", True, ("", "Just 4.")),
    ("The answer is 4.", False, (None, "The answer is 4.")),
    ("  <think>a < b</think>ok", False, ("a < b", "ok")),
    ("Still thinking when the limit came", True, ("Still thinking when the limit came", "")),
    ("<thin", False, (None, "<thin")),
    ("I use <think> tags in prose.", False, (None, "I use <think> tags in prose.")),
]


@pytest.mark.parametrize(("text", "opened", "expected"), CASES)
def test_whole_text(text, opened, expected):
    assert split_reasoning(text, opened) == expected


@pytest.mark.parametrize(("text", "opened", "expected"), CASES)
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_streamed_in_pieces_gives_the_same(text, opened, expected, size):
    splitter = ReasoningSplitter(opened)
    parts = []
    for start in range(0, len(text), size):
        parts += splitter.feed(text[start : start + size])
    parts += splitter.flush()
    reasoning = "".join(p for kind, p in parts if kind == "reasoning")
    answer = "".join(p for kind, p in parts if kind == "content")
    assert (reasoning.strip() if splitter.saw_reasoning else None, answer.strip()) == expected
    assert all(p for _, p in parts)


def test_prompt_that_opens_thinking():
    assert prompt_opens_thinking("<|Assistant|><think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n")
