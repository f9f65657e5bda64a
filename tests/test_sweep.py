"""`tunelab sweep`: trials of the recipe over a search space on Optuna, ranked by the
objective; each trial an ordinary run folder; resumable after a kill with the same trials."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

ROWS = [{"instruction": f"What is {i} plus one?", "output": f"It is {i + 1}."} for i in range(16)]


def sweep_recipe(root, model, name="sweep", trials=3, prune=False, **sweep):
    (root / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(root / "d.json")], "max_length": 64, "val_ratio": 0.25},
        "method": {"type": "lora", "r": 4},
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "tensorboard": False,
                  "seed": 3},
        "output": str(root / name),
        "sweep": {"space": {"train.lr": {"low": 1e-4, "high": 3e-2, "log": True},
                            "method.r": {"choices": [2, 4, 8]}},
                  "trials": trials, "sampler": "random", "seed": 7, "prune": prune,
                  "metrics": ["final_loss"], **sweep},
    }  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_a_sweep_ranks_its_trials_and_its_best_recipe_trains_the_same_alone(
    tmp_path, tiny_model_dir
):
    import tunelab

    result = tunelab.sweep(sweep_recipe(tmp_path, tiny_model_dir))
    assert callable(tunelab.sweep)  # not shadowed by the module that runs it
    folder = tmp_path / "sweep"
    report = json.loads((folder / "sweep_report.json").read_text())
    assert [t["state"] for t in report["trials"]] == ["complete"] * 3
    values = [t["value"] for t in report["trials"]]
    assert values == sorted(values) and report["best"] == report["trials"][0] == result.best
    for trial in report["trials"]:
        summary = json.loads((tmp_path / "sweep" / f"trial-{trial['trial']:03d}" /
                              "summary.json").read_text())  # fmt: skip
        assert summary["eval_loss"] == pytest.approx(trial["value"])
        saved = yaml.safe_load((folder / f"trial-{trial['trial']:03d}" / "recipe.yaml").read_text())
        assert saved["train"]["lr"] == trial["params"]["train.lr"]
        assert saved["method"]["r"] == trial["params"]["method.r"] and saved["sweep"] is None
    assert len({t["params"]["train.lr"] for t in report["trials"]}) == 3
    markdown = (folder / "sweep_report.md").read_text()
    assert markdown.startswith("# Sweep: eval_loss (minimize)") and "| 1 |" in markdown
    assert "| final_loss |" in markdown
    for trial in report["trials"]:
        summary = json.loads(Path(trial["run"], "summary.json").read_text())
        assert trial["metrics"]["final_loss"] == pytest.approx(summary["final_loss"])
    page = (folder / "sweep_report.html").read_text()
    captions = ["objective per trial", "parameter importance", "parallel coordinates",
                "loss of the best 3 trials"]  # fmt: skip
    for caption in captions:
        assert f"<figcaption>{caption}</figcaption>" in page
    assert page.count("data:image/png;base64,") == 4
    alone = tunelab.train(folder / "best_recipe.yaml")
    assert alone.summary["eval_loss"] == pytest.approx(report["best"]["value"], abs=1e-5)


def test_a_killed_sweep_resumed_runs_the_same_trials_as_one_never_stopped(tmp_path, tiny_model_dir):
    from tests.conftest import run_cli, start_cli

    whole = sweep_recipe(tmp_path, tiny_model_dir, "whole")
    assert run_cli("sweep", str(whole)).returncode == 0
    broken = sweep_recipe(tmp_path, tiny_model_dir, "broken")
    process = start_cli("sweep", str(broken))
    second = tmp_path / "broken" / "trial-001" / "recipe.yaml"
    deadline = time.monotonic() + 300
    while not second.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    resumed = run_cli("sweep", str(broken), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def finished(name):
        report = json.loads((tmp_path / name / "sweep_report.json").read_text())
        done = [t for t in report["trials"] if t["state"] == "complete"]
        return sorted((t["params"]["train.lr"], t["params"]["method.r"]) for t in done), sorted(
            t["value"] for t in done
        )

    (params, values), (params_whole, values_whole) = finished("broken"), finished("whole")
    assert params == params_whole and values == pytest.approx(values_whole, abs=1e-6)
    states = [t["state"] for t in json.loads(
        (tmp_path / "broken" / "sweep_report.json").read_text())["trials"]]  # fmt: skip
    assert states.count("complete") == 3 and states.count("interrupted") == 1
    shown = run_cli("sweep", str(broken), "--show")
    assert shown.returncode == 0 and "sweep ranked by eval_loss" in shown.stderr
    assert shown.stderr.count(" complete ") == 3 and " interrupted " in shown.stderr


def test_workers_and_a_second_machine_share_one_sweep_and_no_trial_runs_twice(
    tmp_path, tiny_model_dir
):
    """`--workers 2` on this machine, and the same command started again as another machine
    would, sharing the study through a database URL."""
    from tests.conftest import run_cli, start_cli

    path = sweep_recipe(tmp_path, tiny_model_dir, trials=6)
    shared = f"sweep.storage=sqlite:///{tmp_path / 'study.db'}"
    first = start_cli("sweep", str(path), shared, "--workers", "2")
    time.sleep(1.0)
    second = run_cli("sweep", str(path), shared)
    assert second.returncode == 0, second.stderr[-3000:]
    assert first.wait(timeout=600) == 0
    folder = tmp_path / "sweep"
    report = json.loads((folder / "sweep_report.json").read_text())
    assert sorted(t["state"] for t in report["trials"]) == ["complete"] * 6
    assert len({t["trial"] for t in report["trials"]}) == 6
    assert len({tuple(sorted(t["params"].items())) for t in report["trials"]}) == 6
    runs = sorted(p.name for p in folder.glob("trial-*"))
    assert runs == sorted(f"trial-{t['trial']:03d}" for t in report["trials"])
    for run in runs:  # each trained once, by one worker: every step logged once
        lines = (folder / run / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines if '"loss"' in line]
        assert sorted(steps) == [1, 2, 3, 4], steps
    assert "sweep trial" in (folder / "worker-1.log").read_text()
    assert not (folder / "study.journal").exists()


def test_a_grid_sweep_tries_each_point_once(tmp_path, tiny_model_dir):
    import tunelab

    space = {"method.r": {"choices": [2, 4, 8]}, "train.lr": {"choices": [1e-3, 1e-2]}}
    result = tunelab.sweep(sweep_recipe(tmp_path, tiny_model_dir, trials=6, sampler="grid",
                                        space=space, metrics=[]))  # fmt: skip
    tried = [(t["params"]["method.r"], t["params"]["train.lr"]) for t in result.trials]
    assert len(tried) == 6 and len(set(tried)) == 6  # the whole grid, each point once


def test_sweep_mistakes_are_one_sentence(tmp_path, tiny_model_dir):
    from tests.conftest import run_cli

    path = sweep_recipe(tmp_path, tiny_model_dir)
    cases = [
        (['sweep.space={"train.lr_rate": {"choices": [1]}}'], "sweep.space: "),
        (["data.val_ratio=null"], "holds no validation data"),
        (['sweep.space={"train.lr": {"low": 1, "high": 0.1}}'], "is not below high"),
        (["sweep.sampler=grid"], "without a step"),
        (
            ["sweep.sampler=grid", 'sweep.space={"method.r": {"choices": [2, 4]}}'],
            "the grid has 2 points",
        ),
    ]
    for overrides, words in cases:
        done = run_cli("sweep", str(path), *overrides)
        said = " ".join(done.stderr.split())
        assert done.returncode == 2 and words in said and "Traceback" not in said, said
    assert run_cli("sweep", str(path), "--resume").returncode == 2
    (tmp_path / "sweep").mkdir(exist_ok=True)
    (tmp_path / "sweep" / "notes.txt").write_text("mine")
    done = run_cli("sweep", str(path))
    assert done.returncode == 2 and "is not empty" in done.stderr
    assert (tmp_path / "sweep" / "notes.txt").read_text() == "mine"
