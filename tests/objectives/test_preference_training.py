"""Preference objectives (DPO, KTO, ORPO, SimPO) on TRL's trainers, over tunelab's own renders."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import SHARED_DATA, run_cli
from tests.training.test_resume import killed_at, resumed_like_whole
from tunelab import train
from tunelab.data.preference import read_preferences, render_preference
from tunelab.data.render import ConversationRenderer
from tunelab.data_tools import recipe_data
from tunelab.errors import TunelabError
from tunelab.objectives import TrainerParts, objective_of
from tunelab.recipe import load_recipe

PAIRS = [
    {"prompt": "Is the sky blue?", "chosen": "Yes, it is blue.", "rejected": "No idea, maybe green."},
    {"prompt": "Is fire hot?", "chosen": "Yes, fire is hot.", "rejected": "No, it is cold."},
    {"prompt": "Is water wet?", "chosen": "Yes, water is wet.", "rejected": "Not at all."},
    {"prompt": "Is ice cold?", "chosen": "Yes, ice is cold.", "rejected": "Ice is warm."},
]  # fmt: skip
REGISTRY = SHARED_DATA / "llamafactory" / "dataset_info.json"


def pairs_file(root, rows=PAIRS):
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_for(root, model_dir, objective, **train_settings):
    return {
        "model": {"path": str(model_dir)},
        "data": {"train": [str(pairs_file(root))]},
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "train": {
            "objective": objective,
            "max_steps": 6,
            "batch_size": 4,
            "lr": 1e-2,
            "warmup_ratio": 0,
            "scheduler": "constant",
            "seed": 5,
            "tensorboard": False,
            **train_settings,
        },
        "output": str(root / f"run-{objective}"),
    }


def test_trl_trains_the_pairs_as_tunelab_renders_them(tmp_path, thinker_dir):
    """DeepSeek-R1's template opens <think> in the generation prompt, but renders a finished
    answer without it; TRL's own tokenization would train the answer after a prompt that the
    served model never sees. The trainer gets tunelab's ids instead, prompt as served."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.data_utils import _tokenize

    recipe = load_recipe(recipe_for(tmp_path, thinker_dir, "dpo"))
    from tunelab.plan import plan_run

    plan = plan_run(recipe, torch.device("cpu"))
    tokenizer, template, data = recipe_data(recipe, plan.source)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(thinker_dir),
        LoraConfig(r=4, target_modules="all-linear"),
    )
    arguments = {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4,
                 "report_to": "none", "use_cpu": True, "train_sampling_strategy": "sequential"}  # fmt: skip
    parts = TrainerParts(recipe, None, arguments, model, tokenizer, data, [])
    trainer = objective_of(recipe).build_trainer(parts)
    batch = next(iter(trainer.get_train_dataloader()))

    rows, _ = read_preferences(pairs_file(tmp_path), "preference")
    renderer = ConversationRenderer(tokenizer, template)
    first = render_preference(renderer, rows[0])
    chosen = first.prompt_ids + first.chosen_ids
    assert batch["input_ids"][0, : len(chosen)].tolist() == chosen
    trained = batch["input_ids"][0][batch["completion_mask"][0].bool()].tolist()
    assert trained == first.chosen_ids
    assert tokenizer.decode(first.prompt_ids).endswith("<｜Assistant｜><think>\n")
    assert tokenizer.decode(first.chosen_ids).startswith("\n</think>\n\nYes, it is blue.")

    messages = [{"role": "user", "content": PAIRS[0]["prompt"]}]
    whole = messages + [{"role": "assistant", "content": PAIRS[0]["chosen"]}]
    served = _tokenize(tokenizer, messages, add_generation_prompt=True)["input_ids"]
    theirs = _tokenize(tokenizer, whole)["input_ids"]
    assert served == first.prompt_ids and theirs[: len(served)] != served


