"""The memory estimate: its meta-device trace matches a real model, and runs record it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import run_cli
from tunelab.errors import TunelabError
from tunelab.estimation import _saved_bytes, estimate_for, parse_size, profile
from tunelab.methods import count_parameters, get_method
from tunelab.objectives.sft import worst_case_batch
from tunelab.recipe import MethodConfig


def test_parse_size():
    assert parse_size("24GB") == 24 * 2**30
    assert parse_size("24 GiB") == 24 * 2**30
    assert parse_size("512MB") == 512 * 2**20
    assert parse_size("1.5g") == int(1.5 * 2**30)
    with pytest.raises(TunelabError, match="24GB"):
        parse_size("lots")


def test_worst_case_batch():
    from tunelab.data.render import IGNORE_INDEX, RenderedSample

    def sample(length, trained):
        labels = [IGNORE_INDEX] * (length - trained) + [1] * trained
        return RenderedSample(input_ids=[1] * length, labels=labels)

    samples = [sample(5, 2), sample(90, 30), sample(12, 4), sample(40, 40), sample(7, 1)]
    assert worst_case_batch(samples, batch_size=2) == (130, 70)
    assert worst_case_batch(samples[:1], batch_size=4) == (5, 2)


def real_model(folder, method: MethodConfig):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    model.config.use_cache = False
    model = get_method(method.type).prepare(model, method)
    model.train()
    return model


@pytest.mark.parametrize("kind", ["lora", "full", "dora"])
def test_meta_trace_counts_what_a_real_model_saves(tiny_model_dir, kind):
    """Parameter counts and saved-for-backward bytes from the config equal the real model's."""
    from transformers import AutoConfig

    method = MethodConfig(type=kind, r=4)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    prof = profile(config, method, torch.float32)
    model = real_model(tiny_model_dir, method)
    trainable, _ = count_parameters(model)
    assert prof.trainable_parameters == trainable

    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    length = 48
    ids = torch.randint(10, 1000, (1, length))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, labels=ids)
    real = sum(seen.values())
    meta_model = real_model(tiny_model_dir, method).to("meta")
    assert _saved_bytes(meta_model, length) == pytest.approx(real, rel=0.02)
    # the per-token figure the estimate scales (its length-squared part removed) gives it back
    per_token = prof.head_bytes_per_token + config.num_hidden_layers * prof.layer_bytes_per_token
    assert per_token * length == pytest.approx(real, rel=0.03)


def test_estimate_parts_follow_the_method(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)

    def make(kind, checkpointing=False, tokens=256):
        return estimate_for(
            config, MethodConfig(type=kind), torch.float32, "cpu", 1, tokens, checkpointing
        )

    lora, full = make("lora"), make("full")
    assert full.parts["optimizer"] == 2 * full.parts["gradients"] == 2 * full.parts["weights"]
    assert lora.parts["gradients"] < full.parts["gradients"] / 10
    assert make("lora", checkpointing=True).parts["activations"] < lora.parts["activations"]
    assert make("lora", tokens=512).parts["activations"] == pytest.approx(
        2 * lora.parts["activations"], rel=1e-6
    )
    budget = estimate_for(
        config, MethodConfig(type="lora"), torch.float32, "cpu", 1, 256, False, budget=2**40
    )
    assert budget.fits and any("lora" in line for line in budget.suggestions)


