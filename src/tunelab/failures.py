"""How a failure reaches the user: one `error:` line for what they can fix, else the log file.

A user's mistake is a `TunelabError`, raised where it is found; an operating-system error on
their files (permissions, a full disk) is told the same way. Anything else is a bug: its
traceback goes to a log file and the console says where, with exit code 1.
"""

from __future__ import annotations

import errno
import os
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tunelab.errors import TunelabError
from tunelab.ranks import is_local_main

NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NO_SPACE_WORDS = ("no space left", "file too large", "disk quota", "os error 28", "os error 27",
                  "failed writing file")  # the last: torch's writer, which says no more  # fmt: skip
NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


PEER_LOST = 3  # the exit code of a process whose peers stopped first (they tell why)
LAUNCHED = "TUNELAB_LAUNCHED"  # set in the processes `--nproc N` starts (its launcher tells)
PEER_WORDS = ("connection closed by peer", "connection reset by peer", "broken pipe",
              "gloo", "nccl", "socket timeout")  # fmt: skip


def peer_lost(exc: BaseException) -> bool:
    """Whether a failure is this process losing the others of a distributed run (one of them
    died or stopped): a collective that could not complete."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in PEER_WORDS)


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether a failure (or what caused it) is a full disk or a file-size limit; libraries
    that write in Rust or C++ report it in their own exception types."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if any(word in str(exc).lower() for word in NO_SPACE_WORDS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def report_failure(exc: BaseException, console: Console) -> int | None:
    """Print the failure and return the exit code; None for exits that are not failures."""
    if isinstance(exc, SystemExit | GeneratorExit):
        return None
    if isinstance(exc, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]")
        return 130
    if isinstance(exc, TunelabError):
        if not is_local_main():  # each process meets the same mistake; one per machine tells it
            return exc.exit_code
        return _say(console, str(exc), exc.exit_code)
    if is_disk_full(exc):
        filename = getattr(exc, "filename", None)
        where = Path(filename).parent if filename else "the output folder"
        return _say(console, f"no space left in {where}; free some space and run again.", 2)
    if isinstance(exc, OSError) and exc.errno in NOT_ALLOWED and exc.filename:
        return _say(
            console, f"{exc.filename}: {exc.strerror.lower()}; fix its permissions or the path.", 2
        )
    if peer_lost(exc):  # another process stopped first; it (or the launcher) says why
        if os.environ.get(LAUNCHED) != "1":
            from tunelab.ranks import rank

            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            _say(console, f"process {rank()} lost contact with the other processes ({first}); "
                 "another one stopped first: its message says why.", 1)  # fmt: skip
        return PEER_LOST
    log = write_crash_log(exc)
    console.print(
        f"[bold red]internal error:[/] {escape(type(exc).__name__)}: "
        f"{escape(str(exc)[:300])}\nThis is a bug in tunelab; the traceback is in {log}.",
        highlight=False,
        soft_wrap=True,
    )
    return 1


def _say(console: Console, message: str, code: int) -> int:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return code


def write_crash_log(exc: BaseException) -> Path:
    """The traceback, in the cache folder's logs (or the temp folder if that cannot be written)."""
    from tunelab.locations import cache_dir

    text = "".join(traceback.format_exception(exc))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (cache_dir() / "logs", Path("/tmp")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue
    return Path(name)
