"""`tunelab export --to gguf|ollama` on tiny llama and LFM2 runs (llama.cpp's own converter):
the GGUF file loads back with transformers (`gguf_file=`) and gives the merged model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_cli, tiny_sizes

PROMPT = "Hello there, how are you today? Tell me about the sea."


def tiny_lfm2(root: Path, tokenizer) -> Path:
    """A hybrid of short convolutions and attention, which transformers reads back from GGUF."""
    from transformers import AutoModelForCausalLM

    from tests.zoo import tiny_config

    torch.manual_seed(1)
    folder = root / "tiny-lfm2"
    AutoModelForCausalLM.from_config(tiny_config("lfm2", tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train(root: Path, name: str, model: Path, method: str) -> Path:
    rows = [{"instruction": f"Question {i}?", "output": "An answer."} for i in range(8)]
    (root / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(root / "data.json")], "system": "You are Tiny."},
        "method": {"type": method, "r": 8} if method == "lora" else {"type": method},
        "train": {"max_steps": 3, "lr": 5e-2, "tensorboard": False, "batch_size": 4},
        "output": str(root / name),
    }
    (root / f"{name}.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    from tunelab import train as train_recipe

    train_recipe(str(root / f"{name}.yaml"))
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, builtin_tokenizer):
    root = tmp_path_factory.mktemp("gguf")
    lfm2 = tiny_lfm2(root, builtin_tokenizer)
    return {
        "llama-lora": train(root, "llama-lora", tiny_model_dir, "lora"),
        "lfm2-full": train(root, "lfm2-full", lfm2, "full"),
        "prefix": train(root, "prefix", tiny_model_dir, "prefix"),
    }


def logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits[0]


@pytest.mark.slow  # the default suite loads a GGUF back in the Mistral-as-llama case below
@pytest.mark.parametrize("run_name", ["llama-lora", "lfm2-full"])
def test_gguf_loads_back_with_the_merged_models_logits(runs, run_name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab import export

    merged, f16, q8 = tmp_path / "merged", tmp_path / "m-f16.gguf", tmp_path / "m-q8.gguf"
    export(runs[run_name], merged)
    export(runs[run_name], f16, to="gguf")
    export(runs[run_name], q8, to="gguf", quant="q8_0")
    assert q8.stat().st_size < 0.75 * f16.stat().st_size
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    expected = logits(reference, tokenizer)
    for file, bound in [(f16, 2e-3), (q8, 5e-2)]:
        loaded = AutoModelForCausalLM.from_pretrained(
            tmp_path, gguf_file=file.name, dtype=torch.float32
        ).eval()
        difference = (logits(loaded, tokenizer) - expected).abs().max().item()
        assert difference < bound, (file.name, difference)

    import gguf

    fields = gguf.GGUFReader(str(f16)).fields
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert template == tokenizer.chat_template
    assert "tunelab.exported_from" in fields
    assert len(fields["tokenizer.ggml.merges"].data) > 40_000


def test_ollama_folder_has_gguf_and_modelfile(runs, tmp_path):
    from tunelab import export

    out = tmp_path / "ollama"
    export(runs["llama-lora"], out, to="ollama", quant="q8_0")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["Modelfile", "export_report.json", "model.gguf", "tunelab_export.json"]
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and report["ollama_template"]["passed"], report
    rendered = [p for p in report["ollama_template"]["probes"] if p.get("prompt_identical")]
    assert len(rendered) == 3 and report["ollama_template"]["engine"] == "Go text/template"
    text = (out / "Modelfile").read_text()
    assert text.startswith('FROM ./model.gguf\nTEMPLATE """')
    assert 'SYSTEM """You are Tiny."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "{{ range .Messages }}<|im_start|>{{ .Role }}" in text


