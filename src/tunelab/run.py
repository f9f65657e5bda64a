"""The run folder: everything a run writes, so that chat, eval and export can read it back.

A run folder is tunelab's own: a marker written when it is created says so, and only such a
folder is ever replaced. While a process writes it, it holds an OS lock on a file inside it;
a second writer is refused with the holder's pid, and a lock left by a dead process is free
again (the OS drops it with the process).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
import yaml

from tunelab.errors import TunelabError
from tunelab.events import EVENTS_FILE, RunEvent, read_events
from tunelab.recipe import Recipe
from tunelab.version import __version__

MARKER_FILE = ".tunelab-run"
LOCK_FILE = ".tunelab-lock"
RECIPE_FILE = "recipe.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
ENVIRONMENT_FILE = "environment.json"
DATA_REPORT_FILE = "data_report.json"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
SAMPLES_FILE = "samples.jsonl"
DISTRIBUTED_FILE = "distributed.json"  # how the processes shared the training
DEEPSPEED_FILE = "deepspeed.json"  # the DeepSpeed config of a zero2 / zero3 run
REWARDS_FILE = "rewards.json"  # a grpo run: its sampling engine and what each reward is
CHECKPOINTS_DIR = "checkpoints"

_PACKAGES = (
    "tunelab",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "gguf",
    "tokenizers",
    "safetensors",
)


@dataclass
class RunFolder:
    """A run folder; one made by `create` or `reopen` holds the writer's lock until `release`."""

    path: Path
    lock: RunLock | None = field(default=None, repr=False)
    replaced: Path | None = field(default=None, repr=False)
    made: list[Path] | None = field(default=None, repr=False)  # folders `create` made
    writer: bool = field(default=True, repr=False)  # False: another process writes it
    notes: list[str] = field(default_factory=list, repr=False)
    checkpoint: Path | None = None  # read this checkpoint's weights instead of the final ones

    @property
    def target(self) -> str:
        """What names this run (at its checkpoint, if opened at one) to open it again."""
        return str(self.checkpoint or self.path)

    @classmethod
    def create(
        cls, output: str | Path, overwrite: bool = False, protected: Iterable[Path] = ()
    ) -> RunFolder:
        """A fresh run folder, locked for this process.

        Only a folder that tunelab made (its marker) is replaced, and only when asked; the old
        run is moved aside and removed by `confirm_start` once the new one trains, or put
        back by `abandon` if it fails first. An existing empty folder is used as it is.
        """
        path = Path(output).expanduser()
        refuse_precious(path, "output", protected)
        if path.exists() and not path.is_dir():
            raise TunelabError(f"output {path} is a file, not a folder; choose another output.")
        replaced, notes = None, []
        if path.is_dir() and any(path.iterdir()):
            replaced, notes = _set_aside(path, overwrite)
        made = [p for p in [path, *path.parents] if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TunelabError(f"cannot create run folder {path}: {exc.strerror}.") from None
        marker = {"created_at": time.time(), "pid": os.getpid(), "tunelab": __version__}
        (path / MARKER_FILE).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        folder = cls(path, RunLock.take(path), replaced, made)
        folder.notes.extend([*notes, *folder.lock.notes])
        return folder

    @classmethod
    def follow(cls, path: str | Path) -> RunFolder:
        """The run folder that the main process of a multi-process run writes; this process
        only reads it (its writes are skipped)."""
        return cls(Path(path), writer=False)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder, for reading, checked to be one; `RUN@N` or
        `RUN/checkpoints/checkpoint-N` reads that checkpoint's weights."""
        run_path, checkpoint = split_checkpoint(path)
        folder = cls(run_path, checkpoint=checkpoint)
        if not (folder.path / RECIPE_FILE).is_file():
            raise TunelabError(f"{path} is not a tunelab run folder (no {RECIPE_FILE} in it).")
        made = (MARKER_FILE, SUMMARY_FILE, CHECKPOINTS_DIR)
        if not any((folder.path / name).exists() for name in made):
            raise TunelabError(
                f"{path} holds a {RECIPE_FILE} but is not a tunelab run folder (tunelab marks "
                f"each run it makes with {MARKER_FILE}); give a run folder, such as the output "
                "of that recipe."
            )
        if checkpoint is not None and not checkpoint.is_dir():
            raise TunelabError(
                f"{run_path} has no {checkpoint.name}; its checkpoints are at steps "
                f"{', '.join(saved_steps(run_path)) or '(none)'} (keep_last keeps only the "
                "newest)."
            )
        return folder

    @classmethod
    def reopen(cls, path: str | Path) -> RunFolder:
        """An existing run folder to write again (resume), locked for this process."""
        folder = cls.open(path)
        if not is_run_folder(folder.path):
            raise TunelabError(
                f"{path} has no {MARKER_FILE} marker, so tunelab did not make it (or an older "
                "version did); it will not write into it. Start a new run with another output."
            )
        folder.lock = RunLock.take(folder.path)
        folder.notes.extend(folder.lock.notes)
        return folder

    def confirm_start(self) -> None:
        """The new run trains: the run it replaced is removed for good."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None
        self.made = None

    def abandon(self) -> None:
        """The new run failed before training: leave the disk as it was before `create`,
        with the run it replaced back in place."""
        if self.made is None:
            return  # not made by `create`, or training had started
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)
        if self.replaced is not None:
            os.replace(self.replaced, self.path)
        elif self.path not in self.made:
            self.path.mkdir()  # it was an empty folder before; it is one again
        for folder in self.made[1:]:  # parents made for it, innermost first, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = self.replaced = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def write_recipe(self, recipe: Recipe) -> None:
        if not self.writer:
            return
        self.file(RECIPE_FILE).write_text(recipe.to_yaml(), encoding="utf-8")

    def read_recipe(self) -> dict:
        return yaml.safe_load(self.file(RECIPE_FILE).read_text(encoding="utf-8"))

    def write_json(self, name: str, data: dict) -> None:
        if not self.writer:
            return
        tmp = self.file(f"{name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.file(name))

    def final_run(self) -> RunFolder:
        """The folder holding the trained weights: the last stage's for a staged run."""
        if not self.read_recipe().get("stages"):
            return self
        summary = self.summary()
        if summary is None:
            raise TunelabError(
                f"{self.path} has not finished all its stages; continue with --resume."
            )
        return RunFolder.open(summary["final_stage"])

    def writer_pid(self) -> int | None:
        """The pid of the process writing this run now (this folder or one of its stages'),
        or None when none is."""
        for folder in [self.path, *sorted(self.path.glob("stage-*"))]:
            pid = RunLock.holder(folder)
            if pid is not None:
                return pid
        return None

    def read_json(self, name: str) -> dict:
        return json.loads(self.file(name).read_text(encoding="utf-8"))

    def metrics(self) -> list[dict]:
        """metrics.jsonl: one row per logged step (loss, lr, grad_norm, tokens) or validation."""
        return _jsonl(self.file(METRICS_FILE))

    def samples(self) -> list[dict]:
        """samples.jsonl: the answers to the recipe's sample prompts (step, prompt, answer)."""
        return _jsonl(self.file(SAMPLES_FILE))

    def summary(self) -> dict | None:
        """summary.json of a finished run (None while it is not finished)."""
        return self.read_json(SUMMARY_FILE) if self.file(SUMMARY_FILE).is_file() else None

    def events(self) -> list[RunEvent]:
        """What the run has done so far, as RunEvents (started, step, ..., finished, stopped or failed)."""
        return read_events(self.file(EVENTS_FILE))

    def recipe(self) -> Recipe:
        """The saved recipe, validated as when it ran."""
        try:
            return Recipe.model_validate(self.read_recipe())
        except ValueError as exc:
            raise TunelabError(
                f"{self.file(RECIPE_FILE)} is not a recipe this version can read ({exc})."
            ) from None

    def trained(self) -> TrainedWeights:
        """What a finished run's weights are (the last stage's, for a staged run), or those
        of the checkpoint it was opened at."""
        run = self if self.checkpoint else self.final_run()
        recipe = run.recipe()
        if self.checkpoint:
            model_dir = adapter_dir = self.checkpoint
        else:
            model_dir, adapter_dir = run.model_dir, run.adapter_dir
        model = model_dir if (model_dir / "config.json").is_file() else None
        adapter = adapter_dir if (adapter_dir / "adapter_config.json").is_file() else None
        if model is None and adapter is None and self.checkpoint:
            raise TunelabError(f"{self.checkpoint} holds no weights (no adapter or model files).")
        if model is None and adapter is None:
            raise TunelabError(
                f"{run.path} has no trained weights yet (no adapter/ or model/); "
                "did the run finish? A stopped run continues with --resume, and its "
                f"checkpoints can be read as {run.path}@STEP."
            )
        for folder in {model, adapter} - {None}:
            _check_weight_files(folder, run.path)
        return TrainedWeights(run, recipe, model, adapter)


def _check_weight_files(folder: Path, run_path: Path) -> None:
    """A damaged weights file is one sentence naming it, before anything loads it."""
    for file in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            steps = ", ".join(saved_steps(run_path)) or "none"
            raise TunelabError(
                f"{file} {problem}: these weights are damaged and cannot be read; use another "
                f"checkpoint ({run_path}@STEP, steps {steps}) or train again."
            )


def safetensors_problem(file: Path) -> str | None:
    """Whether a safetensors file's header parses and its data is all there."""
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if length <= 0 or 8 + length > size:
                return "has a broken header"
            header = json.loads(handle.read(length))
    except (OSError, ValueError):
        return "has a broken header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + length + max(ends, default=0) != size:
        return "is truncated"
    return None


@dataclass
class TrainedWeights:
    """The weights a run left: a whole model folder, or an adapter on the recipe's base."""

    run: RunFolder
    recipe: Recipe
    model: Path | None  # full and freeze runs
    adapter: Path | None  # peft methods: load `recipe.model.path`, then this adapter

    @property
    def base(self) -> str:
        return self.recipe.model.path


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def split_checkpoint(target: str | Path) -> tuple[Path, Path | None]:
    """(the run folder, the checkpoint folder or None) that a target names: `RUN`, `RUN@N`
    or `RUN/checkpoints/checkpoint-N`."""
    path = Path(target)
    base, at, step = str(target).rpartition("@")
    if at and not path.exists() and (Path(base) / RECIPE_FILE).is_file():
        if not step.isdigit():
            raise TunelabError(
                f"{target}: what follows @ is a checkpoint's step number; {base} has "
                f"checkpoints at steps {', '.join(saved_steps(Path(base))) or '(none)'}."
            )
        return Path(base), Path(base) / CHECKPOINTS_DIR / f"checkpoint-{step}"
    if path.parent.name == CHECKPOINTS_DIR and path.name.startswith("checkpoint-"):
        return path.parent.parent, path
    return path, None


def saved_steps(run_path: Path) -> list[str]:
    """The steps of the checkpoint folders a run holds, in order (checkpoint-N only: a
    user's copy beside them, such as checkpoint-2.bak, is not a step)."""
    names = (
        p.name.removeprefix("checkpoint-")
        for p in (run_path / CHECKPOINTS_DIR).glob("checkpoint-*")
    )
    return sorted((step for step in names if step.isdigit()), key=int)


def is_run_target(target: str | Path) -> bool:
    """Whether a target names a run folder or one of its checkpoints."""
    return (split_checkpoint(target)[0] / RECIPE_FILE).is_file()


def is_run_folder(path: Path) -> bool:
    """Whether tunelab made this folder (it carries the marker written at creation)."""
    return (Path(path) / MARKER_FILE).is_file()


def refuse_precious(path: Path, what: str, protected: Iterable[Path] = ()) -> None:
    """Refuse a folder to write or replace that is, or holds, what the user works in.

    That is the current directory or any folder above it, the home folder, and any folder
    holding one of `protected` (the recipe, its data, the model being read).
    """
    target = path.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise TunelabError(
            f"{what} {path} is the current directory or a folder above it; tunelab writes a "
            "run into a folder of its own, e.g. runs/name."
        )
    if target == Path.home().resolve() or target == Path(target.anchor):
        raise TunelabError(
            f"{what} {path} is your home or root folder; choose a folder of its own."
        )
    for item in protected:
        held = Path(item).expanduser().resolve()
        if held == target or target in held.parents:
            raise TunelabError(
                f"{what} {path} holds {item}, which this command reads; choose another {what}."
            )


def _set_aside(path: Path, overwrite: bool) -> tuple[Path, list[str]]:
    """Move an earlier run out of the way (it is removed once the new run trains)."""
    if not is_run_folder(path):
        raise TunelabError(
            f"{path} exists, is not empty and was not made by tunelab (no {MARKER_FILE} marker); "
            "refusing to write into it or replace it. Choose another output."
        )
    held = RunLock.take(path)  # refuses while another process writes it
    if _holds_results(path) and not overwrite:
        held.release()
        raise TunelabError(
            f"run folder {path} already holds a run; pass --overwrite to replace it "
            "or set output=... to another folder."
        )
    aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    held.release()
    return aside, held.notes


class RunLock:
    """An exclusive OS lock (flock) on a file in the run folder, holding the writer's pid."""

    def __init__(self, handle: int, notes: list[str]):
        self.handle = handle
        self.notes = notes

    @classmethod
    def take(cls, folder: Path) -> RunLock:
        path = folder / LOCK_FILE
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(handle)
            os.close(handle)
            raise TunelabError(
                f"run folder {folder} is being written by another tunelab process (pid {holder}); "
                "wait for it to finish, or choose another output."
            ) from None
        notes = []
        earlier = _read_pid(handle)
        if earlier and earlier != os.getpid():
            notes.append(f"took over the lock of {folder} left by pid {earlier}, which has ended")
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        return cls(handle, notes)

    @staticmethod
    def holder(folder: Path) -> int | None:
        """The pid holding `folder`'s lock now, or None when it is free."""
        try:
            handle = os.open(folder / LOCK_FILE, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(handle) or -1
        else:
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
        finally:
            os.close(handle)

    def release(self) -> None:
        if self.handle >= 0:
            os.ftruncate(self.handle, 0)  # a pid left in the file means its holder died
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            os.close(self.handle)
            self.handle = -1


def _read_pid(handle: int) -> int | None:
    text = os.pread(handle, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _holds_results(path: Path) -> bool:
    checkpoints = path / CHECKPOINTS_DIR
    return (
        any(_holds_results(stage) for stage in path.glob("stage-*") if stage.is_dir())
        or (path / SUMMARY_FILE).exists()
        or (path / ADAPTER_DIR).exists()
        or (path / MODEL_DIR).exists()
        or (checkpoints.is_dir() and any(checkpoints.iterdir()))
    )


def describe_environment() -> dict:
    """Package versions and hardware, written beside every run."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
        "cuda": torch.version.cuda,
        "gpus": [],
    }
    if torch.cuda.is_available():
        env["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_bytes": torch.cuda.get_device_properties(i).total_memory,
            }
            for i in range(torch.cuda.device_count())
        ]
    return env
