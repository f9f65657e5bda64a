"""Every decoder-only text architecture people tune, as a tiny random model: the plan picks
packed rows only where the layers keep samples apart, LoRA all-linear wraps what PEFT can
adapt (no routers, nothing PEFT refuses), and a LoRA step and a full step run, with packed
and padded batches giving the same loss where both apply.

The end-to-end part (the CLI: train LoRA and full, chat, merge, serve) is
`pytest -m slow tests/models/test_model_zoo.py`.
"""

from __future__ import annotations

import pytest
import torch

from tests.zoo import ARCHITECTURES, tiny_config
from tunelab.data.render import IGNORE_INDEX
from tunelab.methods import get_method
from tunelab.models import attention
from tunelab.models.packing import packed_rows_leak, packing_fit
from tunelab.objectives.collator import PaddingCollator, make_collator
from tunelab.plan import Kernels, attention_implementation, choose_batching
from tunelab.recipe import MethodConfig

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


ROWS = [{"instruction": f"What is {a} plus {b}?", "output": f"It is {a + b}."}
        for a in range(3) for b in range(3)]  # fmt: skip


def _train(root, model, method: str) -> dict:
    import json

    import yaml

    from tests.conftest import run_cli

    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(root / "d.json")], "max_length": 96},
        "method": {"type": method, "r": 4} if method == "lora" else {"type": method},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "tensorboard": False,
                  "save_every": 1, "sample_prompts": ["What is 1 plus 1?"]},
        "output": str(root / method),
    }  # fmt: skip
    (root / f"{method}.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    done = run_cli("train", str(root / f"{method}.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((root / method / "summary.json").read_text())


def _served_answer(run) -> str:
    from tests.serve.test_serve import client, free_port, start_server, wait_healthy

    port = free_port()
    server = start_server(str(run), "--api-key", "k", port=port)
    try:
        wait_healthy(port, server)
        reply = client(port, "k").chat.completions.create(
            model=run.name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        return reply.choices[0].message.content or ""
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_architecture_end_to_end(model_type, builtin_tokenizer, tmp_path):
    """train LoRA and full -> chat -> export (merged, checked by the parity gate) -> resume
    the LoRA run for a third step -> serve, through the CLI; `pytest -m slow
    tests/models/test_model_zoo.py`."""
    import json
    import os

    from tests.conftest import run_cli
    from tests.zoo import save_tiny_model

    save_tiny_model(model_type, builtin_tokenizer, tmp_path / "model")
    (tmp_path / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    lora = _train(tmp_path, tmp_path / "model", "lora")
    full = _train(tmp_path, tmp_path / "model", "full")
    chat = run_cli("chat", str(tmp_path / "lora"), "-p", "Hi", "--max-new-tokens", "4")
    assert chat.returncode == 0, chat.stderr[-2000:]
    export = run_cli("export", str(tmp_path / "lora"), "--out", str(tmp_path / "merged"))
    assert export.returncode == 0, export.stderr[-2000:]
    report = json.loads((tmp_path / "merged" / "export_report.json").read_text())
    assert report["passed"], report
    resumed = run_cli("train", str(tmp_path / "lora.yaml"), "train.max_steps=3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = json.loads((tmp_path / "lora" / "summary.json").read_text())
    assert (after["steps"], after["resumed_from"]) == (3, "checkpoint-2")
    answer = _served_answer(tmp_path / "lora")
    row = {"model_type": model_type, "packed": lora["packed"], "attention": lora["attention"],
           "reason": lora["batching_reason"], "lora_loss": lora["final_loss"],
           "full_loss": full["final_loss"], "parity": max(p["relative"] for p in report["probes"]),
           "served": bool(answer), "resumed": after["steps"] == 3}  # fmt: skip
    if os.environ.get("ZOO_TABLE"):
        with open(os.environ["ZOO_TABLE"], "a", encoding="utf-8") as table:
            table.write(json.dumps(row) + "\n")
