"""The runs the web UI shows and starts. Run folders are the state: the UI finds them on disk
(in progress or finished), starts `tunelab train` as its own process (it outlives the UI), stops
one as Ctrl-C does (a checkpoint is saved) and resumes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe
from tunelab.run import MARKER_FILE, RECIPE_FILE, RunFolder

UI_FOLDER = ".tunelab-ui"  # under the UI's root: the recipes it launched, and their logs
SKIPPED = {".git", ".venv", "node_modules", "__pycache__", UI_FOLDER}


@dataclass
class RunView:
    """What the page shows of one run."""

    path: Path
    state: str  # running, finished, failed, stopped
    step: int
    last_error: str | None


def find_runs(root: Path, depth: int = 3) -> list[Path]:
    """Every run folder under `root` (a stage's folder is part of its run), newest first."""
    found: list[Path] = []

    def visit(folder: Path, left: int) -> None:
        if (folder / MARKER_FILE).is_file() and (folder / RECIPE_FILE).is_file():
            found.append(folder)
            return
        if left == 0:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if child.name not in SKIPPED and not child.name.startswith("."):
                visit(child, left - 1)

    visit(root, depth)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_sweeps(root: Path, depth: int = 3) -> list[Path]:
    """Every sweep folder under `root` (it holds a study journal or a sweep report), newest
    first."""
    found = {
        marker.parent
        for pattern in ("study.journal", "sweep_report.json")
        for level in range(depth + 1)
        for marker in root.glob("/".join(["*"] * level + [pattern]))
        if not SKIPPED.intersection(marker.relative_to(root).parts)
    }
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def view(path: Path, root: Path) -> RunView:
    run = RunFolder(path, writer=False)
    events = run.events()
    step = max((e.step for e in events), default=0)
    last = next((e for e in reversed(events) if e.kind in ("stopped", "failed")), None)
    failed = last if last is not None and last.kind == "failed" else None
    if run.writer_pid() is not None:
        state = "running"
    elif run.summary() is not None:
        state = "finished"
    elif failed is not None:
        state = "failed"
    else:
        state = "stopped"
    error = failed.data.get("error") if failed else None
    if state == "failed" and not error:
        error = last_error_line(log_of(root, path))
    return RunView(path, state, step, error)


def rebase(raw, base: Path, key: str = ""):
    """The recipe with its relative file paths made absolute against `base` (the folder the
    recipe came from), so that it means the same wherever it is written; the run folder
    (`output`) stays relative to where the UI runs."""
    if isinstance(raw, dict):
        return {
            k: raw[k] if k == "output" and not key else rebase(v, base, k) for k, v in raw.items()
        }
    if isinstance(raw, list):
        return [rebase(v, base, key) for v in raw]
    if isinstance(raw, str) and raw and not Path(raw).is_absolute():
        file, _, function = raw.partition(":")  # a reward function given as file.py:name
        for candidate, rest in ((raw, ""), (file, f":{function}" if function else "")):
            if candidate and (base / candidate).exists():
                return str((base / candidate).resolve()) + rest
    return raw


def launch_file(root: Path, output: str) -> Path:
    name = Path(output).name or "run"
    return root / UI_FOLDER / "recipes" / f"{name}.yaml"


def log_of(root: Path, run: Path) -> Path:
    return root / UI_FOLDER / "logs" / f"{run.name}.log"


def launch(
    root: Path, raw: dict, base: Path, resume: bool = False
) -> tuple[Path, subprocess.Popen]:
    """Start `tunelab train` on the recipe `raw` as its own process; (run folder, process).

    The recipe is written (paths made absolute) into the UI's folder and kept for resuming."""
    raw = rebase(raw, base)
    load_recipe(raw)  # a recipe that does not load is said here, not in the run's log
    output = raw.get("output", "runs/run")
    run = (root / output).resolve() if not Path(output).is_absolute() else Path(output)
    if not resume and run.exists() and any(run.iterdir()):
        raise TunelabError(f"{run} already holds a run; give another `output`, or resume that one.")
    raw["output"] = str(run)
    recipe = launch_file(root, str(run))
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), "utf-8")
    log = log_of(root, run)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tunelab", "train", str(recipe)]
    if resume:
        command.append("--resume")
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            command, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "COLUMNS": "100"},
        )  # fmt: skip
    return run, process


def resume(root: Path, run: Path) -> subprocess.Popen:
    """Continue a stopped run with the recipe it was started with."""
    recipe = launch_file(root, str(run))
    raw = yaml.safe_load(recipe.read_text("utf-8")) if recipe.is_file() else None
    if raw is None:
        raw = RunFolder.open(run).read_recipe()
    return launch(root, raw, run.parent, resume=True)[1]


def stop(run: Path) -> int:
    """Ask the process writing `run` to stop as Ctrl-C does: it saves a checkpoint first."""
    pid = RunFolder(run, writer=False).writer_pid()
    if pid is None or pid < 0:
        raise TunelabError(f"{run} is not being trained now; nothing to stop.")
    os.kill(pid, signal.SIGINT)
    return pid


def last_error_line(log: Path) -> str | None:
    """What a run's log says went wrong: its error and the lines that locate it (at most
    six), else its last line."""
    if not log.is_file():
        return None
    lines = [line.strip() for line in log.read_text("utf-8", errors="replace").splitlines()]
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith(("error:", "internal error:")):
            return " ".join(line for line in lines[index : index + 6] if line)
    return next((line for line in reversed(lines) if line), None)


CURVES = ("loss", "eval_loss", "lr", "reward", "grad_norm")  # what the Runs tab can overlay


def part_of(path: Path) -> str:
    """What a run belongs to: the sweep whose trial it is, or its stages; else nothing."""
    parent = path.parent
    if (parent / "study.journal").is_file() or (parent / "sweep_report.json").is_file():
        return f"sweep {parent.name}"
    stages = sorted(p.name for p in path.glob("stage-*"))
    return f"{len(stages)} stages" if stages else ""


def table_row(path: Path, root: Path) -> dict:
    """One run as the Runs tab lists it (its figures from summary.json once it has one)."""
    shown = view(path, root)
    folder = RunFolder(path, writer=False)
    summary = folder.summary() or {}
    try:
        recipe = folder.read_recipe()
    except (OSError, ValueError, TunelabError):
        recipe = {}

    def figure(key: str, scale: float = 1.0, digits: int = 4):
        value = summary.get(key)
        return round(value / scale, digits) if isinstance(value, (int, float)) else None

    return {
        "run": str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
        "status": shown.state,
        "steps": summary.get("steps", shown.step),
        "final loss": figure("final_loss"),
        "validation loss": figure("eval_loss"),
        "tok/s": figure("tokens_per_second", digits=0),
        "peak GiB": figure("peak_memory_bytes", 2**30, 2),
        "method": (recipe.get("method") or {}).get("type", ""),
        "objective": (recipe.get("train") or {}).get("objective", "sft"),
        "part of": part_of(path),
    }


def curve_points(paths: list[Path], metric: str, root: Path) -> list[dict]:
    """(run, step, value) of `metric` for each run, its stages one after another."""
    points = []
    for path in paths:
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        offset = 0
        for stage in sorted(path.glob("stage-*")) or [path]:
            rows = RunFolder(stage, writer=False).metrics()
            points += [{"run": name, "step": offset + row["step"], metric: row[metric]}
                       for row in rows if isinstance(row.get(metric), (int, float))]  # fmt: skip
            offset += max((row.get("step", 0) for row in rows), default=0)
    return points
