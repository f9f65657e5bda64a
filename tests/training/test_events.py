"""Run events: the console view and events.jsonl follow the same stream, failures included."""

from __future__ import annotations

import pytest
import yaml
from transformers import TrainerCallback

import tunelab
from tests.training.test_resume import write_recipe
from tunelab.run import RunFolder


def test_a_run_tells_what_it_does_as_events(tmp_path, tiny_model_dir):
    recipe = write_recipe(
        tmp_path,
        tiny_model_dir,
        "evented",
        max_steps=4,
        save_every=2,
        sample_every=2,
        sample_prompts=["Count to 3"],
        eval_every=4,
    )
    data = yaml.safe_load(recipe.read_text())
    data["data"]["val_ratio"] = 0.25
    recipe.write_text(yaml.safe_dump(data))
    result = tunelab.train(recipe)
    run = RunFolder.open(result.run_dir)
    events = run.events()
    assert [(e.kind, e.step) for e in events] == [
        ("started", 0),
        ("sample", 0),
        ("step", 1),
        ("sample", 2),  # answered at the step's end, before the step's loss is logged
        ("step", 2),
        ("checkpoint", 2),
        ("step", 3),
        ("sample", 4),
        ("step", 4),
        ("eval", 4),
        ("checkpoint", 4),
        ("finished", 4),
    ]
    steps = [e for e in events if e.kind == "step"]
    assert [e.data["loss"] for e in steps] == [
        pytest.approx(row["loss"]) for row in run.metrics() if "loss" in row
    ]
    samples = [e for e in events if e.kind == "sample"]
    assert [(e.step, e.data) for e in samples] == [
        (row["step"], {"prompt": row["prompt"], "answer": row["answer"]}) for row in run.samples()
    ]
    assert events[-1].data["summary"]["final_loss"] == result.summary["final_loss"]
    assert events[5].data["path"].endswith("checkpoint-2")


def test_a_failed_run_ends_with_a_failed_event(tmp_path, tiny_model_dir):
    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("disk controller on fire")

    recipe = write_recipe(tmp_path, tiny_model_dir, "failing", max_steps=4, save_every=None)
    with pytest.raises(RuntimeError):
        tunelab.train(recipe, callbacks=[Boom()])
    events = RunFolder.open(tmp_path / "failing").events()
    assert [e.kind for e in events] == ["started", "step", "failed"]
    assert events[-1].step == 2 and events[-1].data["error"] == "disk controller on fire"
