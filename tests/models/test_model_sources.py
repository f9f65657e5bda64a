"""Model sources: built-in alias, folder, .gguf file, cached hub id, and downloads from a hub
on 127.0.0.1 that speaks the Hugging Face Hub's and ModelScope's file protocols, by their own
clients (tests/hub_server.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    with pytest.raises(  # the tests run offline (HF_HUB_OFFLINE=1): the command to run
        TunelabError, match=r"offline mode \(HF_HUB_OFFLINE\).*`tunelab download someone/other`"
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
    for written in ("/nonexistent", str(tmp_path / "gone"), "./gone", "runs/a/model"):
        # paths, not hub ids (owner/name): said to be missing, not sent to a hub
        with pytest.raises(
            TunelabError, match=r"^model folder .* does not exist; check model.path"
        ):
            resolve_model(written)


def test_gguf_file_loads_its_tokenizer():
    gguf = builtin_gguf()
    source = resolve_model(str(gguf))
    assert source.gguf_file == gguf.name
    tokenizer = load_tokenizer(source)
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>" in tokenizer.chat_template


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_model_dir):
    """The tiny model served as `someone/tiny` by a hub on a free local port."""
    import socket

    from tests.conftest import REPO

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work = tmp_path_factory.mktemp("hub")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "hub_server.py"), str(port),
         f"someone/tiny={tiny_model_dir}"],
        cwd=work, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    yield f"http://127.0.0.1:{port}", work
    process.terminate()
    process.wait(timeout=10)


def online(endpoint: str, home) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint, "HF_HOME": str(home),
            "MODELSCOPE_ENDPOINT": endpoint, "MODELSCOPE_CACHE": str(home / "ms")}  # fmt: skip


def test_download_from_a_hub_and_train_on_its_id(hub, tmp_path, tiny_model_dir):
    """`tunelab download` through huggingface_hub's client (HF_ENDPOINT respected), into its
    cache or --to a folder; a recipe naming the id then trains from it, and an id that is
    not cached downloads when the hub can be reached."""
    from tests.conftest import run_cli

    endpoint, work = hub
    env = online(endpoint, tmp_path / "home")
    done = run_cli("download", "someone/tiny", "--to", str(tmp_path / "here"), env=env)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == tmp_path / "here"
    assert (tmp_path / "here" / "model.safetensors").read_bytes() == (
        tiny_model_dir / "model.safetensors"
    ).read_bytes()
    cached = run_cli("download", "someone/tiny", env=env)
    assert cached.returncode == 0 and "models--someone--tiny" in cached.stdout, cached.stderr
    missing = run_cli("download", "someone/nothing", env=env)
    assert missing.returncode == 2 and f"no model `someone/nothing` at {endpoint}" in missing.stderr
    assert "GET /someone/tiny/resolve/" in (work / "requests.log").read_text()

    env = online(endpoint, tmp_path / "fresh")  # an empty cache: train downloads the id
    rows = [{"instruction": "Say 1", "output": "1"}] * 4
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"path": "someone/tiny"}, "data": {"train": [str(tmp_path / "d.json")]},
        "train": {"max_steps": 1, "tensorboard": False}, "output": str(tmp_path / "run"),
    }), encoding="utf-8")  # fmt: skip
    trained = run_cli("train", str(recipe), env=env)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "fresh" / "hub" / "models--someone--tiny").is_dir()


def test_download_from_modelscope_by_its_own_client(hub, tmp_path, tiny_model_dir):
    pytest.importorskip("modelscope")
    from tests.conftest import run_cli

    endpoint, _ = hub
    env = online(endpoint, tmp_path / "home")
    to = tmp_path / "ms-model"
    done = run_cli("download", "someone/tiny", "--from", "modelscope", "--to", str(to), env=env)
    assert done.returncode == 0, done.stderr
    assert (to / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    missing = run_cli("download", "someone/nothing", "--from", "modelscope", env=env)
    assert missing.returncode == 2 and "no model `someone/nothing`" in missing.stderr


def test_a_hub_that_takes_the_connection_and_never_answers_is_named(tmp_path):
    """A socket on 127.0.0.1 that accepts and never writes: the download ends in seconds,
    naming the host, instead of waiting for ever."""
    import socket
    import threading
    import time

    from tests.conftest import run_cli

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(16)],
                     daemon=True).start()  # fmt: skip
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {**online(endpoint, tmp_path / "home"), "TUNELAB_HUB_TIMEOUT": "2"}
    started = time.monotonic()
    done = run_cli("download", "someone/tiny", "--to", str(tmp_path / "here"), env=env, timeout=90)
    assert time.monotonic() - started < 45
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in said, said
    assert f"{endpoint} cannot be reached (it did not answer within 2 s" in said
    server.close()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["own er/na me"], "`own er/na me` is not a model id: Repo id must use alphanumeric chars"),
        (["../escape"], "is not a model id"),
        (["someone/tiny", "--to", "{file}"], "is a file; give a new or empty folder"),
    ],
)
def test_download_arguments_a_user_got_wrong_are_one_sentence(tmp_path, args, words):
    from tests.conftest import run_cli

    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    args = [a.replace("{file}", str(mine)) for a in args]
    done = run_cli("download", *args, env=online("http://127.0.0.1:9", tmp_path / "home"))
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and words in said and "Traceback" not in said, said
    assert mine.read_text() == "mine"