@pytest.mark.parametrize("objective", ["dpo", "kto", "orpo", "simpo"])
def test_each_objective_moves_its_metrics_the_right_way(tmp_path, tiny_model_dir, objective):
    recipe = recipe_for(tmp_path, tiny_model_dir, objective, save_every=3)
    result = train(recipe)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    first, last = rows[0], rows[-1]
    assert last["loss"] < first["loss"], (first, last)
    assert last["rewards/margins"] > first["rewards/margins"], (first, last)
    if objective != "kto":
        assert last["rewards/accuracies"] >= first["rewards/accuracies"]
    summary = result.summary
    assert summary["steps"] == 6 and summary["tokens"] > 0 and summary["tokens_per_second"] > 0
    assert summary["packed"] is False and summary["samples"] == (8 if objective == "kto" else 4)
    assert "reference" in summary["memory"]["estimated_parts"] or objective in ("orpo", "simpo")
    adapter = result.run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    assert not (result.run_dir / "checkpoints" / ".staging").exists()


def test_full_tuning_dpo_keeps_a_frozen_reference_in_the_estimate(tmp_path, tiny_model_dir):
    from tunelab.estimation import estimate_recipe

    recipe = recipe_for(tmp_path, tiny_model_dir, "dpo")
    full = estimate_recipe(load_recipe({**recipe, "method": {"type": "full"}}), "cpu")
    assert full.parts["reference"] == full.parts["weights"]
    lora = estimate_recipe(load_recipe(recipe), "cpu")
    assert lora.parts["reference"] == lora.parts["gradients"]  # a copy of the adapter
    orpo = load_recipe({**recipe, "train": {**recipe["train"], "objective": "orpo"}})
    assert "reference" not in estimate_recipe(orpo, "cpu").parts
    precomputed = load_recipe({**recipe, "preference": {"reference": "precompute"}})
    assert "reference" not in estimate_recipe(precomputed, "cpu").parts


BAD_ROWS = [
    {"prompt": "Pick one.", "chosen": "A"},
    {"prompt": "Pick one.", "chosen": "A", "rejected": "A"},
    *PAIRS,
]


def test_bad_pairs_stop_the_run_with_each_row_located(tmp_path, tiny_model_dir):
    recipe = recipe_for(tmp_path, tiny_model_dir, "dpo")
    pairs_file(tmp_path, BAD_ROWS)
    with pytest.raises(TunelabError) as caught:
        train(recipe)
    message = str(caught.value)
    assert "pairs.jsonl:1 field `rejected`: missing" in message
    assert "pairs.jsonl:2 field `rejected`: is the same answer as the chosen one" in message
    assert not (tmp_path / "run-dpo" / "summary.json").exists()

    kto = tmp_path / "rated.jsonl"
    kto.write_text(
        json.dumps({"prompt": "Hi", "completion": "Hello!", "label": True}) + "\n"
        + json.dumps({"prompt": "Hi", "completion": "Go away.", "label": "no"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    rated = {**recipe, "data": {"train": [str(kto)]}}
    rated["train"] = {**recipe["train"], "objective": "kto"}
    with pytest.raises(TunelabError, match=r"rated.jsonl:2 field `label`: must be true or false"):
        train(rated)
    rated["data"]["on_bad_row"] = "skip"
    with pytest.raises(TunelabError, match="kto estimates its KL term"):
        train({**rated, "train": {**rated["train"], "batch_size": 1}})


def test_objectives_refuse_what_they_cannot_train(tmp_path, tiny_model_dir):
    recipe = recipe_for(tmp_path, tiny_model_dir, "dpo")
    with pytest.raises(TunelabError, match="method.type ptuning learns virtual tokens"):
        train({**recipe, "method": {"type": "ptuning"}})
    rated = tmp_path / "rated.jsonl"
    rated.write_text(json.dumps({"prompt": "Hi", "completion": "Hello!", "label": True}) + "\n")
    with pytest.raises(TunelabError, match="needs chosen/rejected pairs; use train.objective: kto"):
        train({**recipe, "data": {"train": [str(rated)]}})
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "Hi", "output": "Hello!"}) + "\n")
    with pytest.raises(TunelabError, match="neither `chosen` and `rejected` answers nor"):
        train({**recipe, "data": {"train": [str(sft)]}})
    if REGISTRY.is_file():
        registry = {"train": ["alpaca_en_demo"], "registry": str(REGISTRY)}
        with pytest.raises(
            TunelabError,
            match="is sft data; train.objective dpo, orpo and simpo need preference pairs",
        ):
            train({**recipe, "data": registry})


