"""A model folder's own code (config.json `auto_map`) runs only when the recipe asks for it."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import yaml

import tunelab
from tests.conftest import run_cli
from tunelab.errors import TunelabError


def custom_code_model(tmp_path, tiny_model_dir):
    """The tiny model as a folder that ships its own modelling code, which leaves a marker
    file when it runs."""
    folder = tmp_path / "custom-model"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "CUSTOM-CODE-RAN"
    (folder / "tiny_custom.py").write_text(
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class TinyConfig(LlamaConfig):\n    model_type = 'tiny-custom'\n\n\n"
        "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n",
        encoding="utf-8",
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tiny-custom",
        architectures=["TinyForCausalLM"],
        auto_map={
            "AutoConfig": "tiny_custom.TinyConfig",
            "AutoModelForCausalLM": "tiny_custom.TinyForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def recipe_for(tmp_path, model) -> str:
    rows = [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(8)]
    (tmp_path / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(tmp_path / "data.json")], "max_length": 64},
        "method": {"type": "lora", "r": 4},
        "train": {"max_steps": 2, "batch_size": 4, "tensorboard": False},
        "output": str(tmp_path / "run"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return str(path)


def test_custom_code_runs_only_when_the_recipe_asks(tmp_path, tiny_model_dir):
    model, marker = custom_code_model(tmp_path, tiny_model_dir)
    recipe = recipe_for(tmp_path, model)

    with pytest.raises(TunelabError, match=f"{model} needs code .* model.trust_remote_code: true"):
        tunelab.train(recipe)  # (the CLI prints this one line: test_faults.py)
    assert not marker.exists() and not (tmp_path / "run").exists()

    trained = run_cli("train", recipe, "model.trust_remote_code=true")
    assert trained.returncode == 0, trained.stderr
    assert marker.exists()  # the folder's code ran, because the recipe asked
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    code = (model / "tiny_custom.py").read_bytes()
    assert summary["remote_code"] == {
        "folder": str(model),
        "files": {"tiny_custom.py": hashlib.sha256(code).hexdigest()},
    }

    marker.unlink()
    answered = run_cli("chat", str(tmp_path / "run"), "-p", "Say 3", "--max-new-tokens", "4")
    assert answered.returncode == 0, answered.stderr  # the run's own recipe allows its code
    assert marker.exists()

    marker.unlink()
    with pytest.raises(TunelabError, match="model.trust_remote_code"):
        tunelab.chat(model, "hi", max_new_tokens=4)  # a bare folder: no recipe asked
    assert not marker.exists()
