"""Several processes (a real torchrun, two CPU processes with gloo) train one run: the main
process writes the run folder, the others train alongside it; one consistent folder results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_faults import write_recipe


@pytest.mark.parametrize("stages", [False, True])
def test_torchrun_two_processes_leave_one_consistent_run(tmp_path, tiny_model_dir, stages):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=4, save_every=2)
    if stages:
        recipe.write_text(recipe.read_text() + "stages:\n- {name: a}\n- {name: b}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "tunelab",
            "train",
            str(recipe),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(run)]  # told once
    assert result.stderr.count("done: ") == (2 if stages else 1)
    folders = [run / "stage-1-a", run / "stage-2-b"] if stages else [run]
    for folder in folders:
        metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2, 3, 4]
        kinds = [json.loads(x)["kind"] for x in (folder / "events.jsonl").read_text().splitlines()]
        assert kinds.count("started") == 1 and kinds[-1] == "finished"
        checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
        assert checkpoints == ["checkpoint-2", "checkpoint-4"]
        saved = {p.name for p in (folder / "checkpoints" / "checkpoint-4").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= saved
        summary = json.loads((folder / "summary.json").read_text())
        assert (
            summary["steps"] == 4 and (folder / "adapter" / "adapter_model.safetensors").is_file()
        )
    assert not list(tmp_path.glob(".run.replaced-*"))
