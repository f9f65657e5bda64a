"""`train.report_to`: TensorBoard, Weights & Biases (offline files), MLflow (a local database,
and a local MLflow server started here), SwanLab (offline files) and Trackio (its local
database) each get the losses metrics.jsonl has, the recipe and the summary, read back
with each tracker's own reader."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROWS = [{"instruction": f"What is {i} plus one?", "output": f"It is {i + 1}."} for i in range(16)]
TRACKERS = ["wandb", "mlflow", "swanlab", "trackio"]


def write_recipe(root: Path, model: Path, report_to: list[str]) -> Path:
    (root / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(root / "d.json")], "max_length": 64, "val_ratio": 0.25},
        "method": {"type": "lora", "r": 4},
        "train": {"max_steps": 4, "batch_size": 4, "eval_every": 2, "log_every": 1,
                  "lr": 1e-3, "report_to": report_to},
        "output": str(root / "run"),
    }  # fmt: skip
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def quiet_environment(root: Path, **more: str) -> dict:
    """This process's environment without any tracker's credentials or modes, so nothing
    can leave the machine; each tracker's files under `root`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WANDB_", "MLFLOW_", "SWANLAB_", "TRACKIO_"))}  # fmt: skip
    env.update(HOME=str(root / "home"), TRACKIO_DIR=str(root / "trackio"), **more)
    (root / "home").mkdir(exist_ok=True)
    return env


