"""Before/after: the same prompts (and optionally a scored task) through two models.

Probe prompts measure what a tune may have cost (general ability); the task measures what it
gained on the target. A prompt may carry `expect`, a word its right answer contains.
"""

from __future__ import annotations

import gc
import html
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunelab.errors import TunelabError
from tunelab.evaluation.gsm8k import flips, read_jsonl
from tunelab.inference.chat_model import open_chat_model
from tunelab.outputs import write_files
from tunelab.quiet import quiet_libraries
from tunelab.recipe import TaskOptions


def read_prompts(path: Path) -> list[dict]:
    """Probe prompts from .jsonl: {"prompt": ..., "expect": optional word} per line (or a string)."""
    if not path.is_file():
        raise TunelabError(f"{path} does not exist; give a .jsonl file of prompts.")
    prompts = []
    for where, record in read_jsonl(path):
        if isinstance(record, str):
            record = {"prompt": record}
        text = record.get("prompt") or record.get("question") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise TunelabError(f"{where}: needs a `prompt` text (and optionally `expect`).")
        prompts.append({"prompt": text, "expect": record.get("expect")})
    if not prompts:
        raise TunelabError(f"{path} has no prompts.")
    return prompts


def answer_prompts(
    target: str, prompts: list[dict], max_new_tokens: int, batch_size: int = 8
) -> tuple[str, list[str]]:
    """(model description, greedy answers) for the prompts; the model is freed afterwards."""
    model = open_chat_model(target)
    answers: list[str] = []
    for begin in range(0, len(prompts), batch_size):
        chunk = prompts[begin : begin + batch_size]
        answers += model.generate(
            [[{"role": "user", "content": p["prompt"]}] for p in chunk], max_new_tokens
        )
    description = model.description
    del model
    gc.collect()
    return description, answers


def compare(
    before: str,
    after: str,
    prompts: list[dict],
    task: TaskOptions | None = None,
    max_new_tokens: int = 128,
    console: Console | None = None,
) -> dict:
    """Everything the report shows, as one JSON-ready dict."""
    quiet_libraries()
    name_a, answers_a = answer_prompts(before, prompts, max_new_tokens)
    name_b, answers_b = answer_prompts(after, prompts, max_new_tokens)
    rows = []
    for prompt, a, b in zip(prompts, answers_a, answers_b):
        row = {"prompt": prompt["prompt"], "before": a, "after": b, "changed": a != b}
        if prompt.get("expect"):
            word = str(prompt["expect"]).lower()
            row.update(
                expect=prompt["expect"],
                before_right=word in a.lower(),
                after_right=word in b.lower(),
            )
        rows.append(row)
    report = {"before": name_a, "after": name_b, "rows": rows, "probe": _probe_summary(rows)}
    if task is not None:
        report["task"] = _task_comparison(before, after, task, console)
    report["summary_line"] = summary_line(report)
    return report


def _probe_summary(rows: list[dict]) -> dict:
    scored = [r for r in rows if "expect" in r]
    return {
        "prompts": len(rows),
        "changed": sum(r["changed"] for r in rows),
        "scored": len(scored),
        "right_before": sum(r["before_right"] for r in scored),
        "right_after": sum(r["after_right"] for r in scored),
    }


def _task_comparison(before: str, after: str, task: TaskOptions, console) -> dict:
    if task.task == "preference":
        return _preference_comparison(before, after, task)
    from tunelab.evaluation.runner import evaluate_gsm8k

    results = {}
    for side, target in (("before", before), ("after", after)):
        summary = evaluate_gsm8k(target, task, console=console)
        results[side] = summary
    a, b = results["before"], results["after"]
    return {
        "items": a["items"],
        "scores": ["strict_match", "flexible_extract"],
        "timing": {
            side: {
                "seconds": r["seconds"],
                "generated_tokens": r["generated_tokens"],
                "generation_tokens_per_second": r["generation_tokens_per_second"],
            }
            for side, r in results.items()
        },
        "strict_match": {
            "before": a["strict_match"],
            "after": b["strict_match"],
            "flips": flips(a["records"], b["records"], "strict_correct"),
        },
        "flexible_extract": {
            "before": a["flexible_extract"],
            "after": b["flexible_extract"],
            "flips": flips(a["records"], b["records"], "flexible_correct"),
        },
        "records": [
            {
                "question": x["question"],
                "gold": x["gold"],
                "before": x["output"],
                "after": y["output"],
                "strict": [x["strict_correct"], y["strict_correct"]],
                "flexible": [x["flexible_correct"], y["flexible_correct"]],
            }
            for x, y in zip(a["records"], b["records"])
        ],
    }


def _preference_comparison(before: str, after: str, task: TaskOptions) -> dict:
    """Preference accuracy and mean margin on the same held-out pairs, before and after."""
    from tunelab.evaluation.preference import SCORES, evaluate_preference

    a, b = (
        evaluate_preference(target, Path(task.data), task.limit, last=task.last)
        for target in (before, after)
    )
    report = {"items": a["items"], "scores": list(SCORES)}
    for name, key in SCORES.items():
        moved = (
            flips(a["records"], b["records"], key, item="location")
            if name.startswith("accuracy")
            else {"wrong_to_right": [], "right_to_wrong": [], "net": 0}
        )
        report[name] = {"before": a[name], "after": b[name], "flips": moved}
    report["records"] = [
        {
            "location": x["location"],
            "margin": [x["margin"], y["margin"]],
            "margin_per_token": [x["margin_per_token"], y["margin_per_token"]],
        }
        for x, y in zip(a["records"], b["records"])
    ]
    return report


