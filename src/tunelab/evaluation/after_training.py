"""The before/after evaluation a recipe's `evaluate:` section asks for when training ends:
the base model and the trained run on the probe prompts (and the task), the report into the
run folder and its figures into the summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from tunelab.recipe import Recipe, TaskOptions
from tunelab.run import (
    SUMMARY_FILE,
    RunFolder,
)


def evaluate_after(recipe: Recipe, run: RunFolder, summary: dict, console) -> None:
    """The recipe's before/after evaluation of the finished run in `run`, its figures into
    `summary` (and summary.json); nothing when the recipe asks for none."""
    if recipe.evaluate is not None and run.writer:
        summary["before_after"] = _before_after(recipe, run.path, console)
        run.write_json(SUMMARY_FILE, summary)


def _before_after(recipe: Recipe, run_dir: Path, console: Console) -> dict:
    """Compare the base model with the trained run and write the report into the run folder."""
    from tunelab.data.load import find_path
    from tunelab.evaluation import compare

    cfg = recipe.evaluate
    where = recipe.source_dir

    def path(text):
        return str(find_path(text, where)) if text else None

    task = None
    if cfg.task:
        task = TaskOptions.model_validate(
            {
                **cfg.model_dump(exclude={"prompts"}),
                "data": path(cfg.data),
                "fewshot_from": path(cfg.fewshot_from),
            }
        )
    console.rule("before / after")
    prompts = compare.read_prompts(Path(path(cfg.prompts))) if cfg.prompts else []
    report = compare.compare(
        recipe.model.path,
        str(run_dir),
        prompts,
        task,
        min(cfg.max_new_tokens, 128),
        console,
    )
    compare.show(console, report)
    compare.write_report(run_dir / "report", report)
    outcome = {
        "summary_line": report["summary_line"],
        "probe": report["probe"],
        "report": "report/",
    }
    if "task" in report:
        outcome["task"] = {
            k: {
                "before": report["task"][k]["before"]["score"],
                "after": report["task"][k]["after"]["score"],
                "wrong_to_right": len(report["task"][k]["flips"]["wrong_to_right"]),
                "right_to_wrong": len(report["task"][k]["flips"]["right_to_wrong"]),
            }
            for k in report["task"]["scores"]
        }
    return outcome
