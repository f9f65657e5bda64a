"""Several processes (a real torchrun, two CPU processes with gloo) train one run: the main
process writes the run folder, the others train alongside it; one consistent folder results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.training.test_faults import write_recipe


@pytest.mark.parametrize("stages", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_torchrun_two_processes_leave_one_consistent_run(tmp_path, tiny_model_dir, stages):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=4, save_every=2)
    if stages:
        recipe.write_text(recipe.read_text() + "stages:\n- {name: a}\n- {name: b}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "tunelab",
            "train",
            str(recipe),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(run)]  # told once
    assert result.stderr.count("done: ") == (2 if stages else 1)
    folders = [run / "stage-1-a", run / "stage-2-b"] if stages else [run]
    for folder in folders:
        metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2, 3, 4]
        kinds = [json.loads(x)["kind"] for x in (folder / "events.jsonl").read_text().splitlines()]
        assert kinds.count("started") == 1 and kinds[-1] == "finished"
        checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
        assert checkpoints == ["checkpoint-2", "checkpoint-4"]
        saved = {p.name for p in (folder / "checkpoints" / "checkpoint-4").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= saved
        summary = json.loads((folder / "summary.json").read_text())
        assert (
            summary["steps"] == 4 and (folder / "adapter" / "adapter_model.safetensors").is_file()
        )
    assert not list(tmp_path.glob(".run.replaced-*"))


def ddp_recipe(root, model_dir, name, batch_size, **train):
    """The resume tests' data and LoRA settings, no dropout, as `name`."""
    import yaml

    from tests.training.test_resume import write_recipe

    path = write_recipe(root, model_dir, name, batch_size=batch_size, **train)
    recipe = yaml.safe_load(path.read_text())
    recipe["method"]["dropout"] = 0.0  # each process draws its own masks
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def losses(folder):
    return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_nproc_2_gives_the_losses_of_one_process_with_the_same_global_batch(
    tmp_path, tiny_model_dir
):
    import tunelab

    one = ddp_recipe(tmp_path, tiny_model_dir, "one", 4, max_steps=6, save_every=None)
    tunelab.train(one)
    two = ddp_recipe(tmp_path, tiny_model_dir, "two", 2, max_steps=6, save_every=None)
    result = run_cli("train", str(two), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(tmp_path / "two")] and "Traceback" not in result.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("one", "two"))
    assert b["world_size"] == 2 and len(b["peak_memory_bytes_per_rank"]) == 2
    assert b["tokens"] == a["tokens"]  # every process's tokens, counted once
    assert json.loads((tmp_path / "two" / "distributed.json").read_text()) == {
        "strategy": "ddp",
        "world_size": 2,
        "backend": "gloo",
        "global_batch": 4,
    }


def killed_at_step_5(tmp_path, recipe) -> None:
    """Two torchrun processes on `recipe`, each killed (SIGKILL) after step 5."""
    from tests.training.test_resume import KILLER

    (tmp_path / "killer.py").write_text(KILLER, encoding="utf-8")
    killed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", str(tmp_path / "killer.py"), str(recipe), "5"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert killed.returncode != 0 and not (tmp_path / "broken" / "summary.json").exists()


@pytest.mark.slow  # four launches of two processes (about 60 s)
def test_ddp_killed_then_resumed_with_nproc_ends_as_uninterrupted(tmp_path, tiny_model_dir):
    from tests.training.test_resume import adapter_weights

    whole = ddp_recipe(tmp_path, tiny_model_dir, "whole", 2)
    assert run_cli("train", str(whole), "--nproc", "2").returncode == 0
    broken = ddp_recipe(tmp_path, tiny_model_dir, "broken", 2)
    killed_at_step_5(tmp_path, broken)
    resumed = run_cli("train", str(broken), "--resume", "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "broken") == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)
    a, b = adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "broken")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow  # three launches of two processes, two of one (about 80 s; ZeRO 110 s)
