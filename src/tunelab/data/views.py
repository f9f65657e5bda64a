"""Terminal views of data checks, length statistics and previews."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunelab.data.doctor import CheckResult, Target, preview_segments


def show_check(console: Console, target: Target, result: CheckResult) -> None:
    """Sources with their format (and why), counts, and every bad row."""
    if target.registry_entries:
        table = Table(title=f"registry {target.description}")
        table.add_column("entry")
        table.add_column("status", overflow="fold")
        hub = [e for e in target.registry_entries if e["status"].startswith("hub")]
        for entry in target.registry_entries:
            if entry not in hub:
                table.add_row(entry["name"], entry.get("problem") or entry["status"])
        console.print(table)
        for entry in target.registry_entries:
            for row in entry.get("bad_rows", []):
                console.print(f"  [red]{escape(entry['name'])}[/]: {escape(row)}", soft_wrap=True)
        if hub:
            console.print(
                f"{len(hub)} entries point to model hubs and were not checked (no downloads)"
            )
    table = Table(title=f"data in {target.description}")
    for column in ("source", "format", "why", "read", "kept", "bad"):
        table.add_column(column, overflow="fold")
    for source in result.report.sources:
        table.add_row(
            source["name"],
            source["format"],
            source.get("evidence", ""),
            str(source["read"]),
            str(source["kept"]),
            str(source["bad"]),
        )
    console.print(table)
    report = result.report.as_dict()
    for label, key in (
        ("placeholder messages filled", "placeholders_replaced"),
        ("long answers dropped", "long_answers_dropped"),
        ("duplicates dropped", "duplicates_dropped"),
        ("answers with reasoning", "reasoning_turns"),
        ("answers whose reasoning data.reasoning dropped", "reasoning_dropped"),
    ):
        if report[key]:
            console.print(f"{label}: {report[key]}", highlight=False)
    if result.report.bad_rows:
        console.print(f"[bold red]{len(result.report.bad_rows)} bad row(s):[/]")
        for row in result.report.bad_rows:
            console.print(f"  {row}", markup=False, highlight=False, soft_wrap=True)
    for name in result.empty_sources:
        console.print(
            f"[bold red]{escape(name)} holds no records[/]: the file is empty or blank; "
            "nothing in it can train.",
            highlight=False,
        )
    missing = [e for e in target.registry_entries if e["status"] == "missing file"]
    if not result.problems and not missing:
        console.print("[green]no bad rows[/]")


def show_stats(console: Console, stats: dict) -> None:
    """Length percentiles, the cutoff table, and the suggestion."""
    what = stats.get("measured", "samples")  # what the objective's rows are
    table = Table(title=f"token lengths of {stats['samples']} {what} ({stats['model']} tokenizer)")
    keys = ["min", "mean", "p50", "p90", "p95", "p99", "max"]
    table.add_column("")
    for key in keys:
        table.add_column(key, justify="right")
    for part in ("prompt", "answer", "total"):
        table.add_row(part, *(str(stats[part].get(k, "")) for k in keys))
    console.print(table)
    if "cutoffs" not in stats:  # prompts: nothing is trained, nothing to cut
        return
    cutoffs = Table(title="cost of each cutoff")
    for column in ("max_length", "samples truncated", "trained tokens lost"):
        cutoffs.add_column(column, justify="right")
    for row in stats["cutoffs"]:
        mark = " <- suggested" if row["cutoff"] == stats["suggested_max_length"] else ""
        cutoffs.add_row(
            f"{row['cutoff']}{mark}",
            f"{row['samples_truncated']:.1%}",
            f"{row['trained_tokens_lost']:.2%}",
        )
    console.print(cutoffs)
    console.print(
        f"suggested max_length: [bold]{stats['suggested_max_length']}[/] "
        f"({stats['suggestion_rule']})"
    )
    reasoning = stats.get("reasoning") or {}
    if reasoning.get("answers"):
        console.print(
            f"reasoning: {reasoning['answers']} answers carry it, "
            f"{reasoning['token_share']:.1%} of the assistant tokens",
            highlight=False,
        )
    if "histogram" in stats:
        console.print(f"histogram: {escape(str(stats['histogram']))}", highlight=False)


def show_preview(console: Console, samples, tokenizer, plain: bool) -> None:
    """Each sample's text; trained tokens in green (or inside [[ ]] when plain)."""
    for number, sample in enumerate(samples, start=1):
        console.rule(
            f"sample {number}  {sample.location or ''}  "
            f"{len(sample.input_ids)} tokens, {sample.trained_tokens} trained"
        )
        text = Text()
        for chunk, _ids, trained in preview_segments(sample, tokenizer):
            if plain:
                text.append(f"[[{chunk}]]" if trained else chunk)
            else:
                text.append(chunk, style="bold black on green" if trained else "dim")
        console.print(text, highlight=False, markup=False, soft_wrap=True)


def show_stats_or_json(console: Console, stats: dict, as_json: bool) -> None:
    """`tunelab data stats`: the tables, or the figures as JSON on stdout."""
    if as_json:
        import json

        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        show_stats(console, stats)