def tiny_recipe(tmp_path, tiny_model_dir, **train):
    rows = [{"instruction": f"Say {i}", "input": "", "output": "yes " * (1 + i)} for i in range(12)]
    (tmp_path / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": [str(tmp_path / "data.json")], "max_length": 64},
        "method": {"type": "lora", "r": 4},
        "train": {"max_steps": 2, "batch_size": 4, "tensorboard": False, **train},
        "output": str(tmp_path / "run"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_estimate_cli(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    done = run_cli("estimate", str(recipe), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # the 4 longest samples of this data, each rendered with the template's system turn
    assert result["tokens_per_step"] > 4 * 12
    assert set(result["parts"]) >= {"weights", "gradients", "optimizer", "activations", "runtime"}
    assert result["total_bytes"] == sum(result["parts"].values())
    assert result["fits"] is True

    import io

    from rich.console import Console

    import tunelab
    from tunelab.estimate_view import show_estimate

    (on_card,) = tunelab.estimate(recipe, device="cuda", gpu_memory="1GB")
    shown = io.StringIO()
    show_estimate(Console(file=shown, width=200), on_card)
    assert "does not fit" in shown.getvalue() and "CUDA context" in shown.getvalue()

    bad = run_cli("estimate", str(recipe), "--device", "tpu")
    assert bad.returncode == 2 and "cpu or cuda" in bad.stderr and "Traceback" not in bad.stderr


def test_run_records_estimate_next_to_measured(tmp_path, tiny_model_dir):
    # its own process: a CPU's peak RSS covers the whole process, not one run inside pytest
    done = run_cli("train", str(tiny_recipe(tmp_path, tiny_model_dir)))
    assert done.returncode == 0, done.stderr
    assert "memory estimate:" in done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    memory = summary["memory"]
    assert memory["measured_bytes"] == summary["peak_memory_bytes"]
    assert memory["estimated_bytes"] == sum(memory["estimated_parts"].values())
    # packed rows: the largest batch that ran is at most the data's worst case
    assert 0 < memory["tokens_in_largest_step_run"] <= memory["tokens_in_largest_step"]
    assert memory["estimated_bytes_for_largest_step_run"] <= memory["estimated_bytes"]
    # a tiny model: the runtime dominates both; a loose bound that still catches a broken part
    assert 0.6 < memory["measured_over_estimated"] < 1.6


def test_estimate_covers_every_stage(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    raw = yaml.safe_load(recipe.read_text())
    raw["stages"] = [{"name": "small"}, {"name": "wide", "train": {"batch_size": 8}}]
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")
    import tunelab

    first, second = (e.as_dict() for e in tunelab.estimate(recipe))
    assert (first["batch_size"], second["batch_size"]) == (4, 8)
    assert second["tokens_per_step"] > first["tokens_per_step"]
    assert second["total_bytes"] > first["total_bytes"]


def test_estimate_counts_the_samples_a_turn_by_turn_template_makes(tmp_path, tiny_model_dir):
    """Qwen3-style templates drop earlier reasoning, so each answer of a reasoning
    conversation trains as its own sample: the estimate counts them, with steps and time."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Hi {i}"},
                {"role": "assistant", "content": "Hello.", "reasoning_content": "Greet."},
                {"role": "user", "content": f"What is {i} plus 1?"},
                {"role": "assistant", "content": f"{i + 1}.", "reasoning_content": "Add one."},
            ]
        }
        for i in range(6)
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    recipe = tiny_recipe(tmp_path, tiny_model_dir, epochs=2, max_steps=None)
    raw = yaml.safe_load(recipe.read_text())
    raw["model"]["template"] = "qwen3"
    raw["data"]["train"] = [str(tmp_path / "data.jsonl")]
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")
    import io

    from rich.console import Console

    import tunelab
    from tunelab.estimate_view import show_estimate

    (result,) = tunelab.estimate(recipe)
    data = result.as_dict()["data"]
    assert (data["conversations"], data["samples"], data["turn_samples"]) == (6, 12, 6)
    assert (data["steps_per_epoch"], data["steps"]) == (3, 6) and data["seconds"] > 0
    shown = io.StringIO()
    show_estimate(Console(file=shown, width=200), result)
    assert "12 samples from 6 conversations, 6 of them extra" in shown.getvalue()
    assert "3 optimizer steps an epoch, 6 in all" in shown.getvalue()


def test_liger_waits_on_a_gpu_until_the_run_needs_its_memory(tmp_path, tiny_model_dir, monkeypatch):
    """Left to choose, a GPU run keeps liger-kernel off (speed first) unless only its fused
    loss makes the run fit; the estimate then counts that loss path, not the logits."""
    from tunelab import plan as planning
    from tunelab.data_tools import recipe_data
    from tunelab.estimation import CUDA_RESERVE_BYTES, estimate_planned
    from tunelab.models.load import load_config
    from tunelab.recipe import load_recipe

    monkeypatch.setattr(planning, "installed", lambda package: package == "liger_kernel")
    cuda, bf16 = torch.device("cuda", 0), torch.bfloat16
    auto = planning.choose_kernels(None, cuda, bf16)
    assert not auto.liger and auto.liger_standby and auto.used == "none"
    assert planning.choose_kernels(True, cuda, bf16).liger
    assert not planning.choose_kernels(False, cuda, bf16).liger_standby

    recipe = load_recipe(tiny_recipe(tmp_path, tiny_model_dir))
    plan = planning.plan_run(recipe, cuda, load=False)
    config = load_config(plan.source)
    _, _, data = recipe_data(recipe, plan.source, config)
    prof = profile(config, recipe.method, plan.dtype)
    plain = estimate_planned(recipe, plan, config, data, prof)
    fused = estimate_planned(recipe, planning.with_fused_loss(plan, "asked"), config, data, prof)
    assert not plain.fused_loss and fused.fused_loss
    assert fused.parts["loss_buffers"] < plain.parts["loss_buffers"]
    assert fused.total_bytes < plain.total_bytes
    between = (plain.total_bytes + fused.total_bytes) // 2 + CUDA_RESERVE_BYTES
    assert estimate_planned(recipe, plan, config, data, prof, budget=between).fused_loss
    roomy = plain.total_bytes + CUDA_RESERVE_BYTES + 2**30
    assert not estimate_planned(recipe, plan, config, data, prof, budget=roomy).fused_loss
    tight = fused.total_bytes  # fits neither: the plain estimate stands
    assert not estimate_planned(recipe, plan, config, data, prof, budget=tight).fused_loss
