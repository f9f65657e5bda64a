"""Trainer callbacks: metrics.jsonl, run events and their console view, and step timing."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback

from tunelab.events import RunEvent, RunEvents


class StepTimer(TrainerCallback):
    """Records when the first optimizer step ended and when training started and ended."""

    def __init__(self, started_at: float):
        self.started_at = started_at
        self.train_begin: float | None = None
        self.first_step_end: float | None = None
        self.train_end: float | None = None
        self.tokens_before = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()
        self.tokens_before = int(state.num_input_tokens_seen)  # a resumed run's earlier tokens

    def began(self) -> bool:
        """Whether training began (a resumed run's checkpoint was read back)."""
        return self.train_begin is not None

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


# Trainer log keys that a metrics line holds under its own names, or that are bookkeeping
OWN_KEYS = {"loss", "learning_rate", "grad_norm", "epoch", "eval_loss", "num_input_tokens_seen",
            "train_tokens_per_second", "eval_runtime", "eval_samples_per_second",
            "eval_steps_per_second", "train_runtime", "num_tokens"}  # fmt: skip


def _extra(logs: dict) -> dict:
    """The objective's own metrics (e.g. rewards/margins of a preference run), rounded."""
    return {
        key: round(value, 6)
        for key, value in logs.items()
        if key not in OWN_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class MetricsWriter(TrainerCallback):
    """Appends one JSON line per logged step (loss, lr, grad norm, tokens, and whatever else the
    objective logs, such as a preference run's rewards) and per validation."""

    def __init__(self, path: Path):
        self.path = path
        self.losses: list[float] = []
        self.eval_losses: list[float] = []
        self.last_eval_step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:  # the final loss, whatever train.log_every
            control.should_log = True

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
                **_extra(logs),
            }
            self.losses.append(logs["loss"])
        elif "eval_loss" in logs:
            row = {
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "eval_loss": logs["eval_loss"],
                **_extra(logs),
            }
            self.eval_losses.append(logs["eval_loss"])
            self.last_eval_step = state.global_step
        else:
            return
        if state.is_world_process_zero:  # one process writes the run folder
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")


def keep_rows_up_to(path: Path, step: int) -> None:
    """Drop lines written after `step` (by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _objective_metrics(logs: dict) -> dict:
    """A preference run's reward margin and accuracy, a grpo run's mean reward and its spread,
    for the progress line."""
    names = {"rewards/margins": "margin", "rewards/accuracies": "accuracy", "reward": "reward",
             "reward_std": "spread"}  # fmt: skip
    return {short: logs[key] for key, short in names.items() if key in logs}


class EventSource(TrainerCallback):
    """Turns the Trainer's hooks into run events: started, step (each logged loss), eval."""

    def __init__(self, events: RunEvents):
        self.events = events

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.events.emit(
                "started",
                state.global_step,
                max_steps=state.max_steps,
                tokens=int(state.num_input_tokens_seen),  # seen before a resume
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:  # one process tells the run
            return
        logs = logs or {}
        if "loss" in logs:
            self.events.emit(
                "step",
                state.global_step,
                max_steps=state.max_steps,
                loss=logs["loss"],
                lr=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                tokens=int(state.num_input_tokens_seen),
                epoch=round(state.epoch or 0.0, 4),
                **_objective_metrics(logs),
            )
        elif "eval_loss" in logs:
            self.events.emit("eval", state.global_step, eval_loss=logs["eval_loss"])


class ConsoleView:
    """Follows a run's events on the console: a progress bar with loss, learning rate and real
    tokens per second (a line every ~5% when the console is not a terminal), sample answers."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.begin = time.perf_counter()
        self.tokens_before = 0  # tokens a resumed run had seen before this process

    def __call__(self, event: RunEvent) -> None:
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def _on_started(self, event: RunEvent) -> None:
        self.begin = time.perf_counter()
        self.tokens_before = event.data.get("tokens", 0)
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
            "train",
            total=event.data["max_steps"],
            completed=event.step,
            loss=math.nan,
            lr=0.0,
            tps=0.0,
        )

    def _on_step(self, event: RunEvent) -> None:
        data = event.data
        elapsed = time.perf_counter() - self.begin
        tps = (data["tokens"] - self.tokens_before) / max(elapsed, 1e-9)
        if self.progress is not None:
            self.progress.update(
                self.task, completed=event.step, loss=data["loss"], lr=data["lr"] or 0.0, tps=tps
            )
        if not self.console.is_terminal and _is_report_step(event.step, data["max_steps"]):
            # A live bar only draws on a terminal; logs get a line every ~5% instead.
            rewards = "".join(
                f"  {name} {data[name]:.3f}"
                for name in ("margin", "accuracy", "reward", "spread")
                if name in data
            )
            self.console.print(
                f"step {event.step}/{data['max_steps']}  loss {data['loss']:.4f}{rewards}  "
                f"lr {data['lr'] or 0.0:.2e}  {tps:.0f} tok/s  {elapsed:.0f} s",
                highlight=False,
            )

    def _on_sample(self, event: RunEvent) -> None:
        self.console.print(
            f"[dim]step {event.step}[/] [bold]{escape(event.data['prompt'])}[/] -> "
            f"{escape(event.data['answer'])}",
            highlight=False,
        )

    def _on_finished(self, event: RunEvent) -> None:
        self._stop()

    def _on_failed(self, event: RunEvent) -> None:
        self._stop()

    _on_stopped = _on_failed

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _is_report_step(step: int, max_steps: int) -> bool:
    every = max(1, max_steps // 20)
    return step % every == 0 or step == max_steps


class RunStarted(TrainerCallback):
    """After the first optimizer step, the run that this one replaced is removed for good."""

    def __init__(self, run):
        self.run = run

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.run.confirm_start()
