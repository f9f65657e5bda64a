"""Scores of a task on the terminal: GSM8K-style strict and flexible matches, or preference
accuracy and margins (scores on stdout, what was scored on stderr), or the summary as JSON."""

from __future__ import annotations

import json

from rich.console import Console

err = Console(stderr=True)


def show_eval(summary: dict, as_json: bool) -> None:
    """A task's summary: JSON, or its scores (stdout) and what was scored (stderr)."""
    summary.pop("records")
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    if summary["task"] == "preference":
        err.print(f"{summary['items']} pairs", highlight=False)
        for name, label in (
            ("accuracy", "preference accuracy   "),
            ("mean_margin", "mean margin           "),
            ("accuracy_per_token", "per-token accuracy    "),
            ("mean_margin_per_token", "per-token mean margin "),
        ):
            score = summary[name]
            unit = " (log-prob)" if name.startswith("mean") else ""
            print(f"{label}{score['score']:.4f} ± {score['stderr']:.4f}{unit}")
        return
    strict, flexible = summary["strict_match"], summary["flexible_extract"]
    err.print(
        f"{summary['items']} items, {summary['shots']}-shot ({summary['style']}), "
        f"{summary['seconds']:.0f} s, {summary['generation_tokens_per_second']:.0f} generated tok/s",
        highlight=False,
    )
    print(f"strict-match     {strict['score']:.4f} ± {strict['stderr']:.4f}")
    print(f"flexible-extract {flexible['score']:.4f} ± {flexible['stderr']:.4f}")


def show_harness(summary: dict) -> None:
    """An lm-evaluation-harness run's summary as JSON (without its samples)."""
    summary.pop("samples")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
