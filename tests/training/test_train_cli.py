"""End to end through the real CLI on a tiny random model: run folder, summary, chat, export."""

from __future__ import annotations

import json
import math
from importlib import metadata

import pytest
import torch
import yaml

from tests.conftest import run_cli
from tunelab.data.load import load_conversations
from tunelab.data.render import ConversationRenderer
from tunelab.recipe import load_recipe

DATA = [
    {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    for a in range(3)
    for b in range(3)
]  # 9 samples: batch 4 -> 3 steps per epoch


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """One CLI training run of 2 epochs on the tiny model."""
    root = tmp_path_factory.mktemp("e2e")
    (root / "sums.json").write_text(json.dumps(DATA), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": ["sums.json"], "max_length": 128},
        "method": {"type": "lora", "r": 4, "alpha": 8, "target": "all-linear"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "seed": 7},
        "output": str(root / "runs" / "sums"),
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    result = run_cli("train", str(path), cwd=root)
    assert result.returncode == 0, result.stderr
    return root, path, result


def test_train_prints_run_folder_and_progress(finished_run):
    root, _, result = finished_run
    assert result.stdout.strip() == str(root / "runs" / "sums")
    assert "train" in result.stderr and "6/6" in result.stderr


def test_run_folder_contents(finished_run):
    root, _, _ = finished_run
    run = root / "runs" / "sums"
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["train"]["epochs"] == 2 and recipe["method"]["r"] == 4
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] == metadata.version("torch")
    assert env["cpu_count"] >= 1
    adapter = run / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert (adapter / "adapter_model.safetensors").stat().st_size > 1000
    assert (adapter / "tokenizer.json").is_file()
    assert "<|im_start|>" in (adapter / "chat_template.jinja").read_text()
    report = json.loads((run / "data_report.json").read_text())
    assert report["kept"] == 9 and report["skipped"] == 0
    assert report["samples"] == 9 and report["stop_token_trained"] == 9


def test_summary_numbers_are_consistent(finished_run, tiny_model_dir):
    root, path, _ = finished_run
    run = root / "runs" / "sums"
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert summary["steps"] == 6 and [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert summary["final_loss"] == metrics[-1]["loss"] and math.isfinite(summary["final_loss"])
    # Real tokens: every sample seen twice, padding excluded.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    convs, _ = load_conversations(load_recipe(path).data, root)
    renderer = ConversationRenderer(tokenizer, tokenizer.chat_template)
    real = sum(len(renderer.render(c).input_ids) for c in convs)
    assert summary["tokens"] == 2 * real == metrics[-1]["tokens"]
    assert summary["tokens_per_second"] == pytest.approx(
        summary["tokens"] / summary["train_seconds"], rel=0.01
    )
    assert 0 < summary["time_to_first_step_seconds"] <= summary["total_seconds"]
    assert 0 < summary["train_seconds"] <= summary["total_seconds"]
    assert 100 * 2**20 < summary["peak_memory_bytes"] < 16 * 2**30
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]
    assert summary["rows_skipped"] == 0


def test_existing_run_is_not_overwritten_silently(finished_run):
    root, path, _ = finished_run
    result = run_cli("train", str(path), cwd=root)
    assert result.returncode == 2 and "--overwrite" in result.stderr


def test_chat_prompt_prints_only_the_answer(finished_run):
    import tunelab

    root, _, _ = finished_run
    run = root / "runs" / "sums"
    result = run_cli("chat", str(run), "--prompt", "What is 1 plus 1?", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    expected = tunelab.chat(run, "What is 1 plus 1?", max_new_tokens=8)
    assert result.stdout == expected + "\n"


def test_chat_interactive_answers_each_turn(finished_run):
    import subprocess
    import sys

    root, _, _ = finished_run
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "chat",
            str(root / "runs" / "sums"),
            "--max-new-tokens",
            "4",
        ],
        input="hello\nsecond turn\n/reset\nthird\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("assistant>") == 3


def test_export_merged_matches_base_plus_adapter(finished_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, path, _ = finished_run
    run = root / "runs" / "sums"
    result = run_cli("export", str(run), "--out", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    base = AutoModelForCausalLM.from_pretrained(recipe["model"]["path"])
    adapted = PeftModel.from_pretrained(base, run / "adapter").eval()
    ids = torch.tensor([[1, 520, 2000, 300, 42, 7]])
    with torch.no_grad():
        diff = (merged(ids).logits - adapted(ids).logits).abs().max().item()
    assert diff < 1e-4
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (tmp_path / "merged" / "chat_template.jinja").is_file()
