"""The run folder: everything a run writes, so that chat, eval and export can read it back."""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
import yaml

from tunelab.errors import TunelabError
from tunelab.recipe import Recipe

RECIPE_FILE = "recipe.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
ENVIRONMENT_FILE = "environment.json"
DATA_REPORT_FILE = "data_report.json"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
SAMPLES_FILE = "samples.jsonl"
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
    path: Path

    @classmethod
    def create(cls, output: str | Path, overwrite: bool = False) -> RunFolder:
        """A fresh run folder.

        A folder holding a finished run (or its checkpoints) is only replaced when asked; one
        left by a run that failed before training is reused.
        """
        path = Path(output)
        if path.exists() and any(path.iterdir()):
            if not (path / RECIPE_FILE).is_file():
                raise TunelabError(
                    f"{path} exists and is not a tunelab run folder; refusing to write into it, "
                    "choose another output."
                )
            if _holds_results(path) and not overwrite:
                raise TunelabError(
                    f"run folder {path} already holds a run; pass --overwrite to replace it "
                    "or set output=... to another folder."
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder, checked to be one."""
        folder = cls(Path(path))
        if not (folder.path / RECIPE_FILE).is_file():
            raise TunelabError(f"{path} is not a tunelab run folder (no {RECIPE_FILE} in it).")
        return folder

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
        self.file(RECIPE_FILE).write_text(recipe.to_yaml(), encoding="utf-8")

    def read_recipe(self) -> dict:
        return yaml.safe_load(self.file(RECIPE_FILE).read_text(encoding="utf-8"))

    def write_json(self, name: str, data: dict) -> None:
        tmp = self.file(name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.file(name))

    def final_run(self) -> RunFolder:
        """The folder holding the trained weights: the last stage's for a staged run."""
        recipe = self.read_recipe()
        if recipe.get("stages"):
            summary = self.file(SUMMARY_FILE)
            if not summary.is_file():
                raise TunelabError(
                    f"{self.path} has not finished all its stages; continue with --resume."
                )
            return RunFolder.open(self.read_json(SUMMARY_FILE)["final_stage"])
        return self

    def read_json(self, name: str) -> dict:
        return json.loads(self.file(name).read_text(encoding="utf-8"))


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
