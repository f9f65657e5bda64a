"""Trainer callbacks: metrics.jsonl, a rich progress bar, and step timing."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Records when the first optimizer step ended and when training started and ended."""

    def __init__(self, started_at: float):
        self.started_at = started_at
        self.train_begin: float | None = None
        self.first_step_end: float | None = None
        self.train_end: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step_end is None:
            self.first_step_end = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.train_end = time.perf_counter()

    @property
    def time_to_first_step(self) -> float:
        return (self.first_step_end or time.perf_counter()) - self.started_at

    @property
    def train_seconds(self) -> float:
        return (self.train_end or time.perf_counter()) - (self.train_begin or self.started_at)


class MetricsWriter(TrainerCallback):
    """Appends one JSON line per logged step (loss, lr, grad norm, tokens) and per validation."""

    def __init__(self, path: Path):
        self.path = path
        self.losses: list[float] = []
        self.eval_losses: list[float] = []
        self.last_eval_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if "loss" in logs:
            row = {
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "loss": logs["loss"],
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens": int(state.num_input_tokens_seen),
            }
            self.losses.append(logs["loss"])
        elif "eval_loss" in logs:
            row = {
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "eval_loss": logs["eval_loss"],
            }
            self.eval_losses.append(logs["eval_loss"])
            self.last_eval_step = state.global_step
        else:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def keep_rows_up_to(path: Path, step: int) -> None:
    """Drop lines written after `step` (by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class RichProgress(TrainerCallback):
    """A progress bar with loss, learning rate and real tokens per second."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.loss = math.nan
        self.lr = 0.0
        self.begin = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:.0f} tok/s"
            ),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, loss=math.nan, lr=0.0, tps=0.0
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.loss = logs["loss"]
        self.lr = logs.get("learning_rate", self.lr)
        if self.progress is not None:
            self.progress.update(self.task, loss=self.loss, lr=self.lr)
        if (
            self.progress is not None
            and not self.console.is_terminal
            and self._is_report_step(state)
        ):
            # A live bar only draws on a terminal; logs get a line every ~5% instead.
            self.console.print(
                f"step {state.global_step}/{state.max_steps}  loss {self.loss:.4f}  "
                f"lr {self.lr:.2e}  {self._tokens_per_second(state):.0f} tok/s  "
                f"{time.perf_counter() - self.begin:.0f} s",
                highlight=False,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=state.global_step,
                loss=self.loss,
                lr=self.lr,
                tps=self._tokens_per_second(state),
            )

    def _tokens_per_second(self, state) -> float:
        return state.num_input_tokens_seen / max(time.perf_counter() - self.begin, 1e-9)

    @staticmethod
    def _is_report_step(state) -> bool:
        every = max(1, state.max_steps // 20)
        return state.global_step % every == 0 or state.global_step == state.max_steps

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class RunStarted(TrainerCallback):
    """After the first optimizer step, the run that this one replaced is removed for good."""

    def __init__(self, run):
        self.run = run

    def on_step_end(self, args, state, control, **kwargs):
        self.run.confirm_start()
