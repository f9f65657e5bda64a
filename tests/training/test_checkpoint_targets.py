"""An intermediate checkpoint works wherever a run does: `RUN@N` or RUN/checkpoints/checkpoint-N."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import tunelab
from tests.conftest import run_cli
from tunelab.errors import TunelabError
from tunelab.inference.chat_model import open_chat_models


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("checkpoints")
    rows = [{"instruction": f"Say {i}", "output": f"Number {i}."} for i in range(8)]
    (folder / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": [str(folder / "data.json")], "max_length": 64},
        "method": {"type": "lora", "r": 4},
        "train": {
            "max_steps": 3, "batch_size": 4, "lr": 5e-2, "save_every": 1, "keep_last": 2,
            "tensorboard": False,
        },
        "output": str(folder / "run"),
    }  # fmt: skip
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    tunelab.train(path)
    return folder / "run"


def test_a_checkpoint_answers_as_the_weights_of_its_step(run):
    final = tunelab.chat(run, "Say 3", max_new_tokens=8)
    at_last = tunelab.chat(f"{run}@3", "Say 3", max_new_tokens=8)
    earlier = tunelab.chat(f"{run}@2", "Say 3", max_new_tokens=8)
    by_folder = tunelab.chat(run / "checkpoints" / "checkpoint-2", "Say 3", max_new_tokens=8)
    assert at_last == final  # the last checkpoint holds the final weights
    assert by_folder == earlier
    served = open_chat_models([f"{run}@2", str(run)])
    assert set(served) == {f"{run.name}@2", run.name}
    ids = torch.tensor([served[run.name].prompt_ids([{"role": "user", "content": "Say 3"}])])
    logits = {}
    for name, model in served.items():  # one base, each through its own adapter
        with torch.no_grad():
            model.model.set_adapter(model.adapter)
            logits[name] = model.model(input_ids=ids).logits
    assert not torch.allclose(logits[f"{run.name}@2"], logits[run.name])  # step 2 is not 3


def test_a_checkpoint_exports_and_a_missing_one_names_those_kept(run, tmp_path):
    """RUN@2 merged into shards of 2MB: the files load back as the checkpoint's weights."""
    from transformers import AutoModelForCausalLM

    from tunelab.inference.chat_model import open_chat_model

    out = tmp_path / "merged"
    done = run_cli("export", f"{run}@2", "--out", str(out), "--max-shard-size", "2MB")
    assert done.returncode == 0, done.stderr
    shards = sorted(out.glob("model-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {f.name: sum(1 for v in index.values() if v == f.name) for f in shards}
    assert len(shards) >= 2  # a file over 2MB holds one tensor larger than that (embeddings)
    assert all(f.stat().st_size <= 2 * 2**20 + 2**16 or tensors[f.name] == 1 for f in shards)
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    checkpoint = open_chat_model(f"{run}@2")
    ids = torch.tensor([checkpoint.prompt_ids([{"role": "user", "content": "Say 3"}])])
    with torch.no_grad():
        got, want = exported(input_ids=ids).logits, checkpoint.model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    mark = json.loads((out / "tunelab_export.json").read_text())
    assert mark["exported_from"].endswith("checkpoint-2")
    with pytest.raises(TunelabError, match="--max-shard-size 'lots' is not a size"):
        tunelab.export(run, tmp_path / "x", max_shard_size="lots")
    with pytest.raises(
        TunelabError, match="has no checkpoint-1; its checkpoints are at steps 2, 3"
    ):
        tunelab.chat(f"{run}@1", "Say 3")


@pytest.mark.parametrize("step", ["abc", "-1", "2.5"])
def test_a_step_that_is_not_a_number_names_the_steps_kept(run, tmp_path, step):
    done = run_cli("export", f"{run}@{step}", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    said = " ".join(done.stderr.split())
    assert (
        f"what follows @ is a checkpoint's step number; {run} has checkpoints at steps 2, 3" in said
    )


def test_a_project_folder_holding_a_recipe_is_not_taken_for_a_run(tmp_path):
    project = tmp_path / "my-project"
    project.mkdir()
    (project / "recipe.yaml").write_text("model: {path: smollm2-135m-instruct}\n")
    for command in (
        ["chat", str(project), "--prompt", "hi"],
        ["export", str(project), "--out", str(tmp_path / "o")],
    ):
        done = run_cli(*command)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "holds a recipe.yaml but is not a tunelab run folder" in " ".join(
            done.stderr.split()
        )


def test_a_checkpoint_whose_weights_file_is_damaged_is_named(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = next((copy / "checkpoints" / "checkpoint-2").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00not json at all, damaged on disk"[:32]
    weights.write_bytes(bytes(data))
    for command in (
        ["chat", f"{copy}@2", "--prompt", "hi"],
        ["export", f"{copy}@2", "--out", str(tmp_path / "o")],
    ):
        done = run_cli(*command)
        said = " ".join(done.stderr.split())
        assert done.returncode == 2 and "Traceback" not in said, said
        assert f"{weights} has a broken header: these weights are damaged" in said
        assert "steps 2, 3" in said
    assert not (tmp_path / "o").exists()