def logged(run: Path) -> tuple[dict, dict, dict]:
    """metrics.jsonl's training and validation losses by step, and summary.json."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in rows if "loss" in r}
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    return train, evals, json.loads((run / "summary.json").read_text())


def leveldb_records(path: Path) -> list[bytes]:
    """The records of a LevelDB log file (the format of wandb's .wandb transaction log):
    32 KiB blocks of chunks, each with a 7-byte header (crc, length, type)."""
    data, block, records, pending = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    position = 7
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(pending)
            pending = b""
    return records


def wandb_run(run: Path) -> tuple[dict, dict, dict, dict]:
    from wandb.proto import wandb_internal_pb2

    (path,) = run.glob("wandb/offline-run-*/run-*.wandb")
    train, evals, config, summary = {}, {}, {}, {}

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    for data in leveldb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {key(i): json.loads(i.value_json) for i in record.history.item}
            step = items.get("train/global_step")
            if "train/loss" in items:
                train[step] = items["train/loss"]
            if "eval/loss" in items:
                evals[step] = items["eval/loss"]
        elif kind == "config":
            config.update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
    return train, evals, config, summary


def swanlab_run(run: Path) -> tuple[dict, dict, dict]:
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    (path,) = run.glob("swanlog/run-*/run-*.swanlab")
    reader, scalars = DataStoreReader(), {}
    reader.open(path)
    for data in reader:
        record = Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "scalar":
            scalar = record.scalar
            scalars.setdefault(scalar.key, {})[scalar.step] = scalar.value.number
    (config_file,) = run.glob("swanlog/run-*/files/config.yaml")
    config = yaml.safe_load(config_file.read_text())
    return scalars.get("train/loss", {}), scalars, config


def tensorboard_run(run: Path) -> tuple[dict, dict, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()

    def scalars(tag: str) -> dict:
        return {e.step: e.value for e in events.Scalars(tag)}

    summary = {t: scalars(t) for t in events.Tags()["scalars"] if t.startswith("summary/")}
    return scalars("train/loss"), scalars("eval/loss"), summary


def mlflow_run(uri: str) -> tuple[dict, dict, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tunelab")
    (found,) = client.search_runs([experiment.experiment_id])

    def history(name: str) -> dict:
        return {m.step: m.value for m in client.get_metric_history(found.info.run_id, name)}

    return history("loss"), history("eval_loss"), found


def test_each_tracker_gets_the_losses_the_recipe_and_the_summary(tmp_path, tiny_model_dir):
    from tests.conftest import run_cli

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = quiet_environment(tmp_path, MLFLOW_TRACKING_URI=uri)
    done = run_cli("train", str(write_recipe(tmp_path, tiny_model_dir, TRACKERS)), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    train, evals, summary = logged(run)
    assert sorted(train) == [1, 2, 3, 4] and sorted(evals) == [2, 4]

    board_train, board_evals, board_summary = tensorboard_run(run)
    assert board_train == pytest.approx(train, rel=1e-6)  # stored as float32
    assert board_evals == pytest.approx(evals, rel=1e-6)
    assert board_summary["summary/tokens_per_second"][4] == pytest.approx(
        summary["tokens_per_second"], rel=1e-6
    )

    wandb_train, wandb_evals, config, wandb_summary = wandb_run(run)
    assert wandb_train == train and wandb_evals == evals
    assert config["recipe"]["train"]["lr"] == 1e-3 and config["recipe"]["method"]["r"] == 4
    assert wandb_summary["tunelab/tokens_per_second"] == summary["tokens_per_second"]
    assert wandb_summary["tunelab/peak_memory_bytes"] == summary["peak_memory_bytes"]

    mlflow_train, mlflow_evals, found = mlflow_run(uri)
    assert mlflow_train == train and mlflow_evals == evals
    assert found.data.params["recipe.train.lr"] == "0.001" and found.info.status == "FINISHED"
    assert found.data.metrics["summary/eval_loss"] == summary["eval_loss"]

    swan_train, scalars, swan_config = swanlab_run(run)
    assert swan_train == train and scalars["eval/loss"] == evals
    assert scalars["summary/train_seconds"][4] == summary["train_seconds"]
    assert swan_config["recipe"]["value"]["train"]["lr"] == 1e-3

    import_trackio = f"import sys; sys.path.insert(0, {str(Path(__file__).parents[2])!r})"
    read = subprocess.run(
        [sys.executable, "-c", f"{import_trackio}; from tests.training.test_trackers import trackio_print;"
         "trackio_print()"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr[-2000:]
    tracked = json.loads(read.stdout.strip().splitlines()[-1])
    assert {int(k): v for k, v in tracked["train"].items()} == train
    assert {int(k): v for k, v in tracked["evals"].items()} == evals
    assert tracked["summary"]["summary/final_loss"] == summary["final_loss"]
    assert tracked["config"]["recipe"]["train"]["lr"] == 1e-3


def trackio_print() -> None:
    """Trackio's local database read by Trackio (in a process whose TRACKIO_DIR is the
    test's: Trackio reads it when imported)."""
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("tunelab", "run")
    train = {r["train/global_step"]: r["train/loss"] for r in logs if "train/loss" in r}
    evals = {r["train/global_step"]: r["eval/loss"] for r in logs if "eval/loss" in r}
    summary = next(r for r in logs if "summary/final_loss" in r)
    config = SQLiteStorage.get_run_config("tunelab", "run")
    print(json.dumps({"train": train, "evals": evals, "summary": summary, "config": config}))


@pytest.mark.slow  # an MLflow server's start takes most of its 34 s
def test_a_local_mlflow_server_gets_the_run(tmp_path, tiny_model_dir):
    from tests.conftest import run_cli
    from tests.serve.test_serve import free_port

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(uri, server)
        env = quiet_environment(tmp_path, MLFLOW_TRACKING_URI=uri)
        done = run_cli("train", str(write_recipe(tmp_path, tiny_model_dir, ["mlflow"])), env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        train, evals, summary = logged(tmp_path / "run")
        mlflow_train, mlflow_evals, found = mlflow_run(uri)
        assert mlflow_train == train and mlflow_evals == evals
        assert found.data.metrics["summary/tokens_per_second"] == summary["tokens_per_second"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_server(uri: str, server: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, "the MLflow server ended"
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the MLflow server did not answer in 120 s")


def test_tracker_mistakes_are_one_sentence(tmp_path, tiny_model_dir, monkeypatch):
    from tests.conftest import run_cli

    path = write_recipe(tmp_path, tiny_model_dir, ["mlflow"])
    env = quiet_environment(tmp_path, MLFLOW_TRACKING_URI=f"file://{tmp_path / 'mlruns'}")
    done = run_cli("train", str(path), env=env)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert "train.report_to mlflow could not start its run: " in said

    import importlib.util

    from tunelab.errors import TunelabError
    from tunelab.recipe import load_recipe
    from tunelab.training import trackers

    with pytest.raises(TunelabError, match=r"train.report_to"):
        load_recipe(path, ["train.report_to=[neptune]"])
    assert load_recipe(path, ["train.report_to=wandb"]).train.report_to == ["wandb"]

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "swanlab" else real(name, *a)
    )
    with pytest.raises(TunelabError, match=r"pip install swanlab"):
        trackers.check_installed(load_recipe(path, ["train.report_to=swanlab"]))
