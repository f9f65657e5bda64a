"""The loss plot written into the run folder at the end, and several runs' curves overlaid on
one chart (the web UI's Runs tab)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_losses(metrics_file: Path, out: Path) -> Path | None:
    """Training (and validation) loss against step, as a PNG; None if nothing was logged
    (a run shorter than train.log_every writes no metrics)."""
    if not metrics_file.is_file():
        return None
    rows = [
        json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line
    ]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    axis.plot(*zip(*train), label="train loss")
    if evals:
        axis.plot(*zip(*evals), marker="o", label="validation loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return out


def overlaid(series: dict[str, list[tuple[float, float]]], metric: str):
    """A matplotlib figure with one line per run (its name in the legend), titled axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4.2), dpi=100)
    for name, points in series.items():
        axis.plot(*zip(*points), label=name, linewidth=1.6)
    axis.set_xlabel("step")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    if series:
        axis.legend(loc="best", fontsize=9)
    figure.tight_layout()
    plt.close(figure)  # gradio draws it; pyplot need not keep it
    return figure
