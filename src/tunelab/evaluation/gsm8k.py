"""GSM8K-style exact match: prompts with n shots, answer extraction, scores with standard error.

Scoring follows lm-evaluation-harness's gsm8k task so figures are comparable:
- strict-match takes the number after the first `#### `;
- flexible-extract takes the last number in the output;
both compare to the gold answer after dropping commas, `$` and a trailing period, ignoring case.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.conversation import RowError
from tunelab.data.readers import read_records
from tunelab.errors import TunelabError
from tunelab.reasoning import split_reasoning

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
INVALID = "[invalid]"
PLAIN_STOPS = ["Question:", "</s>", "<|im_end|>"]  # as lm-evaluation-harness gsm8k


@dataclass
class Problem:
    question: str
    answer: str  # the worked solution ending in "#### N"

    @property
    def gold(self) -> str:
        return normalize(self.answer.split("#### ")[-1])


def normalize(text: str) -> str:
    """Drop commas, dollar signs and a trailing period; trim; lower-case."""
    text = text.replace(",", "").replace("$", "").strip()
    text = re.sub(r"\.$", "", text)
    return text.lower()


def extract_strict(output: str) -> str:
    """The number after the first `#### `, or [invalid]."""
    match = STRICT.search(output)
    return normalize(match.group(1)) if match else INVALID


def extract_flexible(output: str) -> str:
    """The last number anywhere in the output, or [invalid]."""
    matches = FLEXIBLE.findall(output)
    if not matches:
        return INVALID
    last = next(group for group in matches[-1] if group)
    return normalize(last)


def read_jsonl(path: Path):
    """(where, record) for each record of a .jsonl (or .json) file, `where` as `file:line`; a
    record that cannot be read (broken JSON, bytes that are not UTF-8, half a UTF-16 pair) is
    one clear error."""
    for location, record in read_records(path):
        if isinstance(record, RowError):
            raise TunelabError(f"{record}; fix that line.")
        yield str(location), record


def read_problems(path: Path, limit: int | None = None, last: bool = False) -> list[Problem]:
    """question/answer records from a .jsonl file (the last `limit` ones with last=True)."""
    if not path.is_file():
        raise TunelabError(f"{path} does not exist; give a .jsonl file of question/answer records.")
    problems = []
    for where, record in read_jsonl(path):
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("question"), str)
            or not isinstance(record.get("answer"), str)
            or "####" not in record["answer"]
        ):
            raise TunelabError(
                f"{where}: needs `question` and an `answer` ending in `#### <number>`."
            )
        problems.append(Problem(record["question"], record["answer"]))
    if limit:
        problems = problems[-limit:] if last else problems[:limit]
    return problems


def pick_shots(pool: list[Problem], shots: int, seed: int) -> list[Problem]:
    """`shots` examples drawn from the pool with a fixed seed (the same for every question)."""
    if shots > len(pool):
        raise TunelabError(f"--shots {shots} but the few-shot file has only {len(pool)} problems.")
    return [pool[i] for i in random.Random(seed).sample(range(len(pool)), shots)]


def chat_prompt(problem: Problem, shots: list[Problem]) -> list[dict]:
    """The shots as earlier user/assistant turns, then the question (for chat models)."""
    messages = []
    for shot in shots:
        messages += [
            {"role": "user", "content": f"Question: {shot.question}"},
            {"role": "assistant", "content": shot.answer},
        ]
    messages.append({"role": "user", "content": f"Question: {problem.question}"})
    return messages


def plain_prompt(problem: Problem, shots: list[Problem]) -> str:
    """`Question: ...\\nAnswer: ...` blocks, then the question (for base models)."""
    blocks = [f"Question: {s.question}\nAnswer: {s.answer}" for s in shots]
    blocks.append(f"Question: {problem.question}\nAnswer:")
    return "\n\n".join(blocks)


def mean_and_stderr(values: list[bool]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n))."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    variance = sum((float(v) - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def score(problem: Problem, output: str) -> dict:
    """Per-item record: both extractions and whether each is right."""
    strict, flexible = extract_strict(output), extract_flexible(output)
    return {
        "question": problem.question,
        "gold": problem.gold,
        "output": output,
        "strict": strict,
        "flexible": flexible,
        "strict_correct": strict == problem.gold,
        "flexible_correct": flexible == problem.gold,
    }


def judge(problem: Problem, output: str, opened: bool = False) -> dict:
    """The verdict on one generated output, for `tunelab eval` and the gsm8k reward alike: both
    extractions read the answer after any reasoning (`opened`: the prompt already opened the
    reasoning block), up to where a next `Question:` would begin; the reasoning is kept beside."""
    reasoning, answer = split_reasoning(output, opened)
    record = score(problem, answer.split("Question:")[0])
    if reasoning is not None:
        record["reasoning"] = reasoning
    return record


def flips(before: list[dict], after: list[dict], key: str, item: str = "question") -> dict:
    """Items that went wrong->right and right->wrong between two runs of the same items
    (named by their `item` field)."""
    if [b[item] for b in before] != [a[item] for a in after]:
        raise TunelabError("the two evaluations are not on the same questions in the same order.")
    gained = [i for i, (b, a) in enumerate(zip(before, after)) if not b[key] and a[key]]
    lost = [i for i, (b, a) in enumerate(zip(before, after)) if b[key] and not a[key]]
    return {"wrong_to_right": gained, "right_to_wrong": lost, "net": len(gained) - len(lost)}
