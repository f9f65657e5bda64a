"""Preprocessing speed: samples per second rendered by tunelab, cold and from the cache.

    python benchmarks/preprocess.py                       # gsm8k train + alpaca_zh_demo
    python benchmarks/preprocess.py --data FILE --json    # any file, machine-readable

Uses the built-in model's tokenizer and chat template. Cold runs use an empty cache folder;
cached runs read what the cold run wrote. Each figure is the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = [SHARED / "gsm8k" / "train.jsonl", SHARED / "llamafactory" / "alpaca_zh_demo.json"]


def measure(path: Path, tokenizer, template: str, repeat: int) -> dict:
    from tunelab.data.pipeline import render_split
    from tunelab.recipe import DataConfig

    config = DataConfig(train=[str(path)])
    cold, cached, count = [], [], 0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["TUNELAB_CACHE"] = cache
            start = time.perf_counter()
            split = render_split(config, None, "train", tokenizer, template, use_cache=True)
            cold.append(time.perf_counter() - start)
            count = len(split.samples)
            start = time.perf_counter()
            again = render_split(config, None, "train", tokenizer, template, use_cache=True)
            cached.append(time.perf_counter() - start)
            assert again.from_cache and len(again.samples) == count
    return {
        "data": str(path),
        "samples": count,
        "cold_seconds": round(min(cold), 3),
        "cold_samples_per_second": round(count / min(cold), 1),
        "cached_seconds": round(min(cached), 3),
        "cached_samples_per_second": round(count / min(cached), 1),
        "speedup": round(min(cold) / min(cached), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="data file (repeatable)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from tunelab.models.load import load_tokenizer
    from tunelab.models.sources import resolve_model
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    results = [
        measure(p, tokenizer, tokenizer.chat_template, args.repeat)
        for p in args.data or DEFAULT_DATA
    ]
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(
        f"{'data':40} {'samples':>8} {'cold s':>8} {'cold/s':>9} {'cached s':>9} {'cached/s':>10}"
    )
    for r in results:
        print(
            f"{Path(r['data']).name:40} {r['samples']:>8} {r['cold_seconds']:>8} "
            f"{r['cold_samples_per_second']:>9} {r['cached_seconds']:>9} {r['cached_samples_per_second']:>10}"
        )


if __name__ == "__main__":
    main()
