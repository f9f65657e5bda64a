"""A TrainerCallback that every tool in the speed benchmark runs with, so all are timed alike.

It records wall-clock times (seconds since the parent spawned the process, taken from
BENCH_SPAWNED), the optimizer steps, the non-padding input tokens the Trainer counted and the
logged losses, and writes them as JSON to BENCH_RESULT when training ends. It depends only on
transformers, which every tool brings in its own environment.
"""

from __future__ import annotations

import json
import os
import time

from transformers import TrainerCallback


def peak_rss_bytes() -> int | None:
    """The process's own peak RSS (VmHWM; getrusage's ru_maxrss is inherited across exec)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def since_spawn() -> float:
    return time.time() - float(os.environ["BENCH_SPAWNED"])


class Probe(TrainerCallback):
    def __init__(self):
        self.record = {"losses": []}

    def on_train_begin(self, args, state, control, **kwargs):
        self.record["train_begin"] = since_spawn()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.record["first_step_end"] = since_spawn()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.record["losses"].append(float(logs["loss"]))

    def on_train_end(self, args, state, control, **kwargs):
        self.record.update(
            peak_rss_bytes=peak_rss_bytes(),
            train_end=since_spawn(),
            steps=state.global_step,
            tokens=int(state.num_input_tokens_seen),
        )
        with open(os.environ["BENCH_RESULT"], "w", encoding="utf-8") as handle:
            json.dump(self.record, handle)
