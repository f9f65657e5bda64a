"""Padding-free packing: same loss as padded batches, and no token attends to another sample."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import tunelab
from tunelab.data.render import IGNORE_INDEX
from tunelab.models import attention
from tunelab.objectives.collator import PaddingCollator, make_collator, trained_positions_loss
from tunelab.plan import choose_batching

PACKED = choose_batching(packing=True, group_by_length=None, method_family="lora")
LENGTHS = [7, 19, 4, 12]


def features(seed: int = 0) -> list[dict]:
    """Samples of mixed lengths whose first tokens are prompt (no loss) and the rest answer."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for length in LENGTHS:
        ids = torch.randint(10, 1000, (length,), generator=generator).tolist()
        prompt = length // 3
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


ATTENTION = ["sdpa", "eager", attention.NAME]


def load_tiny(folder, implementation: str):
    from transformers import AutoModelForCausalLM

    if implementation == attention.NAME:
        attention.register()
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=implementation)
    model.config.use_cache = False
    return model.eval()


def test_choose_batching():
    assert PACKED.packed and not PACKED.group_by_length
    prompt = choose_batching(packing=True, group_by_length=None, method_family="prompt")
    assert not prompt.packed and prompt.group_by_length and "prompt" in prompt.reason
    off = choose_batching(packing=False, group_by_length=False, method_family="lora")
    assert not off.packed and not off.group_by_length


def test_packed_batch_is_one_row_with_restarting_positions():
    batch = make_collator(PACKED, pad_token_id=2)(features())
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    assert "attention_mask" not in batch
    starts = [0, 7, 26, 30]
    positions = batch["position_ids"][0].tolist()
    assert [i for i, p in enumerate(positions) if p == 0] == starts
    # a sample's first label is masked, so the previous sample's last token predicts nothing
    assert all(batch["labels"][0, s].item() == IGNORE_INDEX for s in starts)


@pytest.mark.parametrize("implementation", ATTENTION)
def test_packed_loss_equals_padded_loss(tiny_model_dir, implementation):
    model = load_tiny(tiny_model_dir, implementation)
    batch = features()
    with torch.no_grad():
        packed = model(**make_collator(PACKED, pad_token_id=2)(batch)).loss
        padded = model(**PaddingCollator(pad_token_id=2)(batch)).loss
    assert torch.isfinite(packed)
    assert packed.item() == pytest.approx(padded.item(), rel=1e-5)


@pytest.mark.parametrize("implementation", ATTENTION)
def test_no_token_attends_to_another_sample(tiny_model_dir, implementation):
    model = load_tiny(tiny_model_dir, implementation)
    collate = make_collator(PACKED, pad_token_id=2)
    batch = features()
    with torch.no_grad():
        packed = model(**collate(batch)).logits[0]
        alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in batch]
        # change every token of sample 1: the other samples' logits must not move
        changed = [dict(f) for f in batch]
        changed[1] = {
            "input_ids": [t + 1 for t in batch[1]["input_ids"]],
            "labels": batch[1]["labels"],
        }
        repacked = model(**collate(changed)).logits[0]
        # control: the same row without restarting positions is one long sequence
        plain = load_tiny(tiny_model_dir, "sdpa")(input_ids=collate(batch)["input_ids"]).logits[0]
    offset = 0
    for index, (length, logits) in enumerate(zip(LENGTHS, alone)):
        part = slice(offset, offset + length)
        torch.testing.assert_close(packed[part], logits, rtol=1e-4, atol=1e-5)
        if index != 1:
            torch.testing.assert_close(repacked[part], packed[part], rtol=0, atol=1e-6)
        offset += length
    later = slice(LENGTHS[0], sum(LENGTHS))
    assert not torch.allclose(plain[later], packed[later], atol=1e-3)  # the check can fail


