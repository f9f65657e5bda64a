"""The TrainerCallback every tool of the GPU benchmark trains with, so all are measured alike.

Per optimizer step: the wall time at its end and the input tokens the Trainer counted so far
(without padding); the logged losses; at the end, the peak memory (CUDA: max allocated; CPU: the
process's peak RSS). `guarded` runs the training and writes the record to BENCH_RESULT, with
`oom: true` when the card ran out of memory, so that an OOM is a result and not a crash. It
depends only on transformers and torch, which every tool brings.
"""

from __future__ import annotations

import json
import os
import time

import torch
from transformers import TrainerCallback


def peak_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class GpuProbe(TrainerCallback):
    def __init__(self):
        self.record = {"step_times": [], "step_tokens": [], "losses": []}

    def on_train_begin(self, args, state, control, **kwargs):
        self._sync()
        self.record["train_begin"] = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.record["step_times"].append(time.perf_counter())
        self.record["step_tokens"].append(int(state.num_input_tokens_seen))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.record["losses"].append(float(logs["loss"]))

    @staticmethod
    def _sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()


def guarded(train, probe: GpuProbe) -> None:
    """Run `train()` (which may return what the tool itself says of the run); write the
    probe's record, or the OOM, to BENCH_RESULT."""
    record = probe.record
    try:
        said = train()
        record.update(said if isinstance(said, dict) else {})
    except torch.OutOfMemoryError:
        record["oom"] = True
    record["peak_bytes"] = peak_bytes()
    with open(os.environ["BENCH_RESULT"], "w", encoding="utf-8") as handle:
        json.dump(record, handle)
