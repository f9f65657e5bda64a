"""The self-identity demo: answers before, a fine-tune, answers after, on held-out questions."""

from __future__ import annotations

import gc
import json
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunelab.inference.chat_model import open_chat_model
from tunelab.quiet import quiet_libraries
from tunelab.recipe import load_recipe
from tunelab.run import RunFolder
from tunelab.training.runner import train

DEMO_PROMPT = "Who are you?"


def identity_probes() -> dict[str, list]:
    """Questions never seen in the built-in identity data.

    `identity` are other phrasings of who-are-you questions; `unrelated` are questions the base
    model answers correctly, each with a word the right answer contains, to see what the tune
    kept of general ability.
    """
    text = (
        resources.files("tunelab.data.builtin").joinpath("identity_probes.json").read_text("utf-8")
    )
    return json.loads(text)


def mentions(answer: str, name: str) -> bool:
    """Whether an answer gives the new name (case-insensitive)."""
    return name.lower() in answer.lower()


def ask_all(model, questions: list[str], max_new_tokens: int = 60) -> list[str]:
    return model.generate([[{"role": "user", "content": q}] for q in questions], max_new_tokens)


def run_demo(recipe_path: str | Path, overrides: list[str], console: Console) -> dict:
    """Train the identity recipe and show what changed; returns the before/after record."""
    quiet_libraries()
    recipe = load_recipe(recipe_path, overrides)
    name = recipe.data.replace.get("{{name}}", "")
    probes = identity_probes()
    questions = [DEMO_PROMPT, *probes["identity"], *(u["question"] for u in probes["unrelated"])]

    console.print(f"[bold]1/3[/] answers of the base model {recipe.model.path}")
    base = open_chat_model(recipe.model.path)
    before = ask_all(base, questions)
    del base
    gc.collect()

    console.print("[bold]2/3[/] fine-tuning")
    result = train(recipe, overwrite=True, console=console)

    console.print("[bold]3/3[/] answers of the tuned model")
    tuned = open_chat_model(result.run_dir)
    after = ask_all(tuned, questions)

    record = _record(questions, before, after, probes, name, result)
    RunFolder(result.run_dir).write_json("demo.json", record)
    _show(console, record, name)
    return record


def _record(questions, before, after, probes, name, result) -> dict:
    identity = set(probes["identity"])
    expected = {u["question"]: u["expect"] for u in probes["unrelated"]}
    rows = []
    for question, old, new in zip(questions, before, after):
        kind = (
            "identity"
            if question in identity
            else ("unrelated" if question in expected else "demo")
        )
        row = {"question": question, "kind": kind, "before": old, "after": new}
        if kind == "unrelated":
            row["expect"] = expected[question]
        rows.append(row)
    held_out = [r for r in rows if r["kind"] == "identity"]
    unrelated = [r for r in rows if r["kind"] == "unrelated"]
    return {
        "name": name,
        "held_out_with_name_before": sum(mentions(r["before"], name) for r in held_out),
        "held_out_with_name_after": sum(mentions(r["after"], name) for r in held_out),
        "held_out_total": len(held_out),
        "unrelated_right_before": sum(mentions(r["before"], r["expect"]) for r in unrelated),
        "unrelated_right_after": sum(mentions(r["after"], r["expect"]) for r in unrelated),
        "unrelated_total": len(unrelated),
        "rows": rows,
        "run_dir": str(result.run_dir),
        "train_seconds": result.summary["train_seconds"],
    }


def _show(console: Console, record: dict, name: str) -> None:
    table = Table(
        title="before / after (questions below the first were never trained on)", show_lines=True
    )
    for column in ("question", "before", "after"):
        table.add_column(column, overflow="fold")
    for row in record["rows"]:
        table.add_row(row["question"], row["before"], row["after"])
    console.print(table)
    console.print(
        f"held-out identity questions answered with the name {name!r}: "
        f"before {record['held_out_with_name_before']}/{record['held_out_total']}, "
        f"after {record['held_out_with_name_after']}/{record['held_out_total']}; "
        f"unrelated questions answered right: before {record['unrelated_right_before']}/"
        f"{record['unrelated_total']}, after {record['unrelated_right_after']}/{record['unrelated_total']}"
    )
    first = record["rows"][0]
    print(f"Q: {first['question']}\nbefore: {first['before']}\nafter:  {first['after']}")
    print(f"run folder: {record['run_dir']}")
