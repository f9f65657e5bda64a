"""LLaMA-Factory's own example training files imported as tunelab recipes."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import SHARED_DATA, run_cli
from tunelab.recipe import load_recipe

EXAMPLES = SHARED_DATA / "llamafactory-examples"
pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/data not present")

SFT = {  # file: method type it imports as
    "train_lora/qwen3_lora_sft.yaml": "lora",
    "train_lora/qwen3_lora_sft_ds3.yaml": "lora",
    "train_qlora/qwen3_lora_sft_otfq.yaml": "qlora",
    "train_qlora/qwen3_lora_sft_bnb_npu.yaml": "qlora",
    "train_qlora/llama3_lora_sft_awq.yaml": "lora",
    "train_full/qwen3_full_sft.yaml": "full",
}


def _import(tmp_path, name: str):
    out = tmp_path / "recipe.yaml"
    done = run_cli("recipe", "import", str(EXAMPLES / name), "--out", str(out))
    return done, out


@pytest.mark.parametrize("name, kind", list(SFT.items()))
def test_llamafactory_sft_files_import_as_recipes_that_validate(tmp_path, name, kind):
    done, out = _import(tmp_path, name)
    assert done.returncode == 0, done.stderr
    recipe = load_recipe(out)
    source = yaml.safe_load((EXAMPLES / name).read_text())
    assert recipe.model.path == source["model_name_or_path"]
    assert recipe.method.type == kind
    assert recipe.data.max_length == source["cutoff_len"]
    assert [s.path for s in recipe.data.train] == source["dataset"].split(",")
    assert all(s.limit == source["max_samples"] for s in recipe.data.train)
    assert recipe.data.registry == "data/dataset_info.json"
    assert recipe.train.lr == float(source["learning_rate"])
    assert recipe.train.batch_size == source["per_device_train_batch_size"]
    assert recipe.train.grad_accum == source["gradient_accumulation_steps"]
    assert (recipe.train.epochs, recipe.train.scheduler) == (3.0, "cosine")
    assert recipe.train.warmup_ratio == 0.1 and recipe.train.gradient_checkpointing
    assert recipe.output == source["output_dir"] and recipe.train.tensorboard is False
    assert recipe.model.trust_remote_code is False  # asked for in the file; left to the user
    if kind in ("lora", "qlora"):  # LLaMA-Factory's LoRA defaults, not tunelab's
        assert (recipe.method.r, recipe.method.alpha, recipe.method.dropout) == (8, 16, 0.0)
        assert recipe.method.target == "all-linear"
    if source.get("template", "").endswith("_nothink"):
        assert recipe.model.template_args == {"enable_thinking": False}
    said = done.stdout
    assert "cutoff_len" in said and "data.max_length" in said  # what was mapped
    assert "trust_remote_code" in said and "model.trust_remote_code: true" in said  # and why not
    if "deepspeed" in source:  # examples/deepspeed/ds_z3_config.json, from their repo root
        assert recipe.train.distributed == "zero3" and "ZeRO stage 3" in said


@pytest.mark.parametrize(
    "name", ["train_lora/qwen3_lora_dpo.yaml", "train_lora/qwen3_lora_kto.yaml",
             "train_lora/qwen3_lora_pretrain.yaml", "train_lora/qwen3_lora_reward.yaml"],
)  # fmt: skip
def test_other_stages_are_refused_in_one_sentence(tmp_path, name):
    done, out = _import(tmp_path, name)
    assert done.returncode == 2 and "is not supervised fine-tuning" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_train_on_a_llamafactory_file_says_to_import_it(tmp_path):
    done = run_cli("train", str(EXAMPLES / "train_lora" / "qwen3_lora_sft.yaml"))
    assert done.returncode == 2 and "tunelab recipe import" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_import_never_overwrites_a_file(tmp_path):
    out = tmp_path / "recipe.yaml"
    out.write_text("mine\n")
    done = run_cli(
        "recipe", "import", str(EXAMPLES / "train_lora/qwen3_lora_sft.yaml"), "--out", str(out)
    )
    assert done.returncode == 2 and "exists" in done.stderr and out.read_text() == "mine\n"


def test_an_imported_recipe_trains(tmp_path, tiny_model_dir):
    """The imported LoRA file, pointed at a local model and LLaMA-Factory's own registry, runs
    (identity.json's placeholders filled, as LLaMA-Factory asks its users to do by hand)."""
    done, out = _import(tmp_path, "train_lora/qwen3_lora_sft.yaml")
    assert done.returncode == 0, done.stderr
    registry = SHARED_DATA / "llamafactory" / "dataset_info.json"
    trained = run_cli(
        "train",
        str(out),
        f"model.path={tiny_model_dir}",
        f"data.registry={registry}",
        "data.max_length=128",
        'data.replace={"{{name}}": "Tuna", "{{author}}": "Lab"}',  # identity's placeholders
        "train.max_steps=2",
        "train.batch_size=4",
        "train.grad_accum=1",
        f"output={tmp_path / 'run'}",
    )
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2


CARELESS = """\
model_name_or_path: Qwen/Qwen3-4B
stage: sft
finetuning_type: lora
dataset: identity
cutoff_len: 512
learning_rate: 1.0e-4
"""


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("learning_rate: fast\n", "learning_rate is 'fast', which is not a number"),
        ("1: one\n", "the key 1 is not a name"),
        ("lora_rnak: 16\n", "lora_rnak is not a LLaMA-Factory setting; did you mean lora_rank?"),
        ("learnig_rate: 1.0e-3\n", "did you mean learning_rate?"),
        ("deepspeed: nowhere/ds_z9.json\n", "deepspeed names nowhere/ds_z9.json, which does not exist"),
        ("per_device_train_batch_size: many\n", "refused (from per_device_train_batch_size)"),
    ],
)  # fmt: skip
def test_a_careless_file_is_one_sentence_and_writes_nothing(tmp_path, change, words):
    source = tmp_path / "careless.yaml"
    text = (
        CARELESS.replace("learning_rate: 1.0e-4\n", "") if "learning_rate" in change else CARELESS
    )
    source.write_text(text + change, encoding="utf-8")
    out = tmp_path / "recipe.yaml"
    done = run_cli("recipe", "import", str(source), "--out", str(out))
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in " ".join(done.stderr.split()), done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_a_deepspeed_config_beside_the_file_sets_the_strategy_and_offload(tmp_path):
    config = EXAMPLES / "deepspeed" / "ds_z3_offload_config.json"
    (tmp_path / "ds.json").write_bytes(config.read_bytes())
    source = tmp_path / "lf.yaml"
    source.write_text(CARELESS + "deepspeed: ds.json\n", encoding="utf-8")
    done = run_cli("recipe", "import", str(source), "--out", str(tmp_path / "r.yaml"))
    assert done.returncode == 0, done.stderr
    recipe = load_recipe(tmp_path / "r.yaml")
    assert (recipe.train.distributed, recipe.train.offload) == ("zero3", "all")


def test_report_to_maps_onto_the_trackers():
    from tunelab.recipe_import import import_llamafactory

    source = yaml.safe_load((EXAMPLES / "train_lora/qwen3_lora_sft.yaml").read_text())
    imported = import_llamafactory({**source, "report_to": "wandb,tensorboard,neptune"}, "x.yaml")
    train = imported.recipe["train"]
    assert train["report_to"] == ["wandb"] and train["tensorboard"] is True
    assert any(key == "report_to" and "neptune" in why for key, why in imported.dropped)
    everything = import_llamafactory({**source, "report_to": "all"}, "x.yaml").recipe["train"]
    assert everything["report_to"] == ["wandb", "mlflow", "swanlab", "trackio"]
    assert import_llamafactory(source, "x.yaml").recipe["train"]["report_to"] == []
