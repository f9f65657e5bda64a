"""Every decoder-only text architecture people tune, as a tiny random model: the plan picks
packed rows only where the layers keep samples apart, LoRA all-linear wraps what PEFT can
adapt (no routers, nothing PEFT refuses), and a LoRA step and a full step run, with packed
and padded batches giving the same loss where both apply.

The end-to-end part (the CLI: train LoRA and full, chat, merge, serve) is
`pytest -m slow tests/test_model_zoo.py`.
"""

from __future__ import annotations

import pytest
import torch

from tests.zoo import ARCHITECTURES, tiny_config
from tunelab.data.render import IGNORE_INDEX
from tunelab.methods import get_method
from tunelab.models import attention
from tunelab.models.packing import packed_rows_leak, packing_fit
from tunelab.plan import Kernels, attention_implementation, choose_batching
from tunelab.recipe import MethodConfig
from tunelab.training.collator import PaddingCollator, make_collator

CPU = torch.device("cpu")
# Models whose layers keep a packed row's samples apart on a CPU; every other one must be
# planned padded, and must be seen to leak when packed anyway.
PACKS_ON_CPU = set(ARCHITECTURES) - {
    "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "gemma2", "gpt_oss", "granitemoehybrid",
    "lfm2", "minimax", "jamba", "bamba", "nemotron_h", "falcon_h1", "mamba2",
}  # fmt: skip


def samples(vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for length in (11, 6, 9):
        ids = torch.randint(10, vocab, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 3 + ids[3:]})
    return out


def build(config, implementation: str):
    from transformers import AutoModelForCausalLM

    attention.register()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=implementation)
    model.config.use_cache = False
    return model


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_architecture_plans_packing_and_trains(model_type, builtin_tokenizer):
    config = tiny_config(model_type, builtin_tokenizer)
    fit = packing_fit(config, CPU)
    batching = choose_batching(True, None, "lora", "sft", fit)
    assert batching.packed == (model_type in PACKS_ON_CPU), batching.reason
    model = build(config, attention_implementation(Kernels(), batching, fit))
    if batching.packed:
        assert packed_rows_leak(model) is None
    elif not fit.own_attention:  # the reason is real: packed anyway, a sample reads another
        assert packed_rows_leak(build(config, attention.NAME)) is not None

    lora = get_method("lora").prepare(model, MethodConfig(type="lora", dropout=0.0))
    wrapped = {n.rsplit(".", 2)[-2] for n, _ in lora.named_parameters() if "lora_A" in n}
    assert wrapped and not wrapped & {"router", "wg", "gate"}, wrapped
    if model_type in {"mamba2", "nemotron_h", "falcon_h1"}:
        assert "out_proj" not in {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in
                                  lora.named_parameters() if "lora_A" in n}  # fmt: skip

    batch = samples(config.vocab_size)
    padded = PaddingCollator(builtin_tokenizer.pad_token_id)(batch)
    lora.eval()
    loss = lora(**padded).loss
    if fit.packable:
        packed = make_collator(batching, builtin_tokenizer.pad_token_id)(batch)
        assert abs(lora(**packed).loss.item() - loss.item()) < 1e-5
    lora.train()
    lora(**padded).loss.backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
