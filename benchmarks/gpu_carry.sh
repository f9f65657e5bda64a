#!/usr/bin/env bash
# Gather, into .carry/ (git-ignored), what a GPU machine without network needs to run
# benchmarks/gpu_check.sh: Python 3.12 wheels of the packages its image lacks (at the versions
# this environment runs), the built-in model's tokenizer files (the models themselves are built
# there from a config), and the benchmark's data file. Run here, with network to the registry:
#     benchmarks/gpu_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.carry/" .git/info/exclude 2>/dev/null || echo "/.carry/" >> .git/info/exclude
rm -rf .carry && mkdir -p .carry/wheels .carry/tokenizer .carry/data
# what the GPU image lacks (it has torch, transformers, peft, accelerate, triton, pyarrow, ...)
names=(pydantic pydantic-core annotated-types typing-inspection gguf platformdirs datasets dill
       multiprocess trl hjson)
pins=$(.venv/bin/python - "${names[@]}" <<'PY'
import importlib.metadata, sys
print(" ".join(f"{n}=={importlib.metadata.version(n)}" for n in sys.argv[1:]))
PY
)
platforms=()
for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
# shellcheck disable=SC2086
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 -d .carry/wheels $pins
# DeepSpeed publishes no wheel: build its pure-Python one (ops compile on first use there)
.venv/bin/python -m pip wheel -q --no-deps -w .carry/wheels \
  "deepspeed==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("deepspeed"))')"
.venv/bin/python - <<'PY'
from tunelab.models.load import load_tokenizer
from tunelab.models.sources import resolve_model

load_tokenizer(resolve_model("smollm2-135m-instruct")).save_pretrained(".carry/tokenizer")
PY
cp ../shared/data/llamafactory/alpaca_en_demo.json .carry/data/
du -sh .carry
