"""GRPO on TRL's trainer: prompts rendered by tunelab, built-in and user rewards, the run folder."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO
from tests.training.test_resume import killed_at, resumed_like_whole
from tunelab import train
from tunelab.data.render import ConversationRenderer
from tunelab.data_tools import recipe_data
from tunelab.errors import TunelabError
from tunelab.evaluation.gsm8k import Problem, judge
from tunelab.evaluation.runner import evaluate_gsm8k
from tunelab.models.load import load_tokenizer
from tunelab.models.sources import resolve_model
from tunelab.recipe import TaskOptions, load_recipe
from tunelab.rewards import gsm8k_reward

PROBLEMS = [
    {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5", "level": 1},
    {"question": "What is 4 + 4?", "answer": "4 + 4 = 8\n#### 8", "level": 1},
    {"question": "What is 10 - 3?", "answer": "10 - 3 = 7\n#### 7", "level": 2},
    {"question": "What is 3 * 3?", "answer": "3 * 3 = 9\n#### 9", "level": 3},
]
# A user's reward: it reads a data column and the reference answer, and notes what it got.
USER_REWARDS = """
import json, os

def by_level(prompts, completions, completion_ids, answer, level, **kwargs):
    with open(os.environ["SEEN_FILE"], "a") as handle:
        for p, a, lv in zip(prompts, answer, level):
            handle.write(json.dumps({"prompt": p, "answer": a, "level": lv}) + "\\n")
    return [float(lv) / 10 for lv in level]
