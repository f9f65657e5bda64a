"""Checkpoints that survive a crash: written aside, renamed into place, newest kept.

The Trainer writes each checkpoint into a staging folder; once it is complete, a marker is
added and the folder is renamed into `checkpoints/` (one rename, atomic on one filesystem).
A crash mid-write leaves only a staging folder, which resume ignores and clears.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback

STAGING = ".staging"
COMPLETE_MARK = "tunelab_checkpoint.json"
PREFIX = "checkpoint-"


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in a run's checkpoints folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX}*") if (p / COMPLETE_MARK).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(folder)
    return found[-1] if found else None


class AtomicCheckpoints(TrainerCallback):
    """Moves each finished checkpoint out of staging and keeps the newest `keep_last`."""

    def __init__(self, folder: Path, keep_last: int):
        self.folder = folder
        self.keep_last = keep_last

    def on_save(self, args, state, control, **kwargs):
        staged = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if not staged.is_dir():
            return
        mark = {"step": state.global_step, "epoch": state.epoch, "saved_at": time.time()}
        (staged / COMPLETE_MARK).write_text(json.dumps(mark), encoding="utf-8")
        final = self.folder / staged.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        for old in complete_checkpoints(self.folder)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


class SaveOnInterrupt(TrainerCallback):
    """Ctrl-C finishes the current step, saves a checkpoint and stops; a second Ctrl-C aborts."""

    def __init__(self, console: Console):
        self.console = console
        self.requested = False
        self.previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.console.print(
            "[yellow]Ctrl-C: saving a checkpoint after this step (again to abort)[/]"
        )

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. a web UI worker): leave signals alone
            self.previous = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def clear_staging(folder: Path) -> None:
    """Remove half-written checkpoints left by a crash."""
    shutil.rmtree(folder / STAGING, ignore_errors=True)


OPTIMIZER_FILE = "optimizer_state.pt"


class CarryOptimizer(TrainerCallback):
    """Loads a previous stage's optimizer state before the first step of a fresh stage."""

    def __init__(self, path: Path):
        self.path = path

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step == 0 and optimizer is not None and self.path.is_file():
            import torch

            optimizer.load_state_dict(torch.load(self.path, weights_only=True))
            self.path = Path()  # once