@pytest.mark.parametrize(
    "before, after, strategy",
    [(2, 1, "ddp"), (1, 2, "ddp"), (2, 1, "zero2"), (1, 2, "zero3")],
)
def test_a_run_resumed_on_another_process_count_ends_as_uninterrupted(
    tmp_path, tiny_model_dir, before, after, strategy
):
    """Killed at step 5 under `before` processes, resumed under `after`: the same global
    batch (batch x accumulation x processes), the same samples in each step, so the losses
    and the adapter of the uninterrupted run (dropout off: its masks are per process). Under
    ZeRO the optimizer shards are resharded through DeepSpeed's universal checkpoint."""
    from tests.training.test_resume import KILLER, adapter_weights

    batch = 4 // before  # a global batch of 4
    whole = ddp_recipe(tmp_path, tiny_model_dir, "whole", batch, distributed=strategy)
    assert run_cli("train", str(whole), "--nproc", str(before)).returncode == 0
    broken = ddp_recipe(tmp_path, tiny_model_dir, "broken", batch, distributed=strategy)
    if before == 2:
        killed_at_step_5(tmp_path, broken)
    else:
        (tmp_path / "killer.py").write_text(KILLER, encoding="utf-8")
        killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), str(broken), "5"],
                                capture_output=True, text=True, timeout=600)  # fmt: skip
        assert killed.returncode != 0
    resumed = run_cli("train", str(broken), "--resume", "--nproc", str(after))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = " ".join(resumed.stderr.split())
    assert f"resuming {before}-process checkpoints with {after}: the global batch of 4" in said
    assert losses(tmp_path / "broken") == pytest.approx(losses(tmp_path / "whole"), abs=1e-4)
    a, b = adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "broken")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    recorded = json.loads((tmp_path / "broken" / "distributed.json").read_text())
    assert recorded["world_size"] == after and recorded["global_batch"] == 4
    assert ("checkpoint-4: DeepSpeed's shards -> a universal checkpoint" in said) == (
        strategy != "ddp"
    )
    print(f"{strategy} {before} -> {after}: {len(losses(tmp_path / 'broken'))} steps equal")


def test_sharded_state_is_not_resumed_on_another_process_count(tmp_path, monkeypatch):
    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe
    from tunelab.run import RunFolder
    from tunelab.training.resharding import check_same_processes

    path = ddp_recipe(tmp_path, tmp_path, "z", 2)
    (tmp_path / "z").mkdir()
    run = RunFolder(tmp_path / "z")
    monkeypatch.setenv("WORLD_SIZE", "1")
    for saved, words in [
        ({"strategy": "fsdp", "world_size": 2}, "resharding FSDP state onto another count"),
        ({"strategy": "ddp", "world_size": 3, "global_batch": 6}, "cannot share equally"),
    ]:
        run.write_json("distributed.json", saved)
        monkeypatch.setenv("WORLD_SIZE", "4" if saved["world_size"] == 3 else "1")
        with pytest.raises(TunelabError, match=words):
            check_same_processes(run, load_recipe(path))
    run.write_json("distributed.json", {"strategy": "ddp", "world_size": 2, "global_batch": 4})
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_same_processes(run, load_recipe(path))  # data parallel: resumed by one process
    run.write_json("distributed.json", {"strategy": "zero2", "world_size": 2, "global_batch": 4})
    check_same_processes(run, load_recipe(path, ["train.distributed=zero2"]))  # universal