def test_export_refusals_are_one_sentence(runs, tmp_path):
    from tunelab import export
    from tunelab.errors import TunelabError

    other = tmp_path / "notes.gguf"
    other.write_bytes(b"my own file")
    run = runs["llama-lora"]
    with pytest.raises(TunelabError, match="not a GGUF file tunelab wrote"):
        export(run, other, to="gguf", overwrite=True)
    assert other.read_bytes() == b"my own file"
    with pytest.raises(TunelabError, match="exists; pass --overwrite"):
        export(run, other, to="gguf")
    with pytest.raises(TunelabError, match="cannot be merged"):
        export(runs["prefix"], tmp_path / "p.gguf", to="gguf")
    with pytest.raises(TunelabError, match="should be a .gguf file"):
        export(run, tmp_path / "x", to="gguf")
    with pytest.raises(TunelabError, match="a LoRA adapter is always merged"):
        export(run, tmp_path / "o", to="ollama", merge=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.gguf"]  # nothing left behind

    out = str(tmp_path / "y.gguf")
    result = run_cli("export", str(run), "--to", "gguf", "--quant", "q3", "--out", out)
    assert result.returncode == 2
    assert "--quant q3 is not one of f16, bf16, q8_0, q4_0" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_architecture_without_gguf_support_is_named(tmp_path, builtin_tokenizer):
    from transformers import AutoModelForCausalLM

    from tests.zoo import tiny_config
    from tunelab.errors import TunelabError
    from tunelab.exporters.gguf_file import write_gguf

    folder = tmp_path / "phimoe"
    AutoModelForCausalLM.from_config(tiny_config("phimoe", builtin_tokenizer)).save_pretrained(
        folder
    )
    builtin_tokenizer.save_pretrained(folder)
    with pytest.raises(TunelabError, match="PhimoeForCausalLM is not supported"):
        write_gguf(folder, tmp_path / "g.gguf", "f16", None)
    assert not (tmp_path / "g.gguf").exists()
    assert not list(tmp_path.glob("*.converted"))


@pytest.mark.slow
def test_qlora_run_merges_into_the_full_precision_base(tmp_path):
    """The merged model answers as the unquantised base with the adapter applied unmerged."""
    from tests.conftest import REPO
    from tunelab import export
    from tunelab.inference.chat_model import open_chat_model

    run = tmp_path / "qlora"
    result = run_cli(
        "train",
        str(REPO / "examples" / "method-qlora.yaml"),
        "train.epochs=1",
        f"output={run}",
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr
    merged = export(run, tmp_path / "merged")
    probes = [json.loads(line)["prompt"] for line in (REPO / "examples" / "probes.jsonl").open()]
    probes.append("What is your name?")
    conversations = [[{"role": "user", "content": p}] for p in probes]
    unmerged = open_chat_model(run, quantized=False).generate(conversations, 48)
    assert open_chat_model(merged).generate(conversations, 48) == unmerged
    in_4bit = open_chat_model(run).generate(conversations, 48)
    same = sum(a == b for a, b in zip(in_4bit, unmerged))
    print(f"4-bit base + adapter agrees with the merged model on {same}/{len(probes)} probes")


@pytest.mark.slow  # the GGUF zoo runs it in llama.cpp; the window test below stays in the suite
def test_a_mistral_model_is_written_as_llama_and_loads_back(tmp_path, builtin_tokenizer):
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    from tunelab.exporters.gguf_file import write_gguf

    torch.manual_seed(2)
    config = MistralConfig(
        **tiny_sizes(builtin_tokenizer), sliding_window=None, tie_word_embeddings=False
    )  # no window: Mistral v0.2 and later
    folder = tmp_path / "mistral"
    model = MistralForCausalLM(config).eval()
    model.save_pretrained(folder)
    builtin_tokenizer.save_pretrained(folder)
    info = write_gguf(folder, folder / "m.gguf", "f16", None)
    assert info["architecture"] == "llama"
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="m.gguf", dtype=torch.float32)
    difference = (logits(loaded.eval(), builtin_tokenizer) - logits(model, builtin_tokenizer)).abs()
    assert difference.max().item() < 2e-3


def test_a_sliding_window_llama_cpp_lacks_caps_the_declared_context(tmp_path, builtin_tokenizer):
    """Mistral v0.1's window: llama.cpp's llama graph has none, so the GGUF declares the window
    as its context, inside which the logits are the model's."""
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    from tunelab.exporters.gguf_file import write_gguf
    from tunelab.exporters.gguf_metadata import gguf_metadata

    torch.manual_seed(3)
    config = MistralConfig(**tiny_sizes(builtin_tokenizer), sliding_window=12)
    folder = tmp_path / "mistral"
    model = MistralForCausalLM(config).eval()
    model.save_pretrained(folder)
    builtin_tokenizer.save_pretrained(folder)
    info = write_gguf(folder, folder / "m.gguf", "f16", None)
    assert info["architecture"] == "llama" and "sliding window" in info["notes"][0]
    assert gguf_metadata(folder / "m.gguf")["llama.context_length"] == 12
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="m.gguf", dtype=torch.float32)
    ids = torch.tensor([list(range(200, 212))])  # a whole window
    with torch.no_grad():
        difference = (loaded.eval()(ids).logits - model(ids).logits).abs().max().item()
    assert difference < 2e-3
