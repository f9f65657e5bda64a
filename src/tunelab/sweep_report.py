"""A sweep's ranked report: every trial as a row (parameters, objective, the other numbers
asked for, time, peak memory), ranked by the objective, in JSON, Markdown, a table on the
console, and an HTML page with the plots Optuna draws (objective per trial, parameter
importance, parallel coordinates) and the loss curves of the best trials overlaid."""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from pathlib import Path

from rich.console import Console

from tunelab.outputs import write_files
from tunelab.run import RunFolder

REPORT = "sweep_report"
BEST_CURVES = 4  # the best trials whose loss curves are overlaid


def rows(study, folder: Path, metrics: list[str], dig) -> list[dict]:
    """One row per trial the sweep asked (the surplus of late workers left out); a trial cut
    short and rerun is `interrupted`."""
    found, trials = [], study.get_trials(deepcopy=False)
    rerun = {t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}
    for trial in trials:
        if trial.user_attrs.get("surplus"):
            continue
        state = "interrupted" if trial.number in rerun else trial.state.name.lower()
        run = Path(trial.user_attrs.get("run", folder / f"trial-{trial.number:03d}"))
        summary = RunFolder.follow(run).summary() or {}
        found.append({
            "trial": trial.number, "state": state, "params": trial.params,
            "value": trial.value, "run": str(run),
            "train_seconds": summary.get("train_seconds"),
            "peak_memory_bytes": summary.get("peak_memory_bytes"),
            "metrics": {key: dig(summary, key) for key in metrics},
            "error": trial.user_attrs.get("error"),
        })  # fmt: skip
    return found


def ranked(trials: list[dict], objective: str, direction: str, metrics: list[str]) -> dict:
    """The report's body: complete trials best first, then the pruned (best first), then
    the rest (failed, interrupted, running)."""
    rising = direction == "maximize"

    def best_first(state: str) -> list[dict]:
        chosen = [t for t in trials if t["state"] == state and t["value"] is not None]
        return sorted(chosen, key=lambda t: t["value"], reverse=rising)

    complete, pruned = best_first("complete"), best_first("pruned")
    rest = [t for t in trials if t not in complete and t not in pruned]
    return {"objective": objective, "direction": direction, "metrics": metrics,
            "best": complete[0] if complete else None,
            "trials": complete + pruned + rest}  # fmt: skip


def table(body: dict) -> tuple[list[str], list[list[str]]]:
    """The ranking as header and text cells (rank only for complete trials)."""
    keys = sorted({k for t in body["trials"] for k in t["params"]})
    header = ["rank", "trial", "state", *keys, body["objective"], *body["metrics"],
              "train s", "peak memory"]  # fmt: skip
    cells = []
    for rank, t in enumerate(body["trials"], start=1):
        memory = t["peak_memory_bytes"]
        cells.append([
            str(rank) if t["state"] == "complete" else "", str(t["trial"]), t["state"],
            *(short(t["params"].get(k, "")) for k in keys), number(t["value"]),
            *(number(t["metrics"].get(k)) for k in body["metrics"]),
            f"{t['train_seconds']:.0f}" if t["train_seconds"] else "",
            f"{memory / 2**30:.2f} GiB" if memory else "",
        ])  # fmt: skip
    return header, cells


def short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def number(value) -> str:
    return "" if value is None else f"{value:.4g}"


def markdown(body: dict) -> str:
    header, cells = table(body)
    lines = [f"# Sweep: {body['objective']} ({body['direction']})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def show(console: Console, body: dict) -> None:
    from rich.table import Table

    header, cells = table(body)
    shown = Table(title=f"sweep ranked by {body['objective']} ({body['direction']})")
    for column in header:
        shown.add_column(column)
    for row in cells:
        shown.add_row(*row)
    if console.is_terminal:
        console.print(shown)
        return
    # a log or a pipe gets the whole table, a line per trial, not folded into 80 columns
    kept, console.width = console.width, max(console.width, 240)
    try:
        console.print(shown)
    finally:
        console.width = kept


def write(folder: Path, body: dict, study, best_recipe: str | None) -> None:
    """sweep_report.json, .md and .html (and best_recipe.yaml), checked before any is written."""
    files = {
        f"{REPORT}.json": json.dumps(body, indent=2),
        f"{REPORT}.md": markdown(body),
        f"{REPORT}.html": page(body, study),
    }
    if best_recipe is not None:
        files["best_recipe.yaml"] = best_recipe
    write_files(folder, files, "sweep report")


def page(body: dict, study) -> str:
    header, cells = table(body)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells
    )
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, data in plots(body, study).items()
    )
    title = html.escape(f"Sweep: {body['objective']} ({body['direction']})")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "figure{display:inline-block;margin:1em}img{max-width:640px}</style></head><body>"
        f"<h1>{title}</h1><table><tr>{head}</tr>{lines}</table>{figures}</body></html>\n"
    )


def plots(body: dict, study) -> dict[str, str]:
    """Each plot that the trials so far allow, as base64 PNG by its caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as drawn

    complete = [t for t in body["trials"] if t["state"] == "complete"]
    wanted = {"objective per trial": drawn.plot_optimization_history}
    if len(complete) >= 2 and complete[0]["params"]:
        wanted["parameter importance"] = drawn.plot_param_importances
        wanted["parallel coordinates"] = drawn.plot_parallel_coordinate
    made = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, draw in wanted.items():
            made[name] = _png(draw(study).figure, plt)
        curves = _curves(complete[:BEST_CURVES], plt)
    if curves is not None:
        made[f"loss of the best {min(len(complete), BEST_CURVES)} trials"] = curves
    return made


def _curves(best: list[dict], plt) -> str | None:
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    drawn = False
    for t in best:
        rows = RunFolder.follow(t["run"]).metrics()
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        if not train:
            continue
        line = axis.plot(*zip(*train), label=f"trial {t['trial']} train")[0]
        drawn = True
        if evals:
            axis.plot(*zip(*evals), marker="o", linestyle="--", color=line.get_color(),
                      label=f"trial {t['trial']} validation")  # fmt: skip
    if not drawn:
        plt.close(figure)
        return None
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)
    return _png(figure, plt)


def _png(figure, plt) -> str:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