@pytest.mark.slow  # test_fsdp_is_refused_on_cpu_processes checks the rule in the default suite
def test_fsdp_on_cpu_processes_is_one_clear_sentence(tmp_path, tiny_model_dir):
    recipe = ddp_recipe(tmp_path, tiny_model_dir, "fsdp", 2, max_steps=2)
    result = run_cli("train", str(recipe), "train.distributed=fsdp", "--nproc", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "use train.distributed ddp on CPUs" in lines[0], lines


def test_fsdp_is_refused_on_cpu_processes(tmp_path, tiny_model_dir, monkeypatch):
    import torch

    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe
    from tunelab.training.distributed import check_distributed

    recipe = load_recipe(ddp_recipe(tmp_path, tiny_model_dir, "f", 2), ["train.distributed=fsdp"])
    check_distributed(recipe)  # one process: nothing to shard, nothing refused
    monkeypatch.setenv("WORLD_SIZE", "2")
    if torch.cuda.is_available():
        check_distributed(recipe)
    else:
        with pytest.raises(TunelabError, match="use train.distributed ddp on CPUs"):
            check_distributed(recipe)


def test_the_estimate_gives_each_process_its_memory_by_strategy(tmp_path, tiny_model_dir):
    from tunelab.estimation import estimate_recipe
    from tunelab.recipe import load_recipe

    recipe = load_recipe(ddp_recipe(tmp_path, tiny_model_dir, "e", 2), ["method.type=full"])
    one, four = estimate_recipe(recipe, "cpu"), estimate_recipe(recipe, "cpu", processes=4)
    assert one.per_process is None
    assert four.per_process["ddp"] == one.total_bytes + one.parts["gradients"]
    sharded = sum(one.parts[k] for k in ("weights", "gradients", "optimizer"))
    layer = one.parts["weights"] // 2  # the tiny model has 2 decoder layers
    assert four.per_process["fsdp"] == one.total_bytes - sharded + sharded // 4 + layer
    assert four.per_process["fsdp"] < four.per_process["ddp"]
    assert one.data.steps_per_epoch == 12 and four.data.steps_per_epoch == 3  # 24 rows, batch 2
    optimizer, trainable = one.parts["optimizer"], four.per_process
    params = one.parts["weights"] // 4  # fp32 on this CPU
    assert trainable["zero2"] == (
        one.total_bytes - one.parts["gradients"] * 3 // 4 - optimizer + 12 * params // 4
    )
    assert trainable["zero3"] == (
        one.total_bytes - sharded + 2 * layer + one.parts["weights"] // 4
        + one.parts["gradients"] // 4 + 12 * params // 4
    )  # fmt: skip
    assert trainable["zero2"] < trainable["ddp"]  # (two gathered layers are all the tiny one has)
    weights, gradients = one.parts["weights"], one.parts["gradients"]
    assert one.communication is None and four.communication == {
        "ddp": round(2 * 0.75 * gradients), "zero2": round(2 * 0.75 * gradients),
        "fsdp": round(0.75 * (2 * weights + gradients)),
        "zero3": round(0.75 * (2 * weights + gradients)),
    }  # fmt: skip


def test_estimate_nnodes_counts_the_processes_of_every_machine(tmp_path, tiny_model_dir):
    path = ddp_recipe(tmp_path, tiny_model_dir, "e", 2)
    four = run_cli("estimate", str(path), "--nproc", "4", "--json")
    nodes = run_cli("estimate", str(path), "--nproc", "2", "--nnodes", "2", "--json")
    assert four.returncode == nodes.returncode == 0, nodes.stderr[-2000:]
    a, b = json.loads(four.stdout), json.loads(nodes.stdout)
    assert a["per_process"] == b["per_process"] and a["communication"] == b["communication"]
    assert b["data"]["steps_per_epoch"] == 3  # 24 rows, batch 2 on each of 4 processes
    shown = run_cli("estimate", str(path), "--nproc", "2", "--nnodes", "2")
    assert "each process sends per step: ddp" in " ".join(shown.stdout.split())


def test_the_estimate_leaves_offloaded_state_off_the_gpu(tmp_path, tiny_model_dir):
    from tunelab.estimation import estimate_recipe
    from tunelab.recipe import load_recipe

    path = ddp_recipe(tmp_path, tiny_model_dir, "e", 2)
    zero3 = ["method.type=full", "train.distributed=zero3"]
    kept = estimate_recipe(load_recipe(path, zero3), "cuda", processes=2).per_process
    moved = estimate_recipe(load_recipe(path, [*zero3, "train.offload=all"]), "cuda", processes=2)
    one = estimate_recipe(load_recipe(path, zero3), "cuda")
    assert one.per_process is not None  # a ZeRO recipe gets its figure with one process too
    assert moved.per_process["zero3"] < kept["zero3"]
    # DeepSpeed's optimizer state is fp32 moments plus an fp32 master copy
    params = one.parts["weights"] // 2
    assert (
        kept["zero2"] - (one.total_bytes - one.parts["gradients"] // 2 - one.parts["optimizer"])
        == 12 * params // 2
    )


@pytest.mark.parametrize("offload", ["none", "optimizer", "all"])
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_reads_every_config_tunelab_writes(tmp_path, tiny_model_dir, stage, offload):
    """DeepSpeed's own parser accepts the config as written into the run folder (no "auto"
    values, nothing only the Trainer understands); what the recipe may not combine is one
    sentence naming the choices."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe
    from tunelab.training.distributed import deepspeed_config

    path = ddp_recipe(tmp_path, tiny_model_dir, "z", 2, grad_accum=3)
    settings = [f"train.distributed={stage}", f"train.offload={offload}"]
    if stage == "zero2" and offload == "all":
        with pytest.raises(TunelabError, match="give offload optimizer or none"):
            load_recipe(path, settings)
        return
    recipe = load_recipe(path, settings)
    for dtype in ("float32", "bfloat16"):
        config = deepspeed_config(recipe, getattr(__import__("torch"), dtype), 64)
        json.dumps(config)  # as written to deepspeed.json
        parsed = DeepSpeedConfig(json.loads(json.dumps(config)))
        assert parsed.zero_optimization_stage == int(stage[-1])
        assert parsed.train_batch_size == 6 and parsed.gradient_accumulation_steps == 3
        assert parsed.bfloat16_config.enabled == (dtype == "bfloat16")
        zero = parsed.zero_config
        assert (zero.offload_optimizer is not None) == (offload != "none")
        assert (zero.offload_param is not None) == (offload == "all")


def test_offload_without_a_sharding_strategy_is_one_sentence(tmp_path, tiny_model_dir):
    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe

    path = ddp_recipe(tmp_path, tiny_model_dir, "o", 2)
    with pytest.raises(TunelabError, match="give train.distributed fsdp, zero2 or zero3"):
        load_recipe(path, ["train.offload=optimizer"])
    with pytest.raises(TunelabError, match="give offload all or none"):
        load_recipe(path, ["train.distributed=fsdp", "train.offload=optimizer"])
    assert (
        load_recipe(path, ["train.distributed=fsdp", "train.offload=true"]).train.offload == "all"
    )


@pytest.mark.slow  # two DeepSpeed processes (about 25 s; 50 s where its CPU op is first built)
def test_zero3_on_two_processes_trains_and_saves_like_one(tmp_path, tiny_model_dir):
    """Full tuning, weights sharded across two gloo processes by DeepSpeed ZeRO-3: the losses
    of one process with the same global batch, and the saved model gathered whole."""
    pytest.importorskip("deepspeed")
    import tunelab

    full = ["method.type=full", "train.lr=1e-3"]
    one = ddp_recipe(tmp_path, tiny_model_dir, "one", 4, max_steps=4, save_every=None)
    tunelab.train(one, full)
    two = ddp_recipe(tmp_path, tiny_model_dir, "two", 2, max_steps=4, save_every=None)
    result = run_cli("train", str(two), *full, "train.distributed=zero3", "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "WARNING" not in result.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    a, b = (load_file(str(tmp_path / n / "model" / "model.safetensors")) for n in ("one", "two"))
    assert a.keys() == b.keys() and all(b[k].shape == a[k].shape for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (
        summary["total_parameters"]
        == json.loads((tmp_path / "one" / "summary.json").read_text())["total_parameters"]
    )  # each process's shard counted whole
    written = json.loads((tmp_path / "two" / "deepspeed.json").read_text())
    recorded = json.loads((tmp_path / "two" / "distributed.json").read_text())
    assert recorded["strategy"] == "zero3" and recorded["deepspeed"] == written
    assert written["zero_optimization"]["stage"] == 3 and written["train_batch_size"] == 4


@pytest.mark.slow  # three launches of two processes
def test_zero2_killed_then_resumed_ends_as_uninterrupted(tmp_path, tiny_model_dir):
    from tests.training.test_resume import adapter_weights

    zero2 = ["train.distributed=zero2"]
    whole = ddp_recipe(tmp_path, tiny_model_dir, "whole", 2)
    assert run_cli("train", str(whole), *zero2, "--nproc", "2").returncode == 0
    broken = ddp_recipe(tmp_path, tiny_model_dir, "broken", 2, distributed="zero2")
    killed_at_step_5(tmp_path, broken)
    saved = tmp_path / "broken" / "checkpoints" / "checkpoint-4"
    assert (saved / "global_step4").is_dir()  # DeepSpeed's own sharded optimizer state
    resumed = run_cli("train", str(broken), "--resume", "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-4" in resumed.stderr
    assert losses(tmp_path / "broken") == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)
    a, b = adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "broken")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.gpu  # run with `pytest -m gpu` on a machine with a CUDA GPU
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "settings", [["zero2"], ["zero3"], ["zero3", "all"], ["zero2", "optimizer"]]
)
def test_each_zero_stage_trains_on_one_gpu(tmp_path, tiny_model_dir, settings):
    """One GPU, bf16 weights, DeepSpeed's mixed precision: each stage (and offload) finishes
    and records its peak."""
    pytest.importorskip("deepspeed")
    import tunelab

    recipe = ddp_recipe(tmp_path, tiny_model_dir, "g", 2, max_steps=3, save_every=2)
    overrides = ["method.type=full", f"train.distributed={settings[0]}"]
    if len(settings) > 1:
        overrides.append(f"train.offload={settings[1]}")
    result = tunelab.train(recipe, overrides)
    assert result.summary["steps"] == 3 and result.summary["device"] == "cuda"
    written = json.loads((tmp_path / "g" / "deepspeed.json").read_text())
    assert written["bf16"]["enabled"] is True
    assert (tmp_path / "g" / "model" / "model.safetensors").is_file()


@pytest.mark.slow  # one launch of two processes (about 25 s)
def test_accelerate_launch_starts_the_same_data_parallel_run(tmp_path, tiny_model_dir):
    """`accelerate launch` (its multi-process launcher; with --cpu accelerate starts a single
    process) trains the run `--nproc 2` would: the losses of one process at batch 4."""
    import tunelab

    one = ddp_recipe(tmp_path, tiny_model_dir, "one", 4, max_steps=4, save_every=None)
    tunelab.train(one)
    two = ddp_recipe(tmp_path, tiny_model_dir, "two", 2, max_steps=4, save_every=None)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    result = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tunelab", "train",
         str(two)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "distributed.json").read_text())["world_size"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)


@pytest.mark.slow
def test_token_budget_batches_shared_by_two_processes(tmp_path, tiny_model_dir):
    """Two processes take every other budget batch: each step trains the samples and gives the
    loss of one process accumulating those two batches."""
    import tunelab

    budget = {"batch_tokens": 160, "max_steps": 4, "save_every": None}
    one = ddp_recipe(tmp_path, tiny_model_dir, "one", 4, grad_accum=2, **budget)
    tunelab.train(one)
    two = ddp_recipe(tmp_path, tiny_model_dir, "two", 4, **budget)
    result = run_cli("train", str(two), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("one", "two"))
    assert b["tokens"] == a["tokens"]


def test_a_process_killed_under_nproc_ends_the_others_with_one_sentence(tmp_path, tiny_model_dir):
    """Rank 1 of `--nproc 2` SIGKILLed after its first checkpoint: the launcher stops rank 0
    within seconds and says which process was killed; no gloo error, no traceback, and the
    checkpoint stays whole."""
    import signal
    import time

    import psutil

    recipe = ddp_recipe(tmp_path, tiny_model_dir, "killed", 2, max_steps=400, save_every=2)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tunelab", "train", str(recipe), "--nproc", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 240
    while not checkpoint.is_dir() and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    assert checkpoint.is_dir(), launcher.communicate(timeout=60)
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True)
               if p.environ().get("RANK") == "1"]  # fmt: skip
    assert workers
    workers[0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    out, err = launcher.communicate(timeout=120)
    assert time.monotonic() - killed_at < 60
    said = " ".join(err.split())
    assert launcher.returncode == 2, said[-3000:]
    assert "process 1 of 2 was killed (SIGKILL" in said and "--resume" in said
    assert "Traceback" not in err and "internal error" not in said and "gloo" not in said.lower()
    from tunelab.training.checkpoints import checkpoint_problem, latest_checkpoint

    kept = latest_checkpoint(checkpoint.parent)
    assert kept is not None and checkpoint_problem(kept) is None
