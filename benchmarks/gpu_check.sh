#!/usr/bin/env bash
# The GPU checks as one command on a GPU machine, from the repository root, after
# benchmarks/gpu_carry.sh made .carry/ here (carry it along):
#     bash benchmarks/gpu_check.sh [OUT]      # OUT: where logs and results go (default /tmp/gpu)
# 1. the GPU tests (every method on CUDA, varlen attention, token budget, ZeRO where DeepSpeed
#    is installed, GRPO's engine); 2. benchmarks/gpu.py at batch 16 and the token budget, then
#    the other batches while time remains. Each part writes its log under OUT as it goes.
set -uo pipefail
out="${1:-${OUT:-/tmp/gpu}}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .carry/wheels/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TUNELAB_TEST_TOKENIZER="$PWD/.carry/tokenizer"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/device.txt"
python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$out/gpu-tests.log"
bench=(python3 benchmarks/gpu.py --tokenizer .carry/tokenizer
       --data .carry/data/alpaca_en_demo.json --steps 30 --warmup 10)
"${bench[@]}" --batches 16 --out "$out/gpu-b16.json" --doc "$out/speed-gpu-b16.md" \
  2>&1 | tee "$out/gpu-b16.log"
"${bench[@]}" --batches 8,32 --budget 0 --memory-7b --out "$out/gpu-b8-b32.json" \
  --doc "$out/speed-gpu-b8-b32.md" 2>&1 | tee "$out/gpu-b8-b32.log"
