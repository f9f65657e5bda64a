"""Which process this is when a launcher (torchrun, accelerate launch) starts several.

Only the main process writes the run folder and the data cache; the others train alongside
it and read what it wrote once it is there.
"""

from __future__ import annotations

import os


def rank() -> int:
    """This process's global rank (0 when not launched as one of several)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def is_local_main() -> bool:
    """The first process on this machine (on several machines, each has one)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across the launched processes (nothing to wait for in a single process)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
