"""Writes arithmetic.jsonl: 500 one-step sums, differences and products with their answers in
GSM8K's layout (`#### N` ends the answer), the same every time (fixed seed).

    python examples/data/make_arithmetic.py
"""

import json
import random
from pathlib import Path


def problems(count: int = 500, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(count):
        op = rng.choice("+-*")
        a, b = (
            (rng.randint(2, 12), rng.randint(2, 12))
            if op == "*"
            else (rng.randint(1, 50), rng.randint(1, 50))
        )
        if op == "-" and b > a:
            a, b = b, a
        value = a + b if op == "+" else a - b if op == "-" else a * b
        yield {
            "question": f"What is {a} {op} {b}?",
            "answer": f"{a} {op} {b} = {value}\n#### {value}",
        }


if __name__ == "__main__":
    out = Path(__file__).with_name("arithmetic.jsonl")
    out.write_text("".join(json.dumps(p) + "\n" for p in problems()), encoding="utf-8")