"""


def problems_file(root, rows=PROBLEMS):
    path = root / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def grpo_recipe(root, model_dir, name="run", rewards=("gsm8k", "format"), **train_settings):
    return {
        "model": {"path": str(model_dir)},
        "data": {"train": [str(problems_file(root))]},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "train": {
            "objective": "grpo",
            "max_steps": 3,
            "batch_size": 4,
            "lr": 1e-3,
            "seed": 5,
            "tensorboard": False,
            **train_settings,
        },
        "grpo": {"generations": 2, "max_completion_length": 8, "rewards": list(rewards)},
        "output": str(root / name),
    }


def test_the_gsm8k_reward_and_tunelab_eval_give_the_same_verdicts(tmp_path, tiny_model_dir):
    data = problems_file(tmp_path)
    options = TaskOptions(task="gsm8k", data=str(data), shots=0, max_new_tokens=12, batch_size=4)
    summary = evaluate_gsm8k(str(tiny_model_dir), options)
    outputs = [r["output"] for r in summary["records"]]
    # and outputs whose verdicts differ between strict and flexible, with reasoning, or with
    # the next question begun after the answer
    outputs += [
        "2 + 3 = 5\n#### 5",
        "<think>It is 4 + 4 = 9? No.</think>\n#### 8",
        "The answer is 7.\nQuestion: What is 1 + 1? 2",
        "#### 9 is not it, 10",
    ]
    golds = [p["answer"] for p in PROBLEMS] * 2
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    renderer = ConversationRenderer(tokenizer, tokenizer.chat_template)
    prompts = [
        tokenizer.decode(renderer.prompt_ids([{"role": "user", "content": p["question"]}]))
        for p in PROBLEMS
    ] * 2
    for match in ("strict", "flexible"):
        rewards = gsm8k_reward(match)(prompts=prompts, completions=outputs, answer=golds)
        verdicts = [judge(Problem("q", g), o)[f"{match}_correct"] for g, o in zip(golds, outputs)]
        assert rewards == [float(v) for v in verdicts]
    evaluated = [r["strict_correct"] for r in summary["records"]]
    assert rewards[:4] == [float(v) for v in [r["flexible_correct"] for r in summary["records"]]]
    assert gsm8k_reward("strict")(prompts[:4], outputs[:4], golds[:4]) == [
        float(v) for v in evaluated
    ]
    assert gsm8k_reward("strict")(prompts[4:], outputs[4:], golds[4:]) == [1.0, 1.0, 0.0, 1.0]
    assert gsm8k_reward("flexible")(prompts[4:], outputs[4:], golds[4:]) == [1.0, 1.0, 1.0, 0.0]


def test_the_reward_reads_the_answer_after_a_prompt_that_opened_the_reasoning(thinker_dir):
    """DeepSeek-R1's prompt ends in `<think>`: the completion holds reasoning, then `</think>`
    and the answer; the reward judges the answer only, as `tunelab eval` does."""
    tokenizer = load_tokenizer(resolve_model(str(thinker_dir)))
    renderer = ConversationRenderer(tokenizer, tokenizer.chat_template)
    prompt = tokenizer.decode(renderer.prompt_ids([{"role": "user", "content": "2 + 3?"}]))
    assert prompt.rstrip().endswith("<think>")
    completions = ["maybe 4, no: 5\n</think>\n\nIt is 6", "hmm 6? no\n</think>\n\nIt is 5"]
    rewards = gsm8k_reward("flexible")([prompt] * 2, completions, ["#### 5"] * 2)
    assert rewards == [0.0, 1.0]


def test_the_format_reward_follows_the_template_shape(thinker_dir, tiny_model_dir):
    from tunelab.rewards import RewardContext, format_reward

    tokenizer = load_tokenizer(resolve_model(str(thinker_dir)))
    renderer = ConversationRenderer(tokenizer, tokenizer.chat_template)
    prompt = tokenizer.decode(renderer.prompt_ids([{"role": "user", "content": "2 + 3?"}]))
    stop = tokenizer.eos_token_id
    reasons = format_reward(RewardContext({stop}, True, 16))
    texts = ["so 5\n</think>\n\n5", "so 5\n</think>\n\n5", "5 without thinking", "so 5 ..."]
    ids = [[7, stop], [7, 8], [7, stop], [7, 9]]  # the second and fourth were cut off
    assert reasons([prompt] * 4, texts, ids) == [1.0, 0.0, 0.0, 0.0]
    plain = format_reward(RewardContext({stop}, False, 16))  # e.g. SmolLM2's ChatML
    assert plain(["q"] * 3, ["5", "<think>x</think>5", ""], [[7, stop]] * 3) == [1.0, 0.0, 0.0]


def test_data_check_and_estimate_of_a_grpo_recipe(tmp_path, tiny_model_dir):
    from tunelab.data import doctor
    from tunelab.data_tools import check_data
    from tunelab.estimation import estimate_recipe

    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(grpo_recipe(tmp_path, tiny_model_dir)), encoding="utf-8")
    recipe = load_recipe(path)
    result = check_data(doctor.open_target(str(path), None))
    assert result.preference_rows == 4 and not result.problems
    estimate = estimate_recipe(recipe, "cpu")
    _, _, data = recipe_data(recipe, resolve_model(str(tiny_model_dir)))
    longest = max(len(s.prompt_ids) for s in data.train)
    assert estimate.tokens_per_step == 4 * (longest + 8)  # each answer as long as allowed
    assert estimate.parts["generation"] > 0 and "reference" not in estimate.parts
    assert estimate.data.steps_per_epoch == 2 and estimate.data.sampled  # 4 prompts x 2 answers


def test_a_grpo_run_keeps_rewards_samples_and_metrics(tmp_path, tiny_model_dir, monkeypatch):
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("SEEN_FILE", str(seen))
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS, encoding="utf-8")
    recipe = grpo_recipe(
        tmp_path,
        tiny_model_dir,
        rewards=["gsm8k", "format", {"function": "my_rewards.py:by_level", "weight": 0.5}],
        save_every=2,
    )
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    result = train(path)
    run = result.run_dir
    summary = result.summary
    assert summary["steps"] == 3 and summary["generation"] == "transformers generate"
    record = json.loads((run / "rewards.json").read_text())
    assert [r["reward"] for r in record["rewards"]] == ["gsm8k_flexible", "format", "by_level"]
    user = record["rewards"][2]
    import hashlib

    assert user["sha256"] == hashlib.sha256((tmp_path / "my_rewards.py").read_bytes()).hexdigest()
    assert user["weight"] == 0.5 and user["file"] == str((tmp_path / "my_rewards.py").resolve())
    # the user's function got tunelab's rendered prompt and the data's columns
    got = [json.loads(line) for line in seen.read_text().splitlines()]
    by_question = {p["question"]: p for p in PROBLEMS}
    for row in got:
        question = next(q for q in by_question if q in row["prompt"])
        assert row["prompt"].startswith("<|im_start|>system") and row["prompt"].endswith(
            "<|im_start|>assistant\n"
        )
        assert (row["answer"], row["level"]) == (
            by_question[question]["answer"],
            by_question[question]["level"],
        )
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("reward", "reward_std", "rewards/by_level/mean", "rewards/format/mean",
                "completions/mean_length", "clip_ratio/region_mean"):  # fmt: skip
        assert all(key in m for m in metrics), key
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    completions = [s for s in samples if s.get("kind") == "completion"]
    assert sorted({s["step"] for s in completions}) == [1, 2, 3]
    assert all(set(s["rewards"]) == {"gsm8k_flexible", "format", "by_level"} for s in completions)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert "generation" in summary["memory"]["estimated_parts"]


def test_grpo_refuses_what_it_cannot_do_in_one_sentence(tmp_path, tiny_model_dir):
    (tmp_path / "broken_rewards.py").write_text("raise RuntimeError('no network here')\n")
    (tmp_path / "needs.py").write_text("def score(completions, solution, **kw):\n    return []\n")
    cases = [
        ({"grpo": {"rewards": []}}, "list them in grpo.rewards"),
        ({"train": {"batch_size": 3}}, "must be a multiple of grpo.generations (2)"),
        ({"grpo": {"rewards": ["missing.py:score"]}}, "reward file"),
        ({"grpo": {"rewards": ["broken_rewards.py:score"]}}, "no network here"),
        ({"grpo": {"rewards": ["needs.py:nothing"]}}, "has no function `nothing`"),
        ({"grpo": {"rewards": ["needs.py:score"]}}, "takes `solution`"),
        ({"method": {"type": "ptuning"}}, "learns virtual tokens"),
    ]
    for change, words in cases:
        recipe = grpo_recipe(tmp_path, tiny_model_dir)
        for section, values in change.items():
            recipe[section] = {**recipe[section], **values}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        with pytest.raises(TunelabError, match=words.replace("(", r"\(").replace(")", r"\)")):
            train(load_recipe(path), overwrite=True)


def test_bad_prompt_rows_are_located(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": "What is 2 + 2?", "answer": "4"},
        {"prompt": "", "answer": "0"},
        {"prompt": [{"role": "assistant", "content": "hi"}], "answer": "1"},
        "not an object",
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = grpo_recipe(tmp_path, tiny_model_dir)
    recipe["data"] = {"train": [str(path)]}
    with pytest.raises(TunelabError) as error:
        train(recipe)
    text = str(error.value)
    assert "3 bad row(s)" in text
    assert "prompts.jsonl:2 field `prompt`: must be non-empty text" in text
    assert "prompts.jsonl:3 field `prompt`: must end with a user turn" in text
    assert "prompts.jsonl:4: must be a JSON object" in text


def staged(root, model_dir, name):
    """SFT on the problems' worked answers, then GRPO from that adapter, checkpoint each 2."""
    recipe = grpo_recipe(root, model_dir, name, save_every=2, max_steps=4)
    recipe["train"] = {**recipe["train"], "objective": "sft", "max_steps": 4}
    recipe["stages"] = [
        {"name": "sft"},
        {"name": "grpo", "train": {"objective": "grpo", "max_steps": 4}},
    ]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.slow  # three runs in child processes (about 45 s)