def sliding_window_model(window: int | None):
    """A tiny Qwen2 whose second layer attends to a sliding window of `window` tokens."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    sizes = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    config = Qwen2Config(
        **sizes,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=window,
        use_sliding_window=window is not None,
        max_window_layers=1,
    )
    return Qwen2ForCausalLM(config).eval()


def test_packed_rows_keep_a_sliding_window(tiny_model_dir):
    """A sliding-window layer in a packed row sees what it sees when the sample runs alone
    (samples longer and shorter than the window), where plain causal attention would not."""
    attention.register()
    model = sliding_window_model(5)
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    batch = features()
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits[0] for f in batch]
        model.set_attn_implementation(attention.NAME)
        packed = model(**make_collator(PACKED, pad_token_id=2)(batch)).logits[0]
        model.config.layer_types = ["full_attention"] * 2  # the same weights, no window
        for layer in model.model.layers:
            layer.self_attn.sliding_window = None
        windowless = model(**make_collator(PACKED, pad_token_id=2)(batch)).logits[0]
    offset = 0
    for length, logits in zip(LENGTHS, alone):
        part = slice(offset, offset + length)
        torch.testing.assert_close(packed[part], logits, rtol=1e-4, atol=1e-5)
        if length > 5:  # the check can fail: without the window these samples differ
            assert not torch.allclose(windowless[part], logits, atol=1e-3)
        offset += length


def test_loss_on_trained_positions_only_equals_full_loss(tiny_model_dir):
    model = load_tiny(tiny_model_dir, attention.NAME)
    full = make_collator(PACKED, pad_token_id=2)(features())
    kept = make_collator(PACKED, pad_token_id=2, trained_logits_only=True)(features())
    labels = kept.pop("labels")
    trained = int((labels != -100).sum())
    assert kept["logits_to_keep"].numel() == trained
    with torch.no_grad():
        reference = model(**full).loss
        outputs = model(**kept)
    assert outputs.logits.shape[1] == trained < full["input_ids"].shape[1]
    assert trained_positions_loss(outputs, labels).item() == pytest.approx(
        reference.item(), rel=1e-5
    )
    summed = trained_positions_loss(outputs, labels, num_items_in_batch=2 * trained)
    assert summed.item() == pytest.approx(reference.item() / 2, rel=1e-5)


def recipe_file(tmp_path, tiny_model_dir, name, packing):
    rows = [
        {
            "instruction": f"Repeat {'word ' * (i % 9)}{i}",
            "input": "",
            "output": "ok " * (1 + i % 7),
        }
        for i in range(16)
    ]
    (tmp_path / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": [str(tmp_path / "data.json")], "max_length": 64, "packing": packing},
        "method": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-2, "seed": 1, "tensorboard": False},
        "output": str(tmp_path / name),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_packed_training_matches_padded_training(tmp_path, tiny_model_dir):
    packed = tunelab.train(recipe_file(tmp_path, tiny_model_dir, "packed", True))
    padded = tunelab.train(
        recipe_file(tmp_path, tiny_model_dir, "padded", False),
        overrides=["train.group_by_length=false"],
    )
    assert packed.summary["packed"] and not padded.summary["packed"]
    losses = [
        [
            json.loads(line)["loss"]
            for line in (run.run_dir / "metrics.jsonl").open()
            if '"loss"' in line
        ]
        for run in (packed, padded)
    ]
    assert len(losses[0]) == 4
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    # both count only real tokens, although the pad id (eos) also occurs inside the samples
    assert packed.summary["tokens"] == padded.summary["tokens"]


def test_fused_kernels_stay_off_on_cpu():
    from tunelab.plan import choose_kernels

    cpu = torch.device("cpu")
    assert choose_kernels(None, cpu, torch.float32).describe() == "fused kernels: none"
    asked = choose_kernels(True, cpu, torch.float32)
    assert not asked.liger and not asked.flash_attention
    assert "CUDA" in asked.notes[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_packed_loss_equals_padded_loss_on_gpu(tiny_model_dir):
    """On a GPU: sdpa, and flash-attention's varlen path when flash_attn is installed."""
    from transformers import AutoModelForCausalLM

    from tunelab.plan import installed

    kinds = ["sdpa"] + (["flash_attention_2"] if installed("flash_attn") else [])
    for implementation in kinds:
        model = AutoModelForCausalLM.from_pretrained(
            tiny_model_dir, attn_implementation=implementation, dtype=torch.bfloat16
        ).cuda()
        model.config.use_cache = False
        packed = make_collator(PACKED, pad_token_id=2)(features())
        padded = PaddingCollator(pad_token_id=2)(features())
        with torch.no_grad():
            a = model(**{k: v.cuda() if hasattr(v, "cuda") else v for k, v in packed.items()}).loss
            b = model(**{k: v.cuda() for k, v in padded.items()}).loss
        assert a.item() == pytest.approx(b.item(), rel=2e-2), implementation