@pytest.mark.skipif(not REGISTRY.is_file(), reason="../shared/data not present")
def test_data_check_of_a_preference_recipe_reads_pairs_and_their_lengths():
    from tests.conftest import REPO
    from tunelab.data.doctor import open_target
    from tunelab.data_tools import check_data as check
    from tunelab.data_tools import length_stats

    target = open_target(REPO / "examples" / "dpo.yaml")
    result = check(target)
    assert result.preference_rows == 200 and result.problems == 0
    stats = length_stats(target)
    # 59 pairs (answers of at most 1,000 characters), each answer after its prompt
    assert stats["samples"] == 118 and stats["objective"] == "dpo"
    assert stats["suggested_max_length"] % 64 == 0


def staged(root, model_dir, name):
    sft = root / "sft.jsonl"
    sft.write_text(
        "".join(json.dumps({"instruction": p["prompt"], "output": p["chosen"]}) + "\n"
                for p in PAIRS),
        encoding="utf-8",
    )  # fmt: skip
    recipe = {
        "model": {"path": str(model_dir)},
        "data": {"train": [str(sft)]},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "train": {
            "max_steps": 3,
            "batch_size": 4,
            "lr": 5e-3,
            "seed": 3,
            "save_every": 2,
            "tensorboard": False,
        },  # fmt: skip
        "stages": [
            {"name": "sft"},
            {
                "name": "dpo",
                "data": {"train": [str(pairs_file(root))]},
                "train": {"objective": "dpo", "max_steps": 6},
            },
        ],  # fmt: skip
        "output": str(root / name),
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.slow  # three runs in child processes (about 45 s); the default suite keeps its budget
def test_sft_then_dpo_resumes_after_a_sigkill_in_the_dpo_stage(tmp_path, tiny_model_dir):
    whole = staged(tmp_path, tiny_model_dir, "whole")
    assert run_cli("train", str(whole)).returncode == 0
    broken = staged(tmp_path, tiny_model_dir, "broken")
    killed_at(broken, 3, stage="stage-2")
    metrics = resumed_like_whole(tmp_path, "stage-2-dpo")
    assert [r["step"] for r in metrics[1]] == list(range(1, 7))
    for a, b in zip(*metrics):
        assert (
            abs(a["loss"] - b["loss"]) < 1e-5
            and abs(a["rewards/margins"] - b["rewards/margins"]) < 1e-5
        )
    # the DPO stage's reference is the SFT stage's adapter, not the bare base model
    assert metrics[0][0]["rewards/margins"] == 0.0 and metrics[0][0]["loss"] == pytest.approx(
        0.6931, abs=1e-4
    )


def short_held_out_pairs(path, longest=1000):
    """The pairs among the last 100 of dpo_en_demo.json whose answers are at most `longest`
    characters (19 of them): held out from examples/dpo.yaml, which trains on the first 200."""
    rows = json.loads((SHARED_DATA / "llamafactory" / "dpo_en_demo.json").read_text())
    held = [
        row
        for row in rows[200:]
        if max(len(row["chosen"]["value"]), len(row["rejected"]["value"])) <= longest
    ]
    path.write_text(json.dumps(held), encoding="utf-8")
    return path


@pytest.mark.slow  # about 10 minutes: 15 DPO steps of the built-in model, then two evaluations
@pytest.mark.skipif(not REGISTRY.is_file(), reason="../shared/data not present")
def test_dpo_on_the_builtin_model_moves_held_out_preferences(tmp_path):
    from tests.conftest import REPO

    held_out = short_held_out_pairs(tmp_path / "held_out.json")
    result = train(
        REPO / "examples" / "dpo.yaml",
        [
            f"evaluate.data={held_out}",
            "evaluate.limit=null",
            "evaluate.last=false",
            "train.save_every=null",
            f"output={tmp_path / 'run'}",
        ],
    )
    task = result.summary["before_after"]["task"]
    assert task["mean_margin_per_token"]["after"] > task["mean_margin_per_token"]["before"]
    assert task["accuracy_per_token"]["after"] >= task["accuracy_per_token"]["before"]
    assert (
        task["accuracy_per_token"]["right_to_wrong"] <= task["accuracy_per_token"]["wrong_to_right"]
    )
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["rewards/margins"] == 0.0 and max(r["rewards/margins"] for r in rows) > 0.1
