"""tunelab's side of the speed benchmark: the recipe API with the shared settings."""

import json
import sys
from pathlib import Path

import yaml
from probe import Probe

import tunelab

settings = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
recipe = {
    "model": {"path": settings["model"], "dtype": "float32"},
    "data": {
        "train": [{"path": settings["data"], "format": "alpaca"}],
        "max_length": settings["cutoff"],
        "cache": False,  # tokenize cold, as the peers do
    },
    "method": {
        "type": "lora",
        "r": 8,
        "alpha": 16,
        "dropout": settings["dropout"],
        "target": "all-linear",
    },
    "train": {
        "max_steps": settings["steps"],
        "batch_size": settings["batch_size"],
        "lr": 2e-4,
        "warmup_ratio": 0.03,
        "seed": settings["seed"],
        "tensorboard": False,
        "gradient_checkpointing": settings["checkpointing"],
        **settings.get("tunelab_train", {}),
    },
    "output": settings["workdir"] + "/tunelab-run",
}
path = settings["workdir"] + "/tunelab.yaml"
with open(path, "w", encoding="utf-8") as handle:
    yaml.safe_dump(recipe, handle)
tunelab.train(
    path, overrides=settings.get("tunelab_overrides", []), overwrite=True, callbacks=[Probe()]
)
