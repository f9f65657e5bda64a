"""Model sources: built-in alias, folder, .gguf file, cached hub id; never a download."""

from __future__ import annotations

import shutil

import pytest

from tunelab.errors import TunelabError
from tunelab.models.builtin import builtin_gguf
from tunelab.models.load import load_tokenizer
from tunelab.models.sources import resolve_model


def test_cached_hub_id_resolves_offline(tmp_path, monkeypatch, tiny_model_dir):
    import huggingface_hub.constants as constants

    hub = tmp_path / "hub"
    snapshot = hub / "models--someone--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (hub / "models--someone--tiny" / "refs").mkdir(parents=True)
    (hub / "models--someone--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    source = resolve_model("someone/tiny")
    assert source.folder == snapshot and (source.folder / "config.json").is_file()
    with pytest.raises(
        TunelabError, match=r"not in the local Hugging Face cache.*hf download someone/other"
    ):
        resolve_model("someone/other")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(TunelabError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_missing_gguf_and_unknown_spec(tmp_path):
    with pytest.raises(TunelabError, match="does not exist"):
        resolve_model(str(tmp_path / "model.gguf"))
    with pytest.raises(TunelabError, match="is not the built-in"):
        resolve_model("not-a-model")


def test_gguf_file_loads_its_tokenizer():
    gguf = builtin_gguf()
    source = resolve_model(str(gguf))
    assert source.gguf_file == gguf.name
    tokenizer = load_tokenizer(source)
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template
