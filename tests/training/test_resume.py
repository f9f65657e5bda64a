"""A run that survives: SIGKILL and resume equals uninterrupted; accumulation equivalence; watching."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

import tunelab
from tests.conftest import run_cli

DATA = [
    {"instruction": f"Count to {i}", "input": "", "output": " ".join(str(k) for k in range(i + 1))}
    for i in range(24)
]

KILLER = """
import os, signal, sys
from transformers import TrainerCallback
import tunelab

class KillAfter(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

tunelab.train(sys.argv[1], callbacks=[KillAfter()])
"""


def resumed_like_whole(root, stage: str) -> list[list[dict]]:
    """Resume the staged run `root/broken` with the command (its first stage done, the second
    from checkpoint-2); its `stage` must end with the adapter of the uninterrupted `root/whole`.
    Both runs' metrics of that stage, whole first."""
    resumed = run_cli("train", str(root / "broken.yaml"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "finished earlier; skipped" in resumed.stderr and "checkpoint-2" in resumed.stderr
    adapters = [
        load_file(str(root / run / stage / "adapter" / "adapter_model.safetensors"))
        for run in ("whole", "broken")
    ]
    assert max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0]) < 1e-5
    return [
        [json.loads(x) for x in (root / run / stage / "metrics.jsonl").read_text().splitlines()]
        for run in ("whole", "broken")
    ]


def killed_at(recipe, step: int, stage: str | None = None) -> None:
    """Train `recipe` in a child process killed by SIGKILL when `step` ends (in the stage
    whose folder name holds `stage`, if given)."""
    killer = KILLER
    if stage:
        killer = KILLER.replace(
            "state.global_step == int(sys.argv[2])",
            f"state.global_step == int(sys.argv[2]) and {stage!r} in args.output_dir",
        )
    from tests.conftest import run_python

    killed = run_python(killer, str(recipe), str(step), timeout=300)
    assert killed.returncode == -9, killed.stderr


def write_recipe(root, tiny_model_dir, name, **train):
    (root / "data.json").write_text(json.dumps(DATA), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": [str(root / "data.json")], "max_length": 64},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "train": {
            "max_steps": 10,
            "batch_size": 4,
            "lr": 5e-3,
            "seed": 3,
            "save_every": 2,
            "keep_last": 2,
            "tensorboard": False,
            **train,
        },
        "output": str(root / name),
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def adapter_weights(run):
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir):
    whole = write_recipe(tmp_path, tiny_model_dir, "whole")
    tunelab.train(whole)  # in this process: the resumed run is the command's

    broken = write_recipe(tmp_path, tiny_model_dir, "broken")
    from tests.conftest import run_python

    killed = run_python(KILLER, str(broken), "5", timeout=300)
    assert killed.returncode == -9, killed.stderr
    run = tmp_path / "broken"
    assert not (run / "summary.json").exists()
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    # What a crash can leave behind: a half-written staging folder and a checkpoint without
    # its completion mark. Neither may be used.
    (checkpoints / ".staging" / "checkpoint-6").mkdir(parents=True)
    (checkpoints / ".staging" / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"half")
    (checkpoints / "checkpoint-8").mkdir()

    resumed = run_cli("train", str(broken), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "checkpoint-4" in resumed.stderr

    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert b["resumed_from"] == "checkpoint-4" and b["steps"] == a["steps"] == 10
    assert abs(a["final_loss"] - b["final_loss"]) < 1e-5
    wa, wb = adapter_weights(tmp_path / "whole"), adapter_weights(run)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    # metrics.jsonl holds each step once, with the same losses as the whole run.
    steps_a = [
        json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    steps_b = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps_b] == list(range(1, 11))
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(steps_a, steps_b))
    # tokens per second of the resumed process count only the tokens it trained on
    after_checkpoint = b["tokens"] - steps_b[3]["tokens"]
    assert b["tokens_per_second"] * b["train_seconds"] == pytest.approx(after_checkpoint, rel=0.01)


def test_resume_needs_a_checkpoint_and_the_same_recipe(tmp_path, tiny_model_dir):
    import tunelab
    from tunelab.errors import TunelabError

    recipe = write_recipe(tmp_path, tiny_model_dir, "r", save_every=None, max_steps=4)
    tunelab.train(recipe)
    with pytest.raises(TunelabError, match="already finished"):
        tunelab.train(recipe, resume=True)
    (tmp_path / "r" / "summary.json").unlink()
    with pytest.raises(TunelabError, match="no complete checkpoint"):
        tunelab.train(recipe, resume=True)
    changed = run_cli("train", str(recipe), "--resume", "train.lr=0.1")  # as the CLI says it
    assert changed.returncode == 2 and "`train` section differs" in changed.stderr


