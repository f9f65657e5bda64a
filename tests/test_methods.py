"""Every method's example recipe trains (on a tiny random model with the built-in model's
tokenizer and layer count): what should train changed, nothing else did; the run chats and
exports; the same on the built-in model itself with `pytest -m slow tests/test_methods.py`."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

import tunelab
from tests.conftest import REPO
from tunelab.errors import TunelabError
from tunelab.methods import METHODS

pytestmark = pytest.mark.filterwarnings("ignore")


class Snapshot(TrainerCallback):
    """Copies every parameter (and which ones train) when training starts."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}


def expected_trainable(method: str, name: str) -> bool:
    if method in {"lora", "dora", "qlora"}:
        return "lora_" in name
    if method in {"ptuning", "prefix", "prompt"}:
        return "prompt_encoder" in name
    if method == "freeze":  # the example trains the last 4 of 30 layers
        return any(f".layers.{i}." in name for i in (26, 27, 28, 29))
    return True  # full


def example_for(method: str):
    return REPO / "examples" / ("identity.yaml" if method == "lora" else f"method-{method}.yaml")


def test_every_method_has_an_example_recipe():
    for method in METHODS:
        assert tunelab.load_recipe(example_for(method)).method.type == method


@pytest.fixture(scope="module")
def deep_tiny_model(tmp_path_factory, builtin_tokenizer):
    """A 30-layer, hidden-64 Llama (the built-in model's layer count, for the freeze example's
    last 4 layers) with random weights and the built-in tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import tiny_sizes

    torch.manual_seed(0)
    sizes = {**tiny_sizes(builtin_tokenizer), "num_hidden_layers": 30}
    folder = tmp_path_factory.mktemp("deep-tiny")
    LlamaForCausalLM(LlamaConfig(**sizes, tie_word_embeddings=True)).save_pretrained(folder)
    builtin_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("on", ["tiny", pytest.param("built-in", marks=pytest.mark.slow)])
@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_only_what_it_should(tmp_path, method, on, request):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    snapshot = Snapshot()
    result = tunelab.train(
        example_for(method),
        [
            "train.max_steps=3",
            "train.batch_size=2",
            "train.warmup_ratio=0",
            "train.tensorboard=false",
            *([f"model.path={request.getfixturevalue('deep_tiny_model')}"] if on == "tiny" else []),
            f"output={tmp_path / 'run'}",
        ],
        callbacks=[snapshot],
    )
    after = dict(result.model.named_parameters())
    assert snapshot.trainable, "nothing trains"
    assert all(expected_trainable(method, n) for n in snapshot.trainable)
    if method in {"full", "freeze", "lora", "dora", "qlora"}:
        expected = {n for n in after if expected_trainable(method, n)}
        assert expected == snapshot.trainable, (
            sorted(expected - snapshot.trainable),
            sorted(snapshot.trainable - expected),
        )
    for name, before in snapshot.before.items():
        changed = not torch.equal(before, after[name].detach())
        assert changed == (name in snapshot.trainable), f"{name}: changed={changed}"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["trainable_parameters"] == sum(after[n].numel() for n in snapshot.trainable)
    assert summary["method"] == method and summary["steps"] == 3

    # The result loads back for chat and for export.
    answer = tunelab.chat(result.run_dir, "Who are you?", max_new_tokens=4)
    assert isinstance(answer, str)
    out = tunelab.export(result.run_dir, tmp_path / "export")
    exported = json.loads((out / "tunelab_export.json").read_text())
    assert exported["merged"] == (method in {"lora", "dora", "qlora"})
    if method in {"ptuning", "prefix", "prompt"}:
        assert (out / "adapter_config.json").is_file()
        with pytest.raises(TunelabError, match="merging is only for LoRA-family runs"):
            tunelab.export(result.run_dir, tmp_path / "merged", merge=True)
    else:
        from transformers import AutoModelForCausalLM

        assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