def test_packed_attention_backend_by_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert attention.packed_backend(cpu, torch.float32) == attention.PER_SAMPLE
    assert attention.packed_backend(cpu, torch.bfloat16) == attention.PER_SAMPLE
    assert attention.packed_backend(cuda, torch.float32) == attention.PER_SAMPLE
    assert attention.packed_backend(cuda, torch.bfloat16) == attention.VARLEN  # torch >= 2.10
    assert attention.packed_backend(cuda, torch.float16, flash_attn=True) == attention.FLASH


def test_run_plan_names_the_attention_it_trains_with(tmp_path, tiny_model_dir):
    from tunelab.plan import plan_run
    from tunelab.recipe import load_recipe

    recipe = load_recipe(recipe_file(tmp_path, tiny_model_dir, "plan", True))
    assert plan_run(recipe, torch.device("cpu"), load=False).attention == attention.PER_SAMPLE
    planned = plan_run(recipe, torch.device("cuda", 0), load=False)
    assert planned.dtype == torch.bfloat16 and planned.attention == attention.VARLEN
    recipe.data.packing = False
    assert plan_run(recipe, torch.device("cpu"), load=False).attention == "sdpa"


def test_no_row_by_row_mask_is_built_for_a_packed_row(tiny_model_dir, monkeypatch):
    """The packed row's attention reads the boundaries; a padded batch still gets its mask."""
    import transformers.masking_utils as masking

    built = []
    original = masking.sdpa_mask
    monkeypatch.setattr(masking, "sdpa_mask", lambda *a, **k: built.append(1) or original(*a, **k))
    model = load_tiny(tiny_model_dir, attention.NAME)
    with torch.no_grad():
        packed = model(**make_collator(PACKED, pad_token_id=2)(features())).loss
        assert built == []
        padded = model(**PaddingCollator(pad_token_id=2)(features())).loss
    assert built and packed.item() == pytest.approx(padded.item(), rel=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_varlen_attention_equals_per_sample_on_gpu_without_host_sync(tiny_model_dir):
    """torch's varlen kernel on a packed row: the per-sample result, in one call per layer
    that never waits for the host."""
    from types import SimpleNamespace

    batch = make_collator(PACKED, pad_token_id=2)(features())
    bounds = batch["cu_seq_lens_q"].cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, 4, sum(LENGTHS), 64)
    query = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator)
    key, value = (
        torch.randn((1, 2, sum(LENGTHS), 64), device="cuda", dtype=torch.bfloat16) for _ in "kv"
    )
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fast, _ = attention.packed_sdpa_forward(
            module, query, key, value, None, cu_seq_lens_q=bounds, max_length_q=max(LENGTHS)
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    slow = attention._per_sample(query, key, value, bounds.cpu(), 0.0, None, 2)
    torch.testing.assert_close(fast, slow, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_varlen_attention_keeps_a_sliding_window_on_gpu():
    """torch's varlen kernel with a window: each sample as per-sample sdpa with its band."""
    from types import SimpleNamespace

    batch = make_collator(PACKED, pad_token_id=2)(features())
    bounds = batch["cu_seq_lens_q"].cuda()
    query, key, value = (
        torch.randn((1, 2, sum(LENGTHS), 64), device="cuda", dtype=torch.bfloat16) for _ in "qkv"
    )
    module = SimpleNamespace(num_key_value_groups=1, is_causal=True)
    kwargs = dict(cu_seq_lens_q=bounds, max_length_q=max(LENGTHS), sliding_window=5)
    fast, _ = attention.packed_sdpa_forward(module, query, key, value, None, **kwargs)
    slow = attention._per_sample(query, key, value, bounds.cpu(), 0.0, None, 1, 5)
    causal = attention._per_sample(query, key, value, bounds.cpu(), 0.0, None, 1)
    torch.testing.assert_close(fast, slow, rtol=2e-2, atol=2e-2)
    assert not torch.allclose(fast, causal, atol=5e-2)
