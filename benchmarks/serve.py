"""Serving throughput and latency: `tunelab serve` against `transformers serve`, in one run.

Each server is started as a fresh process on a free local port and serves the same model (the
built-in SmolLM2-135M-Instruct as an HF folder, or --model). For 1, 4 and 8 concurrent
clients, each client (a thread with its own `openai` client) sends --requests streamed chat
requests one after the other, every one with a different prompt, greedy, at most
--max-tokens tokens. Reported per server and concurrency:

- requests/s and generated tokens/s (completion tokens as the server's usage counts them),
  over the wall time of the whole round;
- p50 and p95 latency (request sent -> last chunk) and p50 time to first token.

Servers run one at a time with nothing else running; the ratios are against `transformers
serve` (plain) in the same run.

    python benchmarks/serve.py --clients 1,4,8 --requests 4 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
TOPICS = [
    "the sea", "a mountain", "bread", "a city at night", "rain", "a library", "winter",
    "a garden", "the moon", "a train", "coffee", "a river", "an old house", "the desert",
    "a forest", "music", "a market", "snow", "a bridge", "a lighthouse", "autumn", "a clock",
    "the wind", "a violin", "a harbour", "a kite", "a candle", "a meadow", "a storm",
    "a teacup", "a map", "a lantern",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(name: str, model: str, port: int) -> list[str]:
    if name == "tunelab":
        return [str(VENV_BIN / "tunelab"), "serve", model, "--port", str(port)]
    command = [str(VENV_BIN / "transformers"), "serve", model, "--port", str(port)]
    if name == "transformers-cb":
        command.append("--continuous-batching")
    return command


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not start")


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first = None
    tokens = 0
    pieces = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            first = first or time.perf_counter()
        if getattr(chunk, "usage", None):
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens or pieces}


def round_of(port: int, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    results: list[dict] = []
    failures: list[Exception] = []
    lock = threading.Lock()

    def client_loop(index: int):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        for r in range(requests):
            topic = TOPICS[(index * requests + r) % len(TOPICS)]
            prompt = f"Write three sentences about {topic}."
            try:
                outcome = one_request(client, model, prompt, max_tokens)
            except Exception as exc:  # reported after the round
                failures.append(exc)
                return
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"a request failed: {failures[0]}")
    latencies = sorted(r["latency"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 3),
        "generated_tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "p50_latency_s": round(statistics.median(latencies), 2),
        "p95_latency_s": round(latencies[max(0, round(0.95 * len(latencies)) - 1)], 2),
        "p50_ttft_s": round(statistics.median(r["ttft"] for r in results), 3),
    }


def bench_server(name: str, model: str, args) -> list[dict] | None:
    port = free_port()
    served = Path(model).name if name == "tunelab" else model  # the name each server knows
    log = open(args.workdir / f"{name}.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    process = subprocess.Popen(server_command(name, model, port), stdout=log, stderr=log, env=env)
    try:
        wait_ready(port, process)
        round_of(port, served, 1, 1, 8)  # warm-up
        rounds = []
        for clients in args.clients:
            result = round_of(port, served, clients, args.requests, args.max_tokens)
            print(f"{name:16} {json.dumps(result)}", flush=True)
            rounds.append(result)
        return rounds
    except RuntimeError as exc:
        print(f"{name}: {exc}; see {args.workdir / (name + '.log')}", flush=True)
        return None
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def table(results: dict[str, list[dict]]) -> str:
    peer = results.get("transformers") or []
    lines = [
        "| server | clients | req/s | gen tok/s | vs transformers | p50 latency | p95 | p50 TTFT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rounds in results.items():
        for r in rounds or []:
            base = next((p for p in peer if p["clients"] == r["clients"]), None)
            ratio = (
                f"{r['generated_tokens_per_s'] / base['generated_tokens_per_s']:.2f}x"
                if base
                else "-"
            )
            lines.append(
                f"| {name} | {r['clients']} | {r['requests_per_s']} | "
                f"{r['generated_tokens_per_s']} | {ratio} | {r['p50_latency_s']} s | "
                f"{r['p95_latency_s']} s | {r['p50_ttft_s']} s |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: the built-in model's HF folder)")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--servers", default="tunelab,transformers,transformers-cb", help="comma-separated"
    )
    parser.add_argument("--workdir", type=Path, default=HERE / ".serve-work")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve-cpu.json")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from tunelab.models.builtin import builtin_model_dir

        args.model = str(builtin_model_dir())
    results = {name: bench_server(name, args.model, args) for name in args.servers.split(",")}
    one = next((r for r in results.get("tunelab") or [] if r["clients"] == 1), None)
    scaling = {
        r["clients"]: round(r["generated_tokens_per_s"] / one["generated_tokens_per_s"], 2)
        for r in results.get("tunelab") or []
        if one
    }
    summary = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": results,
        "tunelab_scaling_vs_one_client": scaling,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(table(results))
    print(f"tunelab aggregate generated tokens/s vs one client: {scaling}")


if __name__ == "__main__":
    main()
