"""Peak memory of the run: max allocated on a GPU, peak resident set size on a CPU."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory this process has held on its training device."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux, VmHWM belongs to the process's own address space, whereas getrusage's ru_maxrss
    survives exec: a process started from a large parent would report the parent's size.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(peak if sys.platform == "darwin" else peak * 1024)
