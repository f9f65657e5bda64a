"""Preprocessing speed: samples per second rendered by tunelab, cold and from the cache, and
LLaMA-Factory's own preprocessing of the same files in the same run.

    python benchmarks/preprocess.py                       # gsm8k train + alpaca_zh_demo
    python benchmarks/preprocess.py --data FILE --json    # any file, machine-readable
    python benchmarks/preprocess.py --against /tmp/old/src   # and another tunelab's code:
        # git worktree add /tmp/old <commit>; it runs in its own process, file by file
    python benchmarks/preprocess.py --preference          # DPO and KTO pairs (nothing cached)

Uses the built-in model's tokenizer and chat template. Cold runs use an empty cache folder;
cached runs read what the cold run wrote. Each figure is the best of --repeat runs. Neither
side counts its imports or loading the tokenizer. LLaMA-Factory (installed by
benchmarks/setup_peers.sh) runs its get_dataset for the sft stage in its own environment, with
its default of one preprocessing process and with as many as this machine's cores; a file
whose columns are not alpaca's is given them (gsm8k: question, answer).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
PEER = HERE / ".peers" / "llamafactory" / "bin" / "python"
COLUMNS = {"train.jsonl": {"prompt": "question", "response": "answer"}}
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


PAIRS = [("dpo_en_demo", "dpo"), ("dpo_zh_demo", "dpo"), ("kto_en_demo", "kto")]


def measure_pairs(name: str, objective: str, tokenizer, repeat: int) -> dict:
    """Preference rows read, checked, rendered and cut per second (LLaMA-Factory's registry)."""
    from tunelab.data.preference_pipeline import prepare_preferences
    from tunelab.recipe import DataConfig

    config = DataConfig(train=[name], registry=str(SHARED / "llamafactory" / "dataset_info.json"))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        prepared = prepare_preferences(
            config, None, tokenizer, tokenizer.chat_template, 0, objective
        )
        times.append(time.perf_counter() - start)
    rows = len(prepared.train)
    return {"data": name, "objective": objective, "rows": rows, "seconds": round(min(times), 3),
            "rows_per_second": round(rows / min(times), 1)}  # fmt: skip


def pairs_table(args, tokenizer, model) -> list[dict]:
    registry = json.loads((SHARED / "llamafactory" / "dataset_info.json").read_text())
    results = []
    for name, objective in PAIRS:
        ours = {"tool": "tunelab", **measure_pairs(name, objective, tokenizer, args.repeat)}
        results.append(ours)
        if args.against:
            results.append(measure_other(args.against, name, args.repeat, ["--preference"]))
        if not args.no_peers:
            results += peer_pairs(registry[name], name, objective, model, args.repeat, ours)
    return results


def peer_pairs(entry: dict, name: str, objective: str, model, repeat: int, ours: dict) -> list:
    """LLaMA-Factory's preprocessing of the same registry entry for its dpo (or kto) stage."""
    extra = {"stage": objective, "entry": {k: v for k, v in entry.items() if k != "file_name"}}
    path = SHARED / "llamafactory" / entry["file_name"]
    peer = measure_llamafactory(path, model.folder, 1, repeat, extra)
    if not peer or "error" in peer:
        if peer:
            print(f"llamafactory failed on {name}: {peer['error']}", file=sys.stderr)
        return []
    rows = peer["samples"]
    return [{"data": name, "tool": peer["tool"], "rows": rows, "seconds": peer["cold_seconds"],
             "rows_per_second": round(rows / peer["cold_seconds"], 1),
             "tunelab_speedup": round(peer["cold_seconds"] / ours["seconds"], 2)}]  # fmt: skip


def measure_llamafactory(
    path: Path, model: Path, workers: int, repeat: int, extra: dict | None = None
) -> dict | None:
    """LLaMA-Factory's cold and cached preprocessing of `path` (None when it is not installed);
    `extra`: its stage and registry entry, for preference rows."""
    if not PEER.exists():
        return None
    best: dict = {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as workdir:
            settings = {
                "model": str(model),
                "data": str(path),
                "columns": COLUMNS.get(path.name),
                "workers": workers if workers > 1 else None,
                "workdir": workdir,
                **(extra or {}),
            }
            (Path(workdir) / "settings.json").write_text(json.dumps(settings))
            done = subprocess.run(
                [str(PEER), str(HERE / "speed" / "preprocess_llamafactory.py"), "settings.json"],
                cwd=workdir,
                env={**os.environ, "PYTHONPATH": str(HERE / "speed")},
                capture_output=True,
                text=True,
            )
            if done.returncode:
                return {"error": done.stderr.strip().splitlines()[-1]}
            result = json.loads(done.stdout.strip().splitlines()[-1])
        if not best or result["cold_seconds"] < best["cold_seconds"]:
            best = result
    return {
        "tool": f"llamafactory ({workers} process{'es' if workers > 1 else ''})",
        "samples": best["samples"],
        "cold_seconds": round(best["cold_seconds"], 3),
        "cold_samples_per_second": round(best["samples"] / best["cold_seconds"], 1),
        "cached_seconds": round(best["cached_seconds"], 3),
        "cached_samples_per_second": round(best["samples"] / best["cached_seconds"], 1),
    }


def measure_other(src: Path, path, repeat: int, mode: list[str] | None = None) -> dict:
    """The same measurement with the tunelab in `src` (its own process, nothing else run)."""
    done = subprocess.run(
        [sys.executable, __file__, "--data", str(path), "--repeat", str(repeat)]
        + ["--json", "--no-peers", *(mode or [])],
        env={**os.environ, "PYTHONPATH": str(src.resolve())},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"tunelab at {src} failed on {Path(path).name}:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout)[0], "tool": f"tunelab at {src}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="data file (repeatable)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--against", type=Path, help="another tunelab's src folder to measure")
    parser.add_argument("--no-peers", action="store_true", help="tunelab only")
    parser.add_argument("--preference", action="store_true", help="DPO/KTO pairs instead")
    args = parser.parse_args()
    if args.against and not (args.against / "tunelab" / "__init__.py").is_file():
        parser.error(f"--against {args.against}: no tunelab package there; give a src folder")
    from tunelab.models.load import load_tokenizer
    from tunelab.models.sources import resolve_model
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    model = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(model)
    if args.preference:
        show_pairs(args, tokenizer, model)
        return
    results = []
    for path in args.data or DEFAULT_DATA:
        ours = {"tool": "tunelab", **measure(path, tokenizer, tokenizer.chat_template, args.repeat)}
        results.append(ours)
        if args.against:
            results.append(measure_other(args.against, path, args.repeat))
        for workers in [] if args.no_peers else sorted({1, os.cpu_count() or 1}):
            peer = measure_llamafactory(path, model.folder, workers, args.repeat)
            if peer and "error" not in peer:
                peer["data"] = str(path)
                peer["tunelab_cold_speedup"] = round(peer["cold_seconds"] / ours["cold_seconds"], 2)
                results.append(peer)
            elif peer:
                print(f"llamafactory failed on {path.name}: {peer['error']}", file=sys.stderr)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(
        f"{'data':22} {'tool':28} {'samples':>8} {'cold s':>8} {'cold/s':>9} {'cached s':>9} "
        f"{'cached/s':>10}"
    )
    for r in results:
        print(
            f"{Path(r['data']).name:22} {r['tool']:28} {r['samples']:>8} {r['cold_seconds']:>8} "
            f"{r['cold_samples_per_second']:>9} {r['cached_seconds']:>9} "
            f"{r['cached_samples_per_second']:>10}"
        )


def show_pairs(args, tokenizer, model) -> None:
    if args.data:  # one entry, for --against's own process
        name = str(args.data[0])
        objective = dict(PAIRS)[name]
        results = [{"tool": "tunelab", **measure_pairs(name, objective, tokenizer, args.repeat)}]
    else:
        results = pairs_table(args, tokenizer, model)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'data':14} {'tool':28} {'rows':>6} {'seconds':>8} {'rows/s':>8}")
    for r in results:
        print(
            f"{r['data']:14} {r['tool']:28} {r['rows']:>6} {r['seconds']:>8} {r['rows_per_second']:>8}"
        )


if __name__ == "__main__":
    main()