LABELS = {"strict_match": "strict-match", "flexible_extract": "flexible",
          "accuracy": "preference accuracy", "mean_margin": "mean margin",
          "accuracy_per_token": "per-token accuracy",
          "mean_margin_per_token": "per-token margin"}  # fmt: skip


def summary_line(report: dict) -> str:
    """One sentence: what the tune gained on the target and what it cost on the probe."""
    parts = []
    task = report.get("task")
    if task:
        for key in task["scores"]:
            before, after = task[key]["before"]["score"], task[key]["after"]["score"]
            flip = task[key]["flips"]
            moved = (
                f"; {len(flip['wrong_to_right'])} wrong->right, "
                f"{len(flip['right_to_wrong'])} right->wrong"
                if not key.startswith("mean_margin")
                else ""
            )
            parts.append(
                f"{LABELS[key]} {before:.3f} -> {after:.3f} ({after - before:+.3f}{moved})"
            )
    probe = report["probe"]
    cost = f"{probe['changed']}/{probe['prompts']} probe answers changed"
    if probe["scored"]:
        cost += f", probe right {probe['right_before']}/{probe['scored']} -> {probe['right_after']}/{probe['scored']}"
    gained = "; ".join(parts) if parts else "no task scored"
    return f"gained on the target: {gained}. Cost on the probe: {cost}."


def show(console: Console, report: dict) -> None:
    table = Table(title=f"before: {report['before']}   after: {report['after']}", show_lines=True)
    for column in ("prompt", "before", "after"):
        table.add_column(column, overflow="fold")
    for row in report["rows"]:
        mark = (
            ""
            if "expect" not in row
            else f" [{'✓' if row['before_right'] else '✗'}→{'✓' if row['after_right'] else '✗'}]"
        )
        table.add_row(row["prompt"] + mark, row["before"], row["after"])
    console.print(table)
    console.print(report["summary_line"], highlight=False)


def write_report(folder: Path, report: dict) -> list[Path]:
    """report.json, report.md and report.html in `folder`, by the rule for written files (an
    earlier comparison's report is replaced, a file of yours never)."""
    files = {
        "report.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n",
        "report.md": _markdown(report),
        "report.html": _html(report),
    }
    return write_files(folder, files, REPORT_KIND)


REPORT_KIND = "comparison report"
REPORT_FILES = ("report.json", "report.md", "report.html")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _markdown(report: dict) -> str:
    lines = [
        f"# Before / after\n\n- before: `{report['before']}`\n- after: `{report['after']}`\n",
        f"**{report['summary_line']}**\n",
    ]
    task = report.get("task")
    if task:
        lines.append(
            f"## Task ({task['items']} items)\n\n| score | before | after | wrong->right | right->wrong |\n|---|---:|---:|---:|---:|"
        )
        for key in task["scores"]:
            b, a, f = task[key]["before"], task[key]["after"], task[key]["flips"]
            lines.append(
                f"| {key} | {b['score']:.3f} ± {b['stderr']:.3f} | {a['score']:.3f} ± {a['stderr']:.3f} "
                f"| {len(f['wrong_to_right'])} | {len(f['right_to_wrong'])} |"
            )
        lines.append("")
    lines.append("## Prompts\n\n| prompt | before | after |\n|---|---|---|")
    for row in report["rows"]:
        lines.append(f"| {_cell(row['prompt'])} | {_cell(row['before'])} | {_cell(row['after'])} |")
    return "\n".join(lines) + "\n"


def _html(report: dict) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr class='{'changed' if r['changed'] else ''}'><td>{esc(r['prompt'])}</td>"
        f"<td>{esc(r['before'])}</td><td>{esc(r['after'])}</td></tr>"
        for r in report["rows"]
    )
    task_html = ""
    task = report.get("task")
    if task:
        cells = "".join(
            f"<tr><td>{key}</td><td>{task[key]['before']['score']:.3f}</td><td>{task[key]['after']['score']:.3f}</td>"
            f"<td>{len(task[key]['flips']['wrong_to_right'])}</td><td>{len(task[key]['flips']['right_to_wrong'])}</td></tr>"
            for key in task["scores"]
        )
        task_html = (
            f"<h2>Task ({task['items']} items)</h2><table><tr><th>score</th><th>before</th><th>after</th>"
            f"<th>wrong→right</th><th>right→wrong</th></tr>{cells}</table>"
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tunelab before/after</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:.4em;vertical-align:top;white-space:pre-wrap}}tr.changed td:last-child{{background:#eef8ee}}</style></head>
<body><h1>Before / after</h1><p>before: <code>{esc(report["before"])}</code><br>after: <code>{esc(report["after"])}</code></p>
<p><b>{esc(report["summary_line"])}</b></p>{task_html}<h2>Prompts</h2>
<table><tr><th>prompt</th><th>before</th><th>after</th></tr>{rows}</table></body></html>
"""


def compare_command(
    before: str, after: str, prompts: Path, out: Path, task, max_new_tokens: int, console
) -> list:
    """`tunelab compare`: the report's files checked before the work, the comparison shown,
    the report written into `out`; the files written."""
    from tunelab.outputs import check_files

    check_files(out, REPORT_FILES, REPORT_KIND)
    report = compare(before, after, read_prompts(prompts), task, min(max_new_tokens, 128), console)
    show(console, report)
    return write_report(out, report)
