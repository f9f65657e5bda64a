"""Pinned losses of a fixed-init tiny model: an error that hits both sides of a comparison
(packed vs padded, resumed vs uninterrupted) still moves these numbers.

The tiny model is built with torch.manual_seed(0) (tests/conftest.py); the data and recipe are
fixed here. If a deliberate change moves the losses (a new loss normalisation, a template
change), re-pin them and say why in the commit.
"""

from __future__ import annotations

import json

import pytest

import tunelab

ROWS = [
    {"instruction": f"Count to {i}", "output": " ".join(str(k) for k in range(i + 1))}
    for i in range(12)
]
PINNED = {  # measured with torch 2.13.0 (CPU), transformers 5.23.0, peft 0.21.2
    "lora": [10.82633, 10.70767, 10.49353, 10.35733],
    "full": [10.82633, 10.52306, 10.30922, 10.14503],
}


@pytest.mark.parametrize("method", list(PINNED))
def test_losses_of_a_fixed_init_tiny_model_are_pinned(tmp_path, tiny_model_dir, method):
    (tmp_path / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": [str(tmp_path / "d.json")], "max_length": 64, "cache": False},
        "method": {"type": method, "r": 4, "alpha": 8},
        "train": {
            "max_steps": 4,
            "batch_size": 4,
            "lr": 1e-2 if method == "lora" else 1e-3,
            "seed": 7,
            "tensorboard": False,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
        },
        "output": str(tmp_path / "run"),
    }
    result = tunelab.train(recipe)
    rows = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(r)["loss"] for r in rows if "loss" in json.loads(r)]
    assert losses == pytest.approx(PINNED[method], abs=2e-4)
