"""llama.cpp's own HF-to-GGUF converter, run on a merged HF folder.

The converter knows each architecture llama.cpp runs: tensor names and layouts (rotary
permutations, fused or split projections, Mamba's A and conv shapes, norm offsets), the
hyperparameters and the tokenizer as llama.cpp reads them. Writing that again would drift
from llama.cpp with every release, so tunelab runs the converter itself.

Where it comes from: llama-cpp-python's source distribution on PyPI vendors llama.cpp whole.
tunelab takes the converter (`convert_hf_to_gguf.py`, `conversion/`, `gguf-py/`) out of it
once into its cache (`setup.sh` does this, or the first GGUF export), pinned to the version
below; `TUNELAB_LLAMA_CPP` may name a llama.cpp checkout to use instead. The converter runs
in a child process of this Python (it needs torch, transformers, numpy and sentencepiece).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.locations import cache_dir

LLAMA_CPP_PYTHON = "0.3.36"
SCRIPT = "convert_hf_to_gguf.py"
MEMBERS = (SCRIPT, "conversion/", "gguf-py/", "LICENSE")
OUT_TYPES = ("f32", "f16", "bf16", "q8_0")


def converter_dir(fetch: bool = True) -> Path:
    """The folder holding llama.cpp's converter (fetched into the cache if missing)."""
    named = os.environ.get("TUNELAB_LLAMA_CPP")
    if named:
        if not (Path(named) / SCRIPT).is_file():
            raise TunelabError(
                f"TUNELAB_LLAMA_CPP={named} has no {SCRIPT}; point it at a llama.cpp checkout "
                "or unset it."
            )
        return Path(named)
    folder = cache_dir() / f"llama.cpp-converter-{LLAMA_CPP_PYTHON}"
    if (folder / SCRIPT).is_file():
        return folder
    if not fetch:
        raise TunelabError(f"llama.cpp's converter is not in {folder}.")
    return fetch_converter(folder)


def fetch_converter(folder: Path) -> Path:
    """Take the converter out of llama-cpp-python's source distribution, into `folder`."""
    with tempfile.TemporaryDirectory(dir=folder.parent if folder.parent.exists() else None) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            raise TunelabError(
                f"GGUF export runs llama.cpp's converter, fetched once from PyPI "
                f"(llama-cpp-python {LLAMA_CPP_PYTHON} source), and the download failed "
                f"({last[:200]}); connect to PyPI once, or set TUNELAB_LLAMA_CPP to a llama.cpp "
                "checkout."
            )
        staged = Path(tmp) / "converter"
        _extract(archives[0], staged)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staged, folder)
    return folder


def _extract(archive: Path, into: Path) -> None:
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inner = member.name.removeprefix(prefix)
            if member.name == inner or not inner.startswith(MEMBERS):
                continue
            if not (member.isfile() or member.isdir()) or ".." in Path(inner).parts:
                continue
            member.name = inner
            tar.extract(member, into, filter="data")


def convert(folder: Path, out: Path, out_type: str, name: str | None = None) -> None:
    """Write the HF model in `folder` as the GGUF file `out` with llama.cpp's converter
    (`name` is the file's general.name: llama.cpp tokenizes some families, Phi-3's, by it).

    A saved model never holds multi-token-prediction layers (transformers drops them), so a
    converter that wants them (Qwen3-Next, Qwen3.5) is told `--no-mtp`."""
    script = converter_dir() / SCRIPT
    command = [
        sys.executable,
        str(script),
        str(folder),
        "--outfile",
        str(out),
        "--outtype",
        out_type,
        *(["--model-name", name] if name else []),
    ]
    done = _run(command)
    if done.returncode != 0 and "mtp" in done.stderr:
        done = _run([*command, "--no-mtp"])
    if done.returncode != 0:
        raise TunelabError(
            f"llama.cpp's converter could not write this model as GGUF: {_reason(done.stderr)}; "
            "export an HF folder instead (without --to)."
        )


def _run(command: list[str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(command, capture_output=True, text=True, env=environment)


def _reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or line.startswith("ERROR")]
    return ((errors or lines or ["no message"])[-1])[:300]
