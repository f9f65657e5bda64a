"""Run the GSM8K-style task on a model, a run folder or an exported folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from tunelab.errors import TunelabError
from tunelab.evaluation.gsm8k import (
    PLAIN_STOPS,
    chat_prompt,
    judge,
    mean_and_stderr,
    pick_shots,
    plain_prompt,
    read_problems,
)
from tunelab.inference.chat_model import ChatModel, open_chat_model
from tunelab.outputs import check_files, write_files
from tunelab.quiet import quiet_libraries
from tunelab.recipe import TaskOptions


def evaluate_gsm8k(
    target: str | Path | ChatModel,
    options: TaskOptions,
    out: Path | None = None,
    console: Console | None = None,
) -> dict:
    """Score a model on question/answer problems; returns the summary, writes items to `out`."""
    quiet_libraries()
    check_results_folder(out)
    console = console or Console(stderr=True)
    if options.data is None:
        raise TunelabError("the task needs its data: a .jsonl file of question/answer records.")
    data, shots, seed, style = options.data, options.shots, options.seed, options.style
    batch_size, max_new_tokens = options.batch_size, options.max_new_tokens
    problems = read_problems(Path(data), options.limit, options.last)
    pool = read_problems(Path(options.fewshot_from), options.fewshot_limit) if shots else []
    examples = pick_shots(pool, shots, seed) if shots else []
    model = target if isinstance(target, ChatModel) else open_chat_model(target)
    if style == "auto":
        style = "chat" if model.renderer.template else "plain"
    prompts = _prompts(model, problems, examples, style)
    outputs, generated, seconds = _generate_all(
        model, prompts, style, batch_size, max_new_tokens, console
    )
    records = [
        judge(problem, output, model.opens_thinking(prompt))
        for problem, output, prompt in zip(problems, outputs, prompts)
    ]
    strict = mean_and_stderr([r["strict_correct"] for r in records])
    flexible = mean_and_stderr([r["flexible_correct"] for r in records])
    summary = {
        "task": "gsm8k",
        "model": model.description,
        "data": str(data),
        "items": len(records),
        "shots": shots,
        "fewshot_seed": seed,
        "style": style,
        "strict_match": {"score": strict[0], "stderr": strict[1]},
        "flexible_extract": {"score": flexible[0], "stderr": flexible[1]},
        "seconds": round(seconds, 2),
        "generated_tokens": generated,
        "generation_tokens_per_second": round(generated / max(seconds, 1e-9), 2),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
    }
    if out is not None:
        write_results(Path(out), summary, records)
    summary["records"] = records
    return summary


def _prompts(model: ChatModel, problems, examples, style: str) -> list[list[int]]:
    if style == "chat":
        return [model.prompt_ids(chat_prompt(p, examples)) for p in problems]
    tokenizer = model.tokenizer
    return [
        tokenizer(plain_prompt(p, examples), add_special_tokens=True)["input_ids"] for p in problems
    ]


def _generate_all(model, prompts, style, batch_size, max_new_tokens, console):
    # Similar lengths together waste less padding; results go back in the original order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    outputs: list[str] = [""] * len(prompts)
    generated, started = 0, time.perf_counter()
    stops = PLAIN_STOPS if style == "plain" else ["Question:"]
    with Progress(
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tps]:.0f} tok/s"),
        console=console,
    ) as progress:
        task = progress.add_task("eval", total=len(prompts), tps=0.0)
        for begin in range(0, len(order), batch_size):
            chunk = order[begin : begin + batch_size]
            texts, count = model.generate_ids([prompts[i] for i in chunk], max_new_tokens, stops)
            generated += count
            for index, text in zip(chunk, texts):
                outputs[index] = text
            elapsed = time.perf_counter() - started
            progress.update(task, advance=len(chunk), tps=generated / max(elapsed, 1e-9))
    return outputs, generated, time.perf_counter() - started


def write_results(folder: Path, summary: dict, records: list[dict]) -> None:
    """summary.json and items.jsonl (one line per question) in `folder`, by the rule for
    written files (an evaluation's own earlier results are replaced, nothing else)."""
    items = "".join(
        json.dumps({"index": index, **record}, ensure_ascii=False) + "\n"
        for index, record in enumerate(records)
    )
    summary_text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    write_files(folder, {"summary.json": summary_text, "items.jsonl": items}, RESULTS_KIND)


RESULTS_KIND = "evaluation result"
RESULT_FILES = ("summary.json", "items.jsonl")


def check_results_folder(out: Path | None) -> None:
    """Refuse, before any work, an `out` whose result files are not an earlier evaluation's
    (a run folder's own summary.json, a file of the user's)."""
    if out is not None:
        check_files(Path(out), RESULT_FILES, RESULTS_KIND)
