"""Stages: each starts from the previous stage's weights; resume works across stages."""

from __future__ import annotations

import json

import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

import tunelab
from tests.conftest import run_cli
from tests.training.test_resume import DATA, killed_at


def staged_recipe(root, tiny_model_dir, name, method="lora"):
    (root / "small.json").write_text(json.dumps(DATA[:8]), encoding="utf-8")
    (root / "large.json").write_text(json.dumps(DATA), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": [str(root / "small.json")], "max_length": 64},
        "method": {"type": method, "r": 4, "alpha": 8, "dropout": 0.0, "layers": 1},
        "train": {
            "epochs": 3,
            "batch_size": 4,
            "lr": 5e-3,
            "seed": 5,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
            "tensorboard": False,
            "save_every": 2,
        },
        "stages": [
            {"name": "small"},
            {
                "name": "large",
                "data": {"train": [str(root / "large.json")]},
                "train": {"epochs": 1, "lr": 1e-3},
            },
        ],
        "output": str(root / name),
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


class FirstWeights(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen.append(
            {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        )


def test_stage_two_continues_stage_one_adapter_with_a_fresh_schedule(tmp_path, tiny_model_dir):
    watcher = FirstWeights()
    result = tunelab.train(staged_recipe(tmp_path, tiny_model_dir, "st"), callbacks=[watcher])
    run = tmp_path / "st"
    one, two = run / "stage-1-small", run / "stage-2-large"
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s1["steps"] == 6 and s2["steps"] == 6  # 8 samples x 3 epochs / 4; 24 x 1 / 4
    assert s1["samples"] == 8 and s2["samples"] == 24
    # Stage 2 started from exactly the adapter stage 1 saved.
    saved = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    start = watcher.seen[1]
    for name, value in saved.items():
        match = [
            v
            for n, v in start.items()
            if n.replace(".default", "").endswith(name.split("base_model.")[-1])
        ]
        assert len(match) == 1 and torch.equal(match[0], value), name
    # A fresh optimizer and schedule: stage 2 runs at its own learning rate from step 1.
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and rows[0]["lr"] == 1e-3
    top = json.loads((run / "summary.json").read_text())
    assert top["steps"] == 12 and top["final_stage"] == str(two)
    assert result.run_dir == run
    # Chat and export on the top folder use the last stage.
    assert isinstance(tunelab.chat(run, "Count to 2", max_new_tokens=4), str)
    merged = tunelab.export(run, tmp_path / "merged")
    assert json.loads((merged / "tunelab_export.json").read_text())["exported_from"] == str(
        two.resolve()
    )


def test_resume_across_stages_matches_uninterrupted(tmp_path, tiny_model_dir):
    whole = staged_recipe(tmp_path, tiny_model_dir, "whole")
    tunelab.train(whole)  # in this process: the resumed run is the command's
    broken = staged_recipe(tmp_path, tiny_model_dir, "broken")
    # Stage 1 has 6 steps; the kill comes at step 3 of stage 2 (after its checkpoint-2).
    killed_at(broken, 3, stage="stage-2")
    assert (tmp_path / "broken" / "stage-1-small" / "summary.json").is_file()
    resumed = run_cli("train", str(broken), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "finished earlier; skipped" in resumed.stderr and "checkpoint-2" in resumed.stderr
    a = load_file(
        str(tmp_path / "whole" / "stage-2-large" / "adapter" / "adapter_model.safetensors")
    )
    b = load_file(
        str(tmp_path / "broken" / "stage-2-large" / "adapter" / "adapter_model.safetensors")
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    sa = json.loads((tmp_path / "whole" / "summary.json").read_text())
    sb = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert abs(sa["final_loss"] - sb["final_loss"]) < 1e-5


def test_full_model_stages_pass_the_model_on(tmp_path, tiny_model_dir):
    result = tunelab.train(staged_recipe(tmp_path, tiny_model_dir, "frz", method="freeze"))
    assert (tmp_path / "frz" / "stage-2-large" / "model" / "config.json").is_file()
    assert result.summary["steps"] == 12


def test_carry_optimizer_changes_stage_two_only_as_asked(tmp_path, tiny_model_dir):
    losses = {}
    for name, carry in (("fresh", False), ("carried", True)):
        recipe = staged_recipe(tmp_path, tiny_model_dir, name)
        data = yaml.safe_load(recipe.read_text())
        data["stages"][1]["train"]["carry_optimizer"] = carry
        recipe.write_text(yaml.safe_dump(data))
        tunelab.train(recipe)
        stage_two = tmp_path / name / "stage-2-large"
        rows = [json.loads(x) for x in (stage_two / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows]
        assert (tmp_path / name / "stage-1-small" / "optimizer_state.pt").is_file()
    # Same first forward pass (same weights), different updates once the moments differ.
    assert losses["fresh"][0] == losses["carried"][0]
    assert losses["fresh"][1:] != losses["carried"][1:]