def test_batch_8_equals_batch_1_times_accumulation_8(tmp_path, tiny_model_dir):
    runs = {}
    for name, batch, accum in (("b8", 8, 1), ("b1x8", 1, 8)):
        recipe = write_recipe(
            tmp_path,
            tiny_model_dir,
            name,
            batch_size=batch,
            grad_accum=accum,
            max_steps=6,
            save_every=None,
        )
        data = yaml.safe_load(recipe.read_text())
        data["method"]["dropout"] = 0.0
        recipe.write_text(yaml.safe_dump(data))
        tunelab.train(recipe)
        runs[name] = [
            json.loads(x)["loss"]
            for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]
    assert len(runs["b8"]) == len(runs["b1x8"]) == 6
    for x, y in zip(runs["b8"], runs["b1x8"]):
        assert x == pytest.approx(y, rel=1e-4)


def test_watching_a_run_samples_validation_tensorboard_plot(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    recipe = write_recipe(
        tmp_path,
        tiny_model_dir,
        "watched",
        save_every=None,
        tensorboard=True,
        sample_prompts=["Count to 3", "Count to 5"],
        sample_every=5,
        eval_every=5,
    )
    data = yaml.safe_load(recipe.read_text())
    data["data"]["val_ratio"] = 0.25
    recipe.write_text(yaml.safe_dump(data))
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr
    run = tmp_path / "watched"
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"]) for s in samples] == [
        (0, "Count to 3"),
        (0, "Count to 5"),
        (5, "Count to 3"),
        (5, "Count to 5"),
        (10, "Count to 3"),
        (10, "Count to 5"),
    ]
    assert "Count to 3 ->" in result.stderr  # shown in the console too
    # the answers while training come from the same engine as `tunelab chat`
    # (step 0 is the base model: a new LoRA adds nothing until it trains)
    import tunelab

    for step, base in ((0, True), (10, False)):
        for prompt in ("Count to 3", "Count to 5"):
            answer = tunelab.chat(run, prompt, base=base, max_new_tokens=64)
            sample = next(s for s in samples if s["step"] == step and s["prompt"] == prompt)
            assert answer.strip() == sample["answer"]
    chat = run_cli("chat", str(run), "-p", "Count to 5", "--max-new-tokens", "64")  # the CLI too
    assert chat.returncode == 0 and chat.stdout.strip() == samples[-1]["answer"], chat.stderr
    assert all(s["answer"] for s in samples if s["step"] == 0)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=1e-6)
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    train_losses = [e.value for e in accumulator.Scalars("train/loss")]
    assert train_losses == pytest.approx([r["loss"] for r in rows if "loss" in r], rel=1e-6)
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_ctrl_c_saves_a_checkpoint_then_resume_finishes(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, "ctrlc", save_every=1000, max_steps=60)
    process = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "train", str(recipe)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in process.stderr:
        if line.startswith("step "):
            break
    process.send_signal(2)  # SIGINT, as Ctrl-C
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert "checkpoint" in rest and "--resume" in rest
    saved = list((tmp_path / "ctrlc" / "checkpoints").glob("checkpoint-*"))
    assert len(saved) == 1
    events = (tmp_path / "ctrlc" / "events.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["kind"] == "stopped"  # not "failed": it can be resumed
    resumed = run_cli("train", str(recipe), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "ctrlc" / "summary.json").read_text())["steps"] == 60


