"""Shared fixtures: the built-in tokenizer and a tiny random model built from a config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def builtin_tokenizer():
    """The real SmolLM2 tokenizer (ChatML template), from the converted built-in model, or
    from its files alone in TUNELAB_TEST_TOKENIZER (a GPU machine given no model package)."""
    from tunelab.models.load import load_tokenizer
    from tunelab.models.sources import ModelSource, resolve_model

    carried = os.environ.get("TUNELAB_TEST_TOKENIZER")
    if carried:
        return load_tokenizer(ModelSource(carried, Path(carried)))
    return load_tokenizer(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, builtin_tokenizer) -> Path:
    """A 2-layer, hidden-64 Llama with random weights and the real tokenizer, saved as a folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**tiny_sizes(builtin_tokenizer), tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    builtin_tokenizer.save_pretrained(folder)
    return folder


def tiny_sizes(tokenizer) -> dict:
    """The config sizes of the tiny test models (2 layers, hidden 64, 4 heads, 2 kv heads)."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def run_cli(
    *args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real `tunelab` command line in a child process (in `env`, else this one's):
    a fork of a warm process that has imported torch and transformers (tests/cli_zygote.py)
    where the environment is this one's, else a fresh `python -m tunelab`."""
    wanted = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    if os.environ.get("TUNELAB_TEST_FRESH_CHILDREN") or not _forkable(wanted):
        return subprocess.run(
            [sys.executable, "-m", "tunelab", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=wanted,
        )
    return _forked(list(args), Path(cwd or os.getcwd()), timeout, wanted)


_ZYGOTE: list[subprocess.Popen] = []
_ZYGOTE_ENV: dict[str, str] = {}
# environment variables libraries read when imported: a child that needs other values than
# the warm process imported with starts afresh
READ_AT_IMPORT = ("HF_", "HUGGINGFACE", "TRANSFORMERS", "MODELSCOPE", "TORCH", "PYTORCH",
                  "OMP_", "MKL_", "CUDA", "TOKENIZERS", "XDG_", "HOME", "PYTHON")  # fmt: skip


def _forkable(wanted: dict) -> bool:
    started = _ZYGOTE_ENV or {**os.environ, "PYTHONUNBUFFERED": "1"}
    differs = {k for k in set(wanted) | set(started) if wanted.get(k) != started.get(k)}
    return not any(k.startswith(READ_AT_IMPORT) for k in differs)


def _zygote() -> subprocess.Popen:
    if not _ZYGOTE or _ZYGOTE[0].poll() is not None:
        started = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cli_zygote.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert started.stdout.readline().strip() == "ready"
        _ZYGOTE[:] = [started]
        _ZYGOTE_ENV.update({**os.environ, "PYTHONUNBUFFERED": "1"})
    return _ZYGOTE[0]


def _forked(args: list[str], cwd: Path, timeout: int, env: dict) -> subprocess.CompletedProcess:
    return _completed(ForkedProcess(args, cwd, env), timeout)


def _completed(process: ForkedProcess, timeout: int) -> subprocess.CompletedProcess:
    """Wait for a forked command (killed past `timeout`) and collect what it printed."""
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    out, err = process.output("stdout"), process.output("stderr")
    return subprocess.CompletedProcess(process.args, code, out, err)


def run_python(code: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` as a fork of the warm process (a test's own training script)."""
    wanted = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if os.environ.get("TUNELAB_TEST_FRESH_CHILDREN") or not _forkable(wanted):
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
    return _completed(ForkedProcess(list(args), Path(os.getcwd()), wanted, code=code), timeout)


def start_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    """A `tunelab` command started in the background, its stderr into its stdout: a fork of
    the warm process where the environment allows (a `ForkedProcess`), else a `Popen`."""
    wanted = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    if os.environ.get("TUNELAB_TEST_FRESH_CHILDREN") or not _forkable(wanted):
        return subprocess.Popen(
            [sys.executable, "-m", "tunelab", *args], cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=wanted,
        )  # fmt: skip
    return ForkedProcess(list(args), Path(cwd or os.getcwd()), wanted, merged=True)


class ForkedProcess:
    """A command run as a fork of the warm process, with the Popen methods the tests use
    (its output is in files, read once it has ended)."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict, merged: bool = False, code: str | None = None
    ):
        import json
        import tempfile

        self._folder = tempfile.TemporaryDirectory()
        files = {n: str(Path(self._folder.name) / n) for n in ("stdout", "stderr", "status")}
        if merged:
            files["stderr"] = files["stdout"]
        self.files = files
        zygote = _zygote()
        request = {"args": args, "cwd": str(cwd), "env": env, **files}
        if code is not None:
            request["code"] = code
        zygote.stdin.write(json.dumps(request) + "\n")
        zygote.stdin.flush()
        self.pid = int(zygote.stdout.readline())
        self.args = ["python", "-c", "...", *args] if code is not None else ["tunelab", *args]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        status = Path(self.files["status"])
        if self.returncode is None and status.is_file():
            self.returncode = int(status.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        import signal

        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    def output(self, name: str = "stdout") -> str:
        return Path(self.files[name]).read_text(errors="replace")

    @property
    def stdout(self):
        import io

        return io.StringIO(self.output())


@pytest.fixture(scope="session")
def thinker_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with DeepSeek-R1-distill's published chat template (its generation
    prompt opens <think>), as a model folder."""
    import json
    import shutil

    import trl

    folder = tmp_path_factory.mktemp("models") / "thinker"
    shutil.copytree(tiny_model_dir, folder)
    template = Path(trl.__file__).parent / "chat_templates" / "deepseek_r1_distill.jinja"
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = template.read_text()
    config_file.write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def pytest_sessionfinish(session, exitstatus):
    for zygote in _ZYGOTE:
        zygote.stdin.close()
        zygote.wait(timeout=30)
