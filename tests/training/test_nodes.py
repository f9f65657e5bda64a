"""Several machines, simulated on this one: two launchers (`tunelab train --nnodes 2
--node-rank R --master 127.0.0.1:PORT`), each one process with its own data cache, train one
run as one process does with the same global batch; a node that cannot see the run folder
stops both with one sentence."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_cli, start_cli
from tests.serve.test_serve import free_port
from tests.training.test_distributed import ddp_recipe, losses


def node_environment(tmp_path, rank: int) -> dict:
    """A node's own environment: its own tunelab cache (data cache and logs)."""
    cache = tmp_path / f"node-{rank}-cache"
    cache.mkdir(exist_ok=True)
    return {**os.environ, "TUNELAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("zero2", marks=pytest.mark.slow)])
def test_two_nodes_give_the_losses_of_one_process_with_the_same_global_batch(
    tmp_path, tiny_model_dir, strategy
):
    import tunelab

    if strategy == "zero2":
        pytest.importorskip("deepspeed")
    one = ddp_recipe(tmp_path, tiny_model_dir, "one", 4, max_steps=6, save_every=None)
    tunelab.train(one)
    two = ddp_recipe(tmp_path, tiny_model_dir, "two", 2, max_steps=6, save_every=None)
    both = ["train", str(two), f"train.distributed={strategy}", "--nnodes", "2", "--master",
            f"127.0.0.1:{free_port()}"]  # fmt: skip
    second = start_cli(*both, "--node-rank", "1", env=node_environment(tmp_path, 1))
    first = run_cli(*both, "--node-rank", "0", env=node_environment(tmp_path, 0))
    assert second.wait(timeout=600) == 0, second.stdout.read()[-3000:]
    assert first.returncode == 0, first.stderr[-3000:]
    # (DeepSpeed may print its communication op's build on stdout first)
    assert first.stdout.split()[-1:] == [str(tmp_path / "two")] and "Traceback" not in first.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    for rank in (0, 1):  # each node rendered the data once, into its own cache
        assert list((tmp_path / f"node-{rank}-cache").rglob("*.safetensors"))


def test_a_node_that_cannot_see_the_run_folder_stops_both_with_one_sentence(
    tmp_path, tiny_model_dir
):
    import yaml

    recipe = ddp_recipe(tmp_path, tiny_model_dir, "run", 2, max_steps=2, save_every=None)
    raw = yaml.safe_load(recipe.read_text())
    raw["output"] = "runs/shared"  # relative: each node's own working folder
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")
    folders = [tmp_path / "node-0", tmp_path / "node-1"]
    for folder in folders:
        folder.mkdir()
    both = ["train", str(recipe), "--nnodes", "2", "--master", f"127.0.0.1:{free_port()}"]
    second = start_cli(*both, "--node-rank", "1", env=node_environment(tmp_path, 1),
                       cwd=folders[1])  # fmt: skip
    first = run_cli(*both, "--node-rank", "0", env=node_environment(tmp_path, 0), cwd=folders[0])
    second.wait(timeout=600)
    said = " ".join(first.stderr.split())
    assert first.returncode != 0 and "node 1 (" in said, said
    assert "cannot see the run folder" in said and "Traceback" not in said
    assert "cannot see the run folder" in second.stdout.read()
    assert not (folders[1] / "runs" / "shared" / "summary.json").exists()


def two_nodes_at_checkpoint_2(tmp_path, tiny_model_dir, **train):
    """Two simulated nodes training one run until its checkpoint-2 is whole: (node 0's
    launcher, node 1's launcher, checkpoint-2)."""
    import time

    recipe = ddp_recipe(tmp_path, tiny_model_dir, "run", 2, max_steps=400, save_every=2, **train)
    both = ["train", str(recipe), "--nnodes", "2", "--master", f"127.0.0.1:{free_port()}"]
    second = start_cli(*both, "--node-rank", "1", env=node_environment(tmp_path, 1))
    first = start_cli(*both, "--node-rank", "0", env=node_environment(tmp_path, 0))
    saved = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 300
    while not saved.is_dir() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    assert saved.is_dir(), "no checkpoint-2"
    return first, second, saved


def test_a_lost_node_ends_the_other_within_a_minute_with_its_checkpoint_kept(
    tmp_path, tiny_model_dir
):
    """Node 1 (its launcher and its process) SIGKILLed after the first checkpoint, as a
    machine that goes away: node 0 ends within 60 s with one sentence, checkpoint-2 intact."""
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    first, second, saved = two_nodes_at_checkpoint_2(tmp_path, tiny_model_dir)
    node = psutil.Process(second.pid)
    for process in [*node.children(recursive=True), node]:
        process.send_signal(signal.SIGKILL)
    lost = time.monotonic()
    first.wait(timeout=120)
    took = time.monotonic() - lost
    print(f"node 0 ended {took:.1f} s after node 1 was lost")
    said = " ".join(first.stdout.read().split())
    assert first.returncode != 0 and took < 60, (took, said[-2000:])
    assert "lost contact with the other nodes" in said and "Traceback" not in said, said[-2000:]
    assert (saved / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_hung_node_ends_the_other_after_the_collective_timeout(tmp_path, tiny_model_dir):
    """Node 1 stopped (SIGSTOP: alive, answering nothing, as a machine that hangs) after the
    first checkpoint: node 0 waits train.collective_timeout seconds in the gradient exchange,
    then ends with one sentence, checkpoint-2 intact (torch's default wait is 30 minutes)."""
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    first, second, saved = two_nodes_at_checkpoint_2(tmp_path, tiny_model_dir,
                                                     collective_timeout=10)  # fmt: skip
    node = [*psutil.Process(second.pid).children(recursive=True), psutil.Process(second.pid)]
    try:
        for process in node:
            process.send_signal(signal.SIGSTOP)
        hung = time.monotonic()
        first.wait(timeout=120)
        took = time.monotonic() - hung
    finally:
        for process in node:
            process.send_signal(signal.SIGKILL)
    print(f"node 0 ended {took:.1f} s after node 1 hung (collective_timeout 10)")
    said = " ".join(first.stdout.read().split())
    assert first.returncode != 0 and 8 < took < 60, (took, said[-2000:])
    assert "lost contact with the other nodes" in said and "Traceback" not in said, said[-2000:]
    assert (saved / "adapter_model.safetensors").is_file()


@pytest.mark.slow  # two launches of two processes (about 60 s)
def test_max_restarts_starts_the_processes_again_from_the_newest_checkpoint(
    tmp_path, tiny_model_dir
):
    """`--nproc 2 --max-restarts 1`, one process SIGKILLed after checkpoint-2: the launcher
    starts both again, they resume, and the run ends with the uninterrupted run's losses."""
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    whole = ddp_recipe(tmp_path, tiny_model_dir, "whole", 2, max_steps=8, save_every=2)
    assert run_cli("train", str(whole), "--nproc", "2").returncode == 0
    broken = ddp_recipe(tmp_path, tiny_model_dir, "broken", 2, max_steps=8, save_every=2)
    launcher = start_cli("train", str(broken), "--nproc", "2", "--max-restarts", "1")
    saved = tmp_path / "broken" / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 300
    while not saved.is_dir() and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.05)
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True)
               if "train" in p.cmdline()]  # fmt: skip
    assert len(workers) == 2, workers
    workers[1].send_signal(signal.SIGKILL)
    assert launcher.wait(timeout=600) == 0, launcher.stdout.read()[-3000:]
    said = launcher.stdout.read()
    assert "started again after a failure: resuming" in said
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["resumed_from"].startswith("checkpoint-")
    assert losses(tmp_path / "broken") == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)


@pytest.mark.slow  # two accelerate launchers and one plain run (about 40 s)
def test_accelerate_launch_on_two_nodes_gives_the_losses_of_one_process(tmp_path, tiny_model_dir):
    """`accelerate launch --num_machines 2 --machine_rank R` on each "node" (127.0.0.1, its
    own cache) trains the run one process does with the same global batch."""
    import subprocess
    import sys

    import tunelab

    one = ddp_recipe(tmp_path, tiny_model_dir, "one", 4, max_steps=4, save_every=None)
    tunelab.train(one)
    two = ddp_recipe(tmp_path, tiny_model_dir, "two", 2, max_steps=4, save_every=None)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    port = free_port()
    launchers = [
        subprocess.Popen(
            [
                accelerate,
                "launch",
                "--multi_gpu",
                "--num_processes",
                "2",
                "--num_machines",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                str(port),
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                "-m",
                "tunelab",
                "train",
                str(two),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=node_environment(tmp_path, rank),
        )  # fmt: skip
        for rank in (0, 1)
    ]
    said = [launcher.communicate(timeout=600)[0] for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], said[0][-3000:]
    assert json.loads((tmp_path / "two" / "distributed.json").read_text())["world_size"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
