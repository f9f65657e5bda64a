"""The web UI's parts without a browser: the recipe form made from the recipe's own sections
(every shipped example goes in and comes back out the same), run folders as its state, and
stop / resume of a real `tunelab train` process. The page itself: tests/ui/test_ui_browser.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tunelab.recipe import load_recipe
from tunelab.ui import runs as run_state
from tunelab.ui.form import FormError, form_fields, recipe_of, values_of

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_recipe_comes_back_out_of_the_form_the_same(example):
    recipe = load_recipe(example)
    values = values_of(recipe)
    again = load_recipe(recipe_of(values))
    assert again.model_dump(mode="json") == recipe.model_dump(mode="json")
    assert values_of(again) == values  # and the form shows it the same


def test_the_form_is_the_recipe_its_descriptions_defaults_and_choices():
    fields = {f.key: f for f in form_fields()}
    assert fields["train.lr"].kind == "number" and fields["train.lr"].default == 2e-4
    assert "zero3" in fields["train.distributed"].choices
    assert fields["data.train"].kind == "yaml" and fields["data.train"].required
    assert fields["train.fused_kernels"].kind == "tristate"  # true, false, or decided per run
    assert fields["train.save_every"].optional
    assert all(f.description for k, f in fields.items() if k.startswith(("train.", "method.")))
    # every section setting of the recipe is in the form
    from tunelab.recipe import Recipe

    for section in ("model", "data", "method", "train", "preference", "grpo"):
        model = Recipe.model_fields[section].annotation
        assert {f"{section}.{n}" for n in model.model_fields} <= set(fields)


def test_a_field_that_is_not_its_kind_is_one_sentence_with_its_key():
    values = values_of(load_recipe(EXAMPLES[0]))
    with pytest.raises(FormError, match=r"`data.replace` is not valid YAML \(line 1\)"):
        recipe_of({**values, "data.replace": "{a: [1,"})
    with pytest.raises(FormError, match="`train.save_every` takes a number, not 'often'"):
        recipe_of({**values, "train.save_every": "often"})
    assert recipe_of({**values, "train.save_every": ""}).get("train", {}).get("save_every") is None


def test_relative_paths_are_read_from_the_recipe_folder_but_output_stays(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.jsonl").write_text("{}\n")
    (tmp_path / "score.py").write_text("def f(**k): return [0]\n")
    raw = {
        "data": {"train": ["data/d.jsonl", "identity", {"path": "data/d.jsonl"}]},
        "grpo": {"rewards": [{"function": "score.py:f"}, "gsm8k"]},
        "output": "runs/data",
    }
    rebased = run_state.rebase(raw, tmp_path)
    file = str((tmp_path / "data" / "d.jsonl").resolve())
    assert rebased["data"]["train"] == [file, "identity", {"path": file}]
    assert rebased["grpo"]["rewards"] == [{"function": f"{tmp_path.resolve()}/score.py:f"}, "gsm8k"]
    assert rebased["output"] == "runs/data"


def wait_for(condition, seconds: float = 120):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


@pytest.mark.slow  # two real `tunelab train` processes (about 30 s); Ctrl-C and resume are in
# the default suite through tests/training/test_resume.py, the UI's launch in the browser test
def test_stop_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path, tiny_model_dir):
    """The page's Stop is Ctrl-C (the run saves a checkpoint and says how to continue); Resume
    continues it to the end; a restarted UI finds the run on disk in each state."""
    from tests.training.test_resume import write_recipe
    from tunelab.errors import TunelabError

    raw = load_recipe(write_recipe(tmp_path, tiny_model_dir, "r", max_steps=150, save_every=None))
    raw = recipe_of(values_of(raw))
    raw["output"] = "runs/stopped"
    run, process = run_state.launch(tmp_path, raw, tmp_path)
    assert run == tmp_path / "runs" / "stopped"
    wait_for(lambda: run_state.view(run, tmp_path).state == "running" and
             run_state.view(run, tmp_path).step >= 2)  # fmt: skip
    run_state.stop(run)
    assert process.wait(timeout=120) != 0
    shown = run_state.view(run, tmp_path)
    assert shown.state == "stopped" and 2 <= shown.step < 150
    saved = sorted((run / "checkpoints").glob("checkpoint-*"))
    assert saved and "--resume" in run_state.log_of(tmp_path, run).read_text()
    assert run_state.find_runs(tmp_path) == [run]
    with pytest.raises(TunelabError, match="not being trained now"):
        run_state.stop(run)
    resumed = run_state.resume(tmp_path, run)
    assert resumed.wait(timeout=300) == 0
    assert run_state.view(run, tmp_path).state == "finished"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 150


def test_launching_over_an_existing_run_is_refused(tmp_path, tiny_model_dir):
    from tests.training.test_resume import write_recipe
    from tunelab.errors import TunelabError

    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "notes.txt").write_text("mine")
    raw = recipe_of(values_of(load_recipe(write_recipe(tmp_path, tiny_model_dir, "t"))))
    raw["output"] = "runs/taken"
    with pytest.raises(TunelabError, match="already holds a run"):
        run_state.launch(tmp_path, raw, tmp_path)
    assert (tmp_path / "runs" / "taken" / "notes.txt").read_text() == "mine"


def test_ui_auth_must_be_user_and_password(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("ui", "--root", str(tmp_path), "--auth", "admin", "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--auth takes USER:PASSWORD" in result.stderr


def test_ui_on_a_taken_port_is_one_sentence_and_port_0_picks_a_free_one(tmp_path):
    import socket
    import subprocess
    import sys

    from tests.conftest import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("ui", "--root", str(tmp_path), "--port", str(port))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"port {port} on 127.0.0.1 is in use; choose another with --port" in result.stderr
    child = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "ui", "--root", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        import select

        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready, "tunelab ui printed no address in 120 s"
        url = child.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and not url.rstrip("/").endswith(":0"), url
        assert int(url.rstrip("/").rsplit(":", 1)[1]) > 0
    finally:
        child.terminate()
        child.wait(timeout=30)


def test_the_runs_tab_lists_overlays_and_opens_runs_and_chat_streams_a_checkpoint(
    tmp_path, tiny_model_dir
):
    """Two finished runs: the table row of each (its summary's figures), both loss curves on
    one chart, one run opened; the chat picks RUN@STEP and streams each answer in pieces."""
    import tunelab
    from tests.training.test_resume import write_recipe
    from tunelab.ui.workbench import Workbench

    (tmp_path / "runs").mkdir()
    for name, lr in (("a", 5e-3), ("b", 1e-3)):
        path = write_recipe(tmp_path, tiny_model_dir, f"runs/{name}", max_steps=4, lr=lr)
        tunelab.train(path)
    bench = Workbench(tmp_path)
    table = bench.runs_table()
    row = table.set_index("run").loc["runs/a"]
    summary = json.loads((tmp_path / "runs" / "a" / "summary.json").read_text())
    assert row["status"] == "finished" and row["steps"] == 4 and row["method"] == "lora"
    assert row["final loss"] == round(summary["final_loss"], 4)
    assert set(table["run"]) == {"runs/a", "runs/b"}
    figure, said = bench.runs_curves([str(tmp_path / "runs/a"), "runs/b"], "loss")
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["runs/a", "runs/b"]
    assert "runs/a: 4 points" in said and "runs/b: 4 points" in said
    assert figure.axes[0].get_xlabel() == "step" and figure.axes[0].get_ylabel() == "loss"
    assert "logged no eval_loss" in bench.runs_curves(["runs/a"], "eval_loss")[1]
    shown, _, _ = bench.open_run("runs/a")
    assert '"steps": 4' in shown
    assert f"{tmp_path / 'runs' / 'a'}@2" in bench.chat_choices()
    updates = list(bench.chat(f"{tmp_path / 'runs' / 'a'}@2", "Who are you?", [], [], "Be brief.",
                              0.0, 12, False))  # fmt: skip
    assert len(updates) > 4 and updates[-1][2].endswith("answered.")
    tuned, base, _ = updates[-1]
    assert [m["role"] for m in tuned] == ["user", "assistant"] and tuned[1]["content"]
    assert base[0]["content"] == "Who are you?" and base[1]["content"]
