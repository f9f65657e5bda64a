"""GSM8K-style scoring: extraction, n-shot prompts, standard error, flips."""

from __future__ import annotations

import json
import math

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluation.gsm8k import (
    INVALID,
    Problem,
    chat_prompt,
    extract_flexible,
    extract_strict,
    flips,
    mean_and_stderr,
    pick_shots,
    plain_prompt,
    read_problems,
    score,
)


@pytest.mark.parametrize(
    "output, strict, flexible",
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7", "7"),
        ("Total: 1,234 dollars\n#### 1,234", "1234", "1234"),
        ("The loss is -5 degrees.\n#### -5", "-5", "-5"),
        ("Each costs $2.50, so 4 cost $10.00.\n#### 10.00", "10.00", "10.00"),
        ("He paid $18.", INVALID, "18"),
        ("So the answer is 42 cm.", INVALID, "42"),
        ("#### 12\nBut then 13 more.", "12", "13"),
        ("No numbers here.", INVALID, INVALID),
        ("The answer is 7.", INVALID, "7"),
        ("-3 and then 0.5", INVALID, "0.5"),
        ("#### 1,000.", "1000", "1000"),
    ],
)
def test_extraction(output, strict, flexible):
    assert extract_strict(output) == strict
    assert extract_flexible(output) == flexible


def test_gold_and_scoring_ignore_commas_dollars_and_final_period():
    problem = Problem("q", "work <<2*500=1000>>\n#### 1,000")
    assert problem.gold == "1000"
    record = score(problem, "It costs $1,000.")
    assert not record["strict_correct"] and record["flexible_correct"]
    record = score(problem, "#### 1000")
    assert record["strict_correct"] and record["flexible_correct"]
    assert not score(problem, "#### 1000.5")["strict_correct"]


def test_shots_are_seeded_and_prompts_are_built_from_them():
    pool = [Problem(f"q{i}", f"a{i}\n#### {i}") for i in range(50)]
    shots = pick_shots(pool, 3, seed=1234)
    assert shots == pick_shots(pool, 3, seed=1234) and shots != pick_shots(pool, 3, seed=1)
    target = Problem("How many?", "#### 2")
    messages = chat_prompt(target, shots)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    assert (
        messages[1]["content"] == shots[0].answer
        and messages[-1]["content"] == "Question: How many?"
    )
    text = plain_prompt(target, shots)
    assert text.startswith(f"Question: {shots[0].question}\nAnswer: {shots[0].answer}\n\n")
    assert text.endswith("Question: How many?\nAnswer:") and text.count("Question:") == 4
    assert chat_prompt(target, []) == [{"role": "user", "content": "Question: How many?"}]
    with pytest.raises(TunelabError, match="only 50"):
        pick_shots(pool, 51, seed=0)


def test_stderr_matches_the_sample_formula():
    values = [True] * 30 + [False] * 70
    mean, stderr = mean_and_stderr(values)
    assert mean == 0.3
    assert stderr == pytest.approx(math.sqrt(0.3 * 0.7 / 99))
    assert mean_and_stderr([]) == (0.0, 0.0)


def test_flips_count_both_directions():
    before = [{"question": str(i), "ok": v} for i, v in enumerate([True, False, False, True, True])]
    after = [{"question": str(i), "ok": v} for i, v in enumerate([True, True, False, False, True])]
    assert flips(before, after, "ok") == {"wrong_to_right": [1], "right_to_wrong": [3], "net": 0}
    with pytest.raises(TunelabError, match="same questions"):
        flips(before, after[::-1], "ok")


def test_read_problems_limit_last_and_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        "\n".join(json.dumps({"question": f"q{i}", "answer": f"x\n#### {i}"}) for i in range(10))
    )
    assert [p.question for p in read_problems(path, limit=3)] == ["q0", "q1", "q2"]
    assert [p.question for p in read_problems(path, limit=3, last=True)] == ["q7", "q8", "q9"]
    path.write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(TunelabError, match=r"p.jsonl:1: needs `question`"):
        read_problems(path)
    path.write_bytes(b'{"question": "q", "answer": "x #### 1"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(TunelabError, match=r"p.jsonl:2: byte 17 of the line is not valid UTF-8"):
        read_problems(path)
    path.write_text('{"question": "q \\ud83d", "answer": "x #### 1"}\n')
    with pytest.raises(TunelabError, match=r"p.jsonl:1 field `question`: holds a lone UTF-16"):
        read_problems(path)
