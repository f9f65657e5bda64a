"""`tunelab eval` and `tunelab compare` through the CLI on a tiny model: files and consistent numbers."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_cli

QUESTIONS = [
    {
        "question": f"Tom has {a} apples and gets {b} more. How many now?",
        "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}",
    }
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1)]
]
PROBES = [{"prompt": "What is the capital of France?", "expect": "Paris"}, {"prompt": "Say hi."}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("eval")
    (root / "q.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS), encoding="utf-8")
    (root / "probes.jsonl").write_text("\n".join(json.dumps(p) for p in PROBES), encoding="utf-8")
    (root / "train.json").write_text(
        json.dumps([{"instruction": q["question"], "output": q["answer"]} for q in QUESTIONS]),
        encoding="utf-8",
    )
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": [str(root / "train.json")]},
        "method": {"type": "lora", "r": 4},
        "train": {"max_steps": 4, "lr": 1e-2, "tensorboard": False},
        "output": str(root / "run"),
    }
    (root / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert run_cli("train", str(root / "r.yaml")).returncode == 0
    return root, tiny_model_dir


def test_eval_json_summary_and_items(setup):
    root, model = setup
    result = run_cli(
        "eval",
        str(root / "run"),
        "--data",
        str(root / "q.jsonl"),
        "--shots",
        "1",
        "--fewshot-from",
        str(root / "q.jsonl"),
        "--limit",
        "4",
        "--last",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "3",
        "--out",
        str(root / "ev"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    items = [json.loads(x) for x in (root / "ev" / "items.jsonl").read_text().splitlines()]
    assert (
        summary["items"] == len(items) == 4 and summary["shots"] == 1 and summary["style"] == "chat"
    )
    assert [i["question"] for i in items] == [q["question"] for q in QUESTIONS[-4:]]
    assert summary["strict_match"]["score"] == sum(i["strict_correct"] for i in items) / 4
    assert summary["generated_tokens"] > 0 and summary["generation_tokens_per_second"] > 0
    assert json.loads((root / "ev" / "summary.json").read_text())["items"] == 4


def test_eval_user_errors(setup):
    root, _ = setup
    missing = run_cli("eval", str(root / "run"), "--data", str(root / "q.jsonl"), "--shots", "2")
    assert missing.returncode == 2 and "--fewshot-from" in missing.stderr
    bad = root / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "no marker"}\n')
    result = run_cli("eval", str(root / "run"), "--data", str(bad), "--shots", "0")
    assert (
        result.returncode == 2
        and "bad.jsonl:1" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_compare_writes_reports_with_flips_and_summary(setup):
    root, model = setup
    out = root / "report"
    result = run_cli(
        "compare",
        str(model),
        str(root / "run"),
        "--prompts",
        str(root / "probes.jsonl"),
        "--task",
        "gsm8k",
        "--data",
        str(root / "q.jsonl"),
        "--shots",
        "0",
        "--max-new-tokens",
        "8",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert len(report["rows"]) == 2 and report["rows"][0]["expect"] == "Paris"
    records = report["task"]["records"]
    for key, short in (("strict_match", "strict"), ("flexible_extract", "flexible")):
        flips = report["task"][key]["flips"]
        gained = [i for i, r in enumerate(records) if not r[short][0] and r[short][1]]
        lost = [i for i, r in enumerate(records) if r[short][0] and not r[short][1]]
        assert flips["wrong_to_right"] == gained and flips["right_to_wrong"] == lost
    assert report["summary_line"].startswith("gained on the target: strict-match")
    assert "Cost on the probe" in report["summary_line"]
    assert "| prompt | before | after |" in (out / "report.md").read_text()
    assert "<table>" in (out / "report.html").read_text()
    assert (
        report["summary_line"] in result.stderr.replace("\n", " ")
        or "gained on the target" in result.stderr
    )


def test_recipe_evaluate_section_puts_before_after_in_the_run(setup, tiny_model_dir):
    root, _ = setup
    recipe = yaml.safe_load((root / "r.yaml").read_text())
    recipe["output"] = str(root / "run_with_report")
    recipe["evaluate"] = {
        "prompts": str(root / "probes.jsonl"),
        "task": "gsm8k",
        "data": str(root / "q.jsonl"),
        "shots": 0,
        "limit": 3,
        "max_new_tokens": 8,
    }
    (root / "r2.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    result = run_cli("train", str(root / "r2.yaml"))
    assert result.returncode == 0, result.stderr
    run = root / "run_with_report"
    summary = json.loads((run / "summary.json").read_text())
    outcome = summary["before_after"]
    assert outcome["summary_line"].startswith("gained on the target")
    assert set(outcome["task"]) == {"strict_match", "flexible_extract"}
    assert json.loads((run / "report" / "report.json").read_text())["task"]["items"] == 3
    assert (run / "report" / "report.html").is_file()


def test_evaluate_section_is_validated(tmp_path):
    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("data: {train: [identity]}\nevaluate: {task: gsm8k, prompts: p.jsonl}\n")
    with pytest.raises(
        TunelabError, match="r.yaml:2: `evaluate` value error, a task needs its data"
    ):
        load_recipe(path)


def test_harness_missing_is_one_clear_message(monkeypatch, tmp_path):
    import sys

    from tunelab.errors import TunelabError
    from tunelab.evaluation.harness import evaluate_with_harness

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(TunelabError, match=r"pip install 'tunelab\[harness\]'"):
        evaluate_with_harness("smollm2-135m-instruct", tmp_path / "task.yaml")


def test_eval_and_compare_never_replace_files_they_did_not_write(setup):
    """`--out` the run folder itself, or a folder holding the user's report.md: refused
    before any work, in one sentence, every byte kept."""
    root, model = setup
    run_summary = (root / "run" / "summary.json").read_bytes()
    result = run_cli(
        "eval", str(root / "run"), "--data", str(root / "q.jsonl"), "--shots", "0",
        "--limit", "1", "--max-new-tokens", "4", "--out", str(root / "run"),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "summary.json exists and is not an evaluation result tunelab wrote" in result.stderr
    assert (root / "run" / "summary.json").read_bytes() == run_summary
    assert not (root / "run" / "items.jsonl").exists()

    mine = root / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n", encoding="utf-8")
    args = ("compare", str(model), str(root / "run"), "--prompts", str(root / "probes.jsonl"))
    refused = run_cli(*args, "--out", str(mine))
    assert refused.returncode == 2 and "report.md exists and is not" in refused.stderr
    assert (mine / "report.md").read_text(encoding="utf-8") == "my notes\n"
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"]
    # (tunelab's own earlier report is replaced: tests/test_outputs.py)
