"""The Python API mirrors the CLI: data check and stats, estimate, eval and compare."""

from __future__ import annotations

import json

import tunelab

ROWS = [{"instruction": f"What is {i} plus one?", "output": f"It is {i + 1}."} for i in range(4)]


def write_recipe(tmp_path, model) -> str:
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps(r) + "\n" for r in ROWS) + '{"instruction": "no answer"}\n',
        encoding="utf-8",
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{path: {model}}}\ndata: {{train: [{data}], on_bad_row: skip}}\n"
        f"train: {{batch_size: 2}}\noutput: {tmp_path / 'run'}\n",
        encoding="utf-8",
    )
    return str(recipe)


def test_check_data_and_stats(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    checked = tunelab.check_data(recipe)
    assert checked.problems == 1 and len(checked.conversations) == 4
    assert "d.jsonl:5" in checked.report.bad_rows[0]
    stats = tunelab.data_stats(recipe)
    assert stats["samples"] == 4 and stats["suggested_max_length"] % 64 == 0


def test_estimate_returns_one_estimate_per_stage(tmp_path, tiny_model_dir):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    [result] = tunelab.estimate(recipe, memory="4GB")
    assert result.total_bytes > 0 and result.seconds_per_step > 0
    staged = tunelab.estimate(recipe, ["stages=[{name: a}, {name: b, train: {lr: 1e-5}}]"])
    assert len(staged) == 2


def test_evaluate_and_compare(tmp_path, tiny_model_dir):
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"question": "1 + 1?", "answer": "#### 2"}\n{"question": "2 + 2?", "answer": "#### 4"}\n'
    )
    summary = tunelab.evaluate(tiny_model_dir, questions, max_new_tokens=4, batch_size=2)
    assert summary["items"] == 2 and 0 <= summary["strict_match"]["score"] <= 1
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n{"prompt": "Who are you?", "expect": "model"}\n')
    report = tunelab.compare(tiny_model_dir, tiny_model_dir, prompts, tmp_path / "report", None, 8)
    assert [row["changed"] for row in report["rows"]] == [False, False]
    assert (tmp_path / "report" / "report.md").is_file()


def test_overrides_apply_to_a_recipe_already_loaded(tmp_path, tiny_model_dir):
    recipe = tunelab.load_recipe(write_recipe(tmp_path, tiny_model_dir))
    result = tunelab.train(
        recipe, ["train.max_steps=1", "train.tensorboard=false", f"output={tmp_path / 'other'}"]
    )
    assert result.run_dir == tmp_path / "other" and result.summary["steps"] == 1
    assert not (tmp_path / "run").exists()