def test_a_finished_run_continues_for_more_steps_as_if_never_stopped(tmp_path, tiny_model_dir):
    """5 steps, finished, then `--resume train.max_steps=10`: the same weights and losses as
    10 steps in one go (a constant learning rate, so the schedule does not depend on length)."""
    import tunelab
    from tunelab.errors import TunelabError

    same = {"scheduler": "constant", "warmup_ratio": 0, "save_every": 5}
    whole = write_recipe(tmp_path, tiny_model_dir, "whole", **same)
    tunelab.train(whole)
    short = write_recipe(tmp_path, tiny_model_dir, "short", max_steps=5, **same)
    tunelab.train(short)
    with pytest.raises(TunelabError, match=r"already finished \(5 steps\).*train\.epochs="):
        tunelab.train(short, resume=True)
    tunelab.train(short, ["train.max_steps=10"], resume=True)

    run = tmp_path / "short"
    first, summary = (
        json.loads((run / f).read_text()) for f in ("summary-step-5.json", "summary.json")
    )
    assert (first["steps"], summary["steps"], summary["resumed_from"]) == (5, 10, "checkpoint-5")
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["max_steps"] == 10
    wa, wb = adapter_weights(tmp_path / "whole"), adapter_weights(run)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))

    by_epoch = write_recipe(
        tmp_path, tiny_model_dir, "epochs", max_steps=None, epochs=1, save_every=4
    )
    tunelab.train(by_epoch)  # 24 rows at batch 4: 6 steps an epoch, the last one checkpointed
    tunelab.train(by_epoch, ["train.epochs=2"], resume=True)
    done = json.loads((tmp_path / "epochs" / "summary.json").read_text())
    assert (done["steps"], done["resumed_from"]) == (12, "checkpoint-6")

    plain = write_recipe(tmp_path, tiny_model_dir, "plain", max_steps=3, save_every=None)
    tunelab.train(plain)
    with pytest.raises(TunelabError, match="finished without a whole checkpoint of its last step"):
        tunelab.train(plain, ["train.max_steps=6"], resume=True)


def test_a_run_saved_before_a_recipe_section_existed_still_resumes(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir, "older", max_steps=2)
    tunelab.train(recipe)
    saved = tmp_path / "older" / "recipe.yaml"
    written = yaml.safe_load(saved.read_text())
    for section in ("grpo", "preference"):  # as a run of an earlier version wrote it
        written.pop(section)
    saved.write_text(yaml.safe_dump(written))
    result = tunelab.train(recipe, ["train.max_steps=3"], resume=True)
    assert result.summary["steps"] == 3 and result.summary["resumed_from"] == "checkpoint-2"


def test_resume_leaves_a_users_copy_alone_and_names_a_state_it_cannot_read(
    tmp_path, tiny_model_dir
):
    """A user's checkpoint-2.bak beside the checkpoints is neither read nor deleted (keep_last
    would have removed it); an optimizer state of other parameters is one sentence."""
    import shutil

    import torch

    import tunelab
    from tunelab.errors import TunelabError

    short = write_recipe(tmp_path, tiny_model_dir, "short", max_steps=2, save_every=1, keep_last=1)
    tunelab.train(short)
    checkpoints = tmp_path / "short" / "checkpoints"
    shutil.copytree(checkpoints / "checkpoint-2", checkpoints / "checkpoint-2.bak")
    tunelab.train(short, ["train.max_steps=4"], resume=True)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2.bak", "checkpoint-4"]

    state = checkpoints / "checkpoint-4" / "optimizer.pt"
    torch.save({"state": {}, "param_groups": [{"lr": 1.0, "params": [0, 1, 2]}]}, state)
    mark = checkpoints / "checkpoint-4" / "tunelab_checkpoint.json"
    saved = json.loads(mark.read_text())
    saved["files"]["optimizer.pt"] = state.stat().st_size  # as a version that wrote it so
    mark.write_text(json.dumps(saved))
    with pytest.raises(
        TunelabError, match="checkpoint-4 cannot be resumed from: reading its state failed"
    ):
        tunelab.train(short, ["train.max_steps=6"], resume=True)


def test_resume_on_changed_data_is_refused_unless_asked(tmp_path, tiny_model_dir):
    import tunelab
    from tests.conftest import run_cli
    from tunelab.errors import TunelabError

    short = write_recipe(tmp_path, tiny_model_dir, "short", max_steps=2, save_every=1)
    tunelab.train(short)
    data = tmp_path / "data.json"
    rows = json.loads(data.read_text())
    data.write_text(json.dumps(rows[::-1]), encoding="utf-8")  # same rows, another order
    with pytest.raises(TunelabError, match=f"the data file {data} changed since"):
        tunelab.train(short, ["train.max_steps=3"], resume=True)
    done = run_cli("train", str(short), "train.max_steps=3", "--resume")
    assert done.returncode == 2 and "--resume --data-changed" in " ".join(done.stderr.split())
    done = run_cli("train", str(short), "train.max_steps=3", "--data-changed")
    assert done.returncode == 2 and "goes with --resume" in done.stderr
    done = run_cli("train", str(short), "train.max_steps=3", "--resume", "--data-changed")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming on changed data" in done.stderr
    assert json.loads((tmp_path / "short" / "summary.json").read_text())["steps"] == 3
