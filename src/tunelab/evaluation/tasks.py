"""A task from the command line (`tunelab eval`, `tunelab compare`): its options checked into
the same typed `TaskOptions` a recipe's evaluate section uses (each mistake told as its
option), then scored by the task's own evaluation."""

from __future__ import annotations

from tunelab.errors import TunelabError

TASKS = {"gsm8k": "a .jsonl file of question/answer records", "preference": "a file of "
         "preference pairs"}  # fmt: skip


def check_task(task: str, data) -> None:
    """A task tunelab has, with its --data."""
    if task not in TASKS:
        raise TunelabError(f"--task {task} is not known; tunelab has {' and '.join(TASKS)}.")
    if data is None:
        raise TunelabError(f"--task {task} needs --data, {TASKS[task]}.")


def task_options(task: str, data, shots: int = 0, fewshot_from=None, **given):
    """The typed task options (`given`: fewshot_limit, limit, last, seed, style, batch_size,
    max_new_tokens)."""
    from pydantic import ValidationError

    from tunelab.recipe import TaskOptions

    check_task(task, data)
    if shots and fewshot_from is None:
        raise TunelabError(
            "--shots needs --fewshot-from, a file the examples are drawn from "
            "(not the one being scored)."
        )
    try:
        return TaskOptions(task=task, data=str(data), shots=shots,
                           fewshot_from=str(fewshot_from) if fewshot_from else None,
                           **given)  # fmt: skip
    except ValidationError as exc:
        problem = exc.errors()[0]
        option = "--" + str(problem["loc"][0]).replace("_", "-") if problem["loc"] else "option"
        raise TunelabError(f"{option}: {problem['msg']}.") from None


def evaluate_task(target, options, out=None, console=None) -> dict:
    """The task's summary for `target`: GSM8K-style exact match, or preference accuracy."""
    from pathlib import Path

    out = Path(out) if out else None
    if options.task == "preference":
        from tunelab.evaluation.preference import evaluate_preference

        return evaluate_preference(target, Path(options.data), options.limit, out, options.last)
    from tunelab.evaluation.runner import evaluate_gsm8k

    return evaluate_gsm8k(target, options, out, console)
