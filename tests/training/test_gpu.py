"""On a CUDA GPU: every method trains in bf16 with the kernels the plan names, with and
without gradient checkpointing and with a token budget, and its peak memory is near the
estimate. Skipped cleanly without CUDA (`pytest -m gpu` on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

import tunelab
from tests.models.test_packing import recipe_file
from tunelab.methods import METHODS
from tunelab.models import attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def gpu_recipe(tmp_path, tiny_model_dir, method: str, **train) -> list:
    """The packing tests' recipe in bf16 with `method`; (path, overrides) for tunelab.train."""
    path = recipe_file(tmp_path, tiny_model_dir, f"run-{method}", True)
    overrides = ["model.dtype=bfloat16", f"method.type={method}", "train.max_steps=3"]
    return [path, overrides + [f"train.{key}={value}" for key, value in train.items()]]


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_on_cuda(tmp_path, tiny_model_dir, method, checkpointing):
    run = gpu_recipe(tmp_path, tiny_model_dir, method, gradient_checkpointing=checkpointing)
    summary = tunelab.train(*run).summary
    assert summary["device"] == "cuda" and summary["steps"] == 3
    assert summary["final_loss"] == summary["final_loss"]  # not NaN
    if summary["packed"]:
        expected = attention.FLASH if "flash" in summary["fused_kernels"] else attention.VARLEN
        assert summary["attention"] == expected
    ratio = summary["memory"]["measured_over_estimated"]
    assert 0.3 < ratio < 1.5, summary["memory"]


def test_a_token_budget_fills_each_pass_on_cuda(tmp_path, tiny_model_dir):
    run = gpu_recipe(tmp_path, tiny_model_dir, "lora", batch_tokens=512)
    summary = tunelab.train(*run).summary
    assert summary["attention"] in (attention.VARLEN, attention.FLASH)
    largest = summary["memory"]["tokens_in_largest_step_run"]
    assert 4 * 64 < largest <= 512  # more than batch_size samples at max_length could hold
