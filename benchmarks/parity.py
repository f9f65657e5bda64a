"""The parity gate's figures on the built-in model: a short identity LoRA tune, exported as
GGUF in each format, read back by llama.cpp (when llama-cpp-python is installed) and by
transformers; prints, per format and reader, each probe's largest logit difference relative
to the logits' scale and whether the greedy answers agree. These figures set
`tunelab.exporters.parity.TOLERANCE`.

    python benchmarks/parity.py [--out DIR] [f16 bf16 q8_0 q4_0]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml

import tunelab
from tunelab.exporters import parity, readers
from tunelab.exporters.gate import Gate
from tunelab.run import RunFolder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def tuned(root: Path) -> Path:
    run = root / "run"
    if not (run / "summary.json").exists():
        recipe = yaml.safe_load((EXAMPLES / "identity.yaml").read_text(encoding="utf-8"))
        recipe["train"] = {**recipe.get("train", {}), "max_steps": 4, "tensorboard": False}
        recipe["output"] = str(run)
        (root / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        os.chdir(EXAMPLES)  # the recipe's data paths are relative to it
        tunelab.train(str(root / "recipe.yaml"))
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("quants", nargs="*", default=["f16", "bf16", "q8_0", "q4_0"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tunelab-parity"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run = tuned(args.out.resolve())
    gate = Gate(RunFolder.open(run).trained())
    gate._reference()
    makers = {"transformers": lambda f: readers.TransformersGgufReader(f, gate.system)}
    if readers.llama_cpp_installed():
        makers["llama.cpp"] = lambda f: readers.LlamaCppReader(f, gate.tokenizer, gate.system)
    for quant in args.quants:
        file = args.out / f"model-{quant}.gguf"
        if not file.exists():
            tunelab.export(run, file, to="gguf", quant=quant, verify=False)
        for name, make in makers.items():
            started = time.perf_counter()
            report = parity.compare(gate.rows, make(file), gate.stops, quant)
            gaps = [round(p.get("relative", float("nan")), 4) for p in report["probes"]]
            print(
                f"{quant:5s} {name:12s} relative {gaps} greedy "
                f"{[p.get('greedy') for p in report['probes']]} prompts identical "
                f"{all(p['prompt_identical'] for p in report['probes'])} stops "
                f"{report['stop_tokens']['same']} ({time.perf_counter() - started:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
