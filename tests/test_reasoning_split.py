"""Reasoning told apart from the answer, whole and when streamed in any pieces."""

from __future__ import annotations

import pytest

from tunelab.reasoning import ReasoningSplitter, prompt_opens_thinking, split_reasoning

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


def test_chat_shows_reasoning_apart_or_hides_it(thinker_dir):
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.inference.chat_model import Sampling, open_chat_model

    question = "Tell me about the number 7."
    options = ["--max-new-tokens", "24", "--temperature", "1", "--seed", "5"]
    engine = open_chat_model(str(thinker_dir))
    conversation = [{"role": "user", "content": question}]
    raw = engine.generate([conversation], 24, sampling=Sampling(1.0, seed=5))[0]
    reasoning, answer = split_reasoning(raw, opened=True)
    assert reasoning
    runner = CliRunner(env={"COLUMNS": "400"})
    shown = runner.invoke(app, ["chat", str(thinker_dir), "-p", question, *options])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.strip() == answer
    assert " ".join(reasoning.split()) in " ".join(shown.stderr.split())
    hidden = runner.invoke(
        app, ["chat", str(thinker_dir), "-p", question, *options, "--hide-reasoning"]
    )
    assert hidden.exit_code == 0 and hidden.stdout.strip() == answer
    assert reasoning.split()[0] not in hidden.stderr

    talk = runner.invoke(app, ["chat", str(thinker_dir), *options], input=question + "\n/exit\n")
    assert talk.exit_code == 0, talk.output
    assert "thinking> " in talk.stdout and "assistant> " in talk.stdout
