"""Checkpoints that survive a crash: written aside, renamed into place, newest kept.

The Trainer writes each checkpoint into a staging folder; once it is complete, a marker is
added and the folder is renamed into `checkpoints/` (one rename, atomic on one filesystem).
A crash mid-write leaves only a staging folder, which resume ignores and clears.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from transformers import TrainerCallback

from tunelab.errors import TunelabError
from tunelab.failures import is_disk_full
from tunelab.ranks import wait_for_everyone
from tunelab.run import CHECKPOINTS_DIR, safetensors_problem

STAGING = ".staging"
COMPLETE_MARK = "tunelab_checkpoint.json"
PREFIX = "checkpoint-"


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in a run's checkpoints folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [  # checkpoint-N only: a user's copy beside them (checkpoint-2.bak) is not ours
        p
        for p in folder.glob(f"{PREFIX}*")
        if p.name[len(PREFIX) :].isdigit() and (p / COMPLETE_MARK).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def checkpoint_problem(path: Path) -> str | None:
    """None if the checkpoint is whole, else what is damaged in it."""
    try:
        mark = json.loads((path / COMPLETE_MARK).read_text(encoding="utf-8"))
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        return f"{Path(exc.filename).name} is missing"
    except (ValueError, OSError) as exc:
        return f"a JSON file cannot be read ({type(exc).__name__})"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json has no global_step"
    for name, size in (mark.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size:,} bytes, {size:,} when saved"
    weights = list(path.glob("*.safetensors"))
    if not weights:
        return "it holds no .safetensors weights"
    for file in weights:
        problem = safetensors_problem(file)
        if problem:
            return f"{file.name} {problem}"
    return None


def resumable_checkpoint(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest whole checkpoint, and a note for each newer one that is damaged."""
    notes = []
    for path in reversed(complete_checkpoints(folder)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, notes
        notes.append(f"{path.name} is damaged ({problem})")
    return None, notes


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(folder)
    return found[-1] if found else None


class AtomicCheckpoints(TrainerCallback):
    """Moves each finished checkpoint out of staging and keeps the newest `keep_last`."""

    def __init__(self, folder: Path, keep_last: int, events=None):
        self.folder = folder
        self.keep_last = keep_last
        self.events = events

    def on_save(self, args, state, control, **kwargs):
        wait_for_everyone()  # every process has written its part (its RNG state) first
        staged = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if not state.is_world_process_zero or not staged.is_dir():
            return
        files = {f.name: f.stat().st_size for f in staged.iterdir() if f.is_file()}
        mark = {
            "step": state.global_step,
            "epoch": state.epoch,
            "saved_at": time.time(),
            "files": files,
        }
        (staged / COMPLETE_MARK).write_text(json.dumps(mark), encoding="utf-8")
        final = self.folder / staged.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staged, final)
        for old in complete_checkpoints(self.folder)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        if self.events is not None:
            self.events.emit("checkpoint", state.global_step, path=str(final))


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


@contextmanager
def checkpoint_read(checkpoint: Path | None, begun):
    """A checkpoint whose state cannot be read back (an optimizer or scheduler file from
    another version, a state of other parameters) is one sentence naming it; `begun()` says
    whether training got past reading it."""
    try:
        yield
    except Exception as exc:
        if checkpoint is None or begun() or isinstance(exc, TunelabError):
            raise
        raise TunelabError(
            f"{checkpoint} cannot be resumed from: reading its state failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            "it may come from another version of tunelab or of torch. Resume from an earlier "
            "checkpoint (move this one aside) or start again with --overwrite."
        ) from None


@contextmanager
def saving_into(folder: Path):
    """A full disk while training saves becomes one sentence; finished checkpoints stay."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        clear_staging(folder / CHECKPOINTS_DIR)
        kept = latest_checkpoint(folder / CHECKPOINTS_DIR)
        left = f"the last checkpoint {kept} is intact" if kept else "no checkpoint was saved"
        raise TunelabError(
            f"no space left in {folder} while saving; {left}. Free some space, then "
            "continue with --resume (or start again)."
        ) from None


class NonFiniteGuard(TrainerCallback):
    """Stops at the first non-finite loss or gradient norm, before that step is saved."""

    def __init__(self, folder: Path, lr: float):
        self.folder = folder
        self.lr = lr

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {
            k: v
            for k, v in (logs or {}).items()
            if k in ("loss", "grad_norm") and not math.isfinite(float(v))
        }
        if bad:
            raise Diverged(self._message(state.global_step, bad))

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and not trainable_finite(model):
            staged = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
            shutil.rmtree(staged, ignore_errors=True)
            raise Diverged(self._message(state.global_step, {"weights": "not finite"}))

    def _message(self, step: int, bad: dict) -> str:
        kept = latest_checkpoint(self.folder)
        what = ", ".join(f"{k} {v}" for k, v in bad.items())
        left = f"the last good checkpoint is {kept}" if kept else "no checkpoint was saved"
        return (
            f"training diverged at step {step} ({what}); nothing of it was saved and {left}. "
            f"Lower train.lr (now {self.lr:g}) or check the data."
        )


class Diverged(TunelabError):
    """The loss, a gradient norm or the weights stopped being finite numbers."""


def trainable_finite(model) -> bool:
    """Whether every trainable parameter holds finite numbers."""
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)