def test_sft_then_grpo_resumes_after_a_sigkill_in_the_grpo_stage(tmp_path, tiny_model_dir):
    whole = staged(tmp_path, tiny_model_dir, "whole")
    train(whole)
    broken = staged(tmp_path, tiny_model_dir, "broken")
    killed_at(broken, 3, stage="stage-2")
    metrics = resumed_like_whole(tmp_path, "stage-2-grpo")
    assert [r["step"] for r in metrics[1]] == [1, 2, 3, 4]
    for a, b in zip(*metrics):
        assert abs(a["reward"] - b["reward"]) < 1e-6 and abs(a["loss"] - b["loss"]) < 1e-5


ARITHMETIC = REPO / "examples" / "data" / "arithmetic.jsonl"


@pytest.mark.slow  # about 8 minutes: 30 GRPO steps of the built-in model
def test_grpo_on_the_builtin_model_raises_the_reward_on_arithmetic(tmp_path):
    recipe = load_recipe(REPO / "examples" / "arithmetic-grpo.yaml")
    result = train(
        recipe,
        ["train.max_steps=30", "train.save_every=null", "evaluate=null",
         f"output={tmp_path / 'run'}"],
    )  # fmt: skip
    rewards = [
        json.loads(x)["reward"] for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > first + 0.1, rewards


@pytest.mark.gpu  # run with `pytest -m gpu` on a machine with a CUDA GPU
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_grpo_on_a_gpu_samples_with_the_engine_it_says(tmp_path, tiny_model_dir):
    """vLLM colocated when it is installed, else transformers' generate; either way the run
    trains, and summary.json names the engine that sampled."""
    import importlib.util

    result = train(grpo_recipe(tmp_path, tiny_model_dir, max_steps=2))
    engine = "vLLM (colocated)" if importlib.util.find_spec("vllm") else "transformers generate"
    assert result.summary["generation"] == engine and result.summary["device"] == "cuda"
    metrics = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all("reward" in m for m in metrics)


BAD_REWARDS = """
import math, time

def raises(completions, **kwargs):
    return [1 / 0 for _ in completions]

def nan(completions, **kwargs):
    return [math.nan for _ in completions]

def none(completions, **kwargs):
    return [None] * len(completions)

def text(completions, **kwargs):
    return ["good" for _ in completions]

def short(completions, **kwargs):
    return [1.0]

def scalar(completions, **kwargs):
    return 1.0

def hangs(completions, **kwargs):
    print("reward started", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize(
    ("function", "words"),
    [
        ("raises", "reward raises (bad_rewards.py:raises) raised ZeroDivisionError"),
        ("nan", "reward nan (bad_rewards.py:nan) returned nan for completion 0; every value must be a finite"),
        ("none", "returned None (NoneType) for completion 0; every value must be a number"),
        ("text", "returned 'good' (str) for completion 0"),
        ("short", "returned 1 values for 4 completions"),
        ("scalar", "returned 1.0 (float); it must return a list of 4 numbers"),
    ],
)  # fmt: skip
def test_a_reward_that_misbehaves_is_one_sentence_naming_it(function, words):
    from tunelab.rewards import _named

    namespace: dict = {}
    exec(BAD_REWARDS, namespace)
    reward = _named(namespace[function], function, f"bad_rewards.py:{function}")
    with pytest.raises(TunelabError, match=words.replace("(", r"\(").replace(")", r"\)")):
        reward(prompts=["p"] * 4, completions=["a", "b", "c", "d"], completion_ids=[[1]] * 4)


def test_a_run_whose_reward_returns_nan_stops_at_the_first_step_with_one_sentence(
    tmp_path, tiny_model_dir
):
    from tests.conftest import run_cli

    (tmp_path / "bad_rewards.py").write_text(BAD_REWARDS, encoding="utf-8")
    recipe = grpo_recipe(tmp_path, tiny_model_dir, rewards=["bad_rewards.py:nan"])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    done = run_cli("train", str(tmp_path / "r.yaml"))
    assert done.returncode == 2, done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert "reward nan (bad_rewards.py:nan) returned nan for completion 0" in said
    assert "Traceback" not in said and "internal error" not in said


def test_ctrl_c_stops_a_reward_that_hangs(tmp_path, tiny_model_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "bad_rewards.py").write_text(BAD_REWARDS, encoding="utf-8")
    recipe = grpo_recipe(tmp_path, tiny_model_dir, rewards=["bad_rewards.py:hangs"])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    child = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "train", str(tmp_path / "r.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    for line in child.stdout:
        lines.append(line)
        if "reward started" in line:
            break
    started = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    said = "".join(lines) + out
    assert time.monotonic() - started < 30
    assert child.returncode == 2, said[-2000:]
    assert "Ctrl-C while reward hangs (bad_rewards.py:hangs) ran" in said
    assert "Traceback" not in said


def test_the_strict_reward_says_when_no_answer_can_score(capsys):
    strict = gsm8k_reward("strict")
    prompts, answers = ["What is 2 + 3?"] * 2, ["2 + 3 = 5\n#### 5"] * 2
    for _ in range(3):
        assert strict(prompts, ["It is 5.", "5"], answer=answers) == [0.0, 0.0]
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("warning:") == 1 and "no answer of the first 2 steps" in said
    assert "set match: flexible" in said
    marked = gsm8k_reward("strict")
    for _ in range(3):
        marked(prompts, ["#### 5", "5"], answer=answers)
    assert "warning" not in capsys.readouterr().err
