"""On a CUDA GPU: every method trains in bf16 with the kernels the plan names, with and
without gradient checkpointing and with a token budget, and its peak memory is near the
estimate. Skipped cleanly without CUDA (`pytest -m gpu` on a GPU machine)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import tunelab
from tunelab.methods import METHODS
from tunelab.models import attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def gpu_recipe(tmp_path, tiny_model_dir, method: str, **train) -> str:
    rows = [
        {
            "instruction": f"Repeat {'word ' * (i % 11)}{i}",
            "input": "",
            "output": "ok " * (1 + i % 9),
        }
        for i in range(32)
    ]
    (tmp_path / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir), "dtype": "bfloat16"},
        "data": {"train": [str(tmp_path / "data.json")], "max_length": 64},
        "method": {"type": method},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "tensorboard": False, **train},
        "output": str(tmp_path / f"run-{method}"),
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_on_cuda(tmp_path, tiny_model_dir, method, checkpointing):
    path = gpu_recipe(tmp_path, tiny_model_dir, method, gradient_checkpointing=checkpointing)
    summary = tunelab.train(path).summary
    assert summary["device"] == "cuda" and summary["steps"] == 3
    assert summary["final_loss"] == summary["final_loss"]  # not NaN
    if summary["packed"]:
        expected = attention.FLASH if "flash" in summary["fused_kernels"] else attention.VARLEN
        assert summary["attention"] == expected
    ratio = summary["memory"]["measured_over_estimated"]
    assert 0.3 < ratio < 1.5, summary["memory"]


def test_a_token_budget_fills_each_pass_on_cuda(tmp_path, tiny_model_dir):
    path = gpu_recipe(tmp_path, tiny_model_dir, "lora", batch_tokens=256)
    summary = tunelab.train(path).summary
    assert summary["attention"] in (attention.VARLEN, attention.FLASH)
    assert summary["memory"]["tokens_in_largest_step"] <= 256
    assert summary["tokens"] > 3 * 4 * 20  # more than batch_size samples a pass
