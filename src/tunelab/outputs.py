"""The rule for every file and folder tunelab writes outside a run folder: exports, reports,
evaluation results, plots, converted data.

1. A path that does not exist is written: staged beside it under a hidden name that holds the
   writer's PID, then moved into place by a rename that replaces nothing. A file that appeared
   there meanwhile is kept, and the command fails saying so.
2. A path that exists is replaced only where it provably came from the same kind of tunelab
   output: listed with its SHA-256 in its folder's `.tunelab-outputs.json` (reports, results,
   plots), or marked inside (an export's `tunelab_export.json`, a GGUF file's metadata).
   It is replaced atomically: the new one is renamed into place, the old one removed after.
3. Anything else is refused in one sentence naming the path and what to do.
4. A staged path whose writer is gone (killed mid-write) is removed by the next command that
   writes beside it.

Run folders have their own marker and lock (`tunelab.run`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from tunelab.errors import TunelabError

LEDGER = ".tunelab-outputs.json"
STAGED = re.compile(r"^\.(?P<name>.+)\.(?:tunelab|export|old)-(?P<pid>\d+)$")


def staging_path(target: Path) -> Path:
    """Where `target` is written before it is moved into place (removes dead writers' ones)."""
    sweep_leftovers(target)
    staged = target.with_name(f".{target.name}.tunelab-{os.getpid()}")
    _remove(staged)
    return staged


def sweep_leftovers(target: Path) -> list[Path]:
    """Remove what a killed writer left beside `target` (staged or set-aside copies whose PID
    is no longer running); returns what was removed."""
    removed = []
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".{glob_escape(target.name)}.*-*"):
        match = STAGED.match(path.name)
        if match and match["name"] == target.name and not _alive(int(match["pid"])):
            _remove(path)
            removed.append(path)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def place(staged: Path, target: Path, replaces: bool) -> None:
    """Move `staged` to `target`. `replaces`: `target` was checked to be tunelab's own output
    of the same kind and may be replaced; otherwise nothing there is ever replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if replaces and target.exists():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}")
        _remove(aside)
        os.replace(target, aside)
        os.replace(staged, target)
        _remove(aside)
        return
    try:
        _rename_no_replace(staged, target)
    except FileExistsError:
        _remove(staged)
        raise TunelabError(
            f"{target} appeared while tunelab was writing it; it was left as it is and nothing "
            "was written there. Choose another path or move that one away."
        ) from None


def _rename_no_replace(staged: Path, target: Path) -> None:
    if staged.is_dir():
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise FileExistsError(target)
        os.rename(staged, target)  # fails on a folder that filled meanwhile
        return
    os.link(staged, target)  # fails if anything is at target
    staged.unlink()


def is_recorded(path: Path, kind: str) -> bool:
    """Whether `path` is, byte for byte, a `kind` output tunelab recorded writing."""
    entry = _read_ledger(path.parent).get(path.name)
    if not isinstance(entry, dict) or entry.get("kind") != kind or not path.is_file():
        return False
    return entry.get("sha256") == _sha256(path)


def check_target(path: Path, kind: str, ours: Callable[[Path], bool] | None = None) -> bool:
    """Whether writing `path` replaces tunelab's earlier output (True) or makes it (False);
    anything else there is refused. `ours` proves a marked output (default: the ledger)."""
    if not path.exists() and not path.is_symlink():
        return False
    if (ours or (lambda p: is_recorded(p, kind)))(path):
        return True
    what = "folder" if path.is_dir() else "file"
    article = "an" if kind[:1] in "aeiou" else "a"
    raise TunelabError(
        f"{path} exists and is not {article} {kind} tunelab wrote (a {what} of yours, or changed "
        "since); nothing was written. Choose another path or move it away."
    )


def check_files(folder: Path, names, kind: str) -> dict[str, bool]:
    """`check_target` for each of `names` in `folder` (before the work that makes them)."""
    if folder.exists() and not folder.is_dir():
        raise TunelabError(f"{folder} is a file, not a folder; choose a folder to write {kind} to.")
    return {name: check_target(folder / name, kind) for name in names}


def write_files(folder: Path, files: dict[str, str | bytes], kind: str) -> list[Path]:
    """Write each named file into `folder` by the rule, all checked before any is written,
    and record them in the folder's ledger."""
    targets = {name: folder / name for name in files}
    replaces = check_files(folder, files, kind)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with staged_file(targets[name], replaces[name]) as staged:
            payload = data.encode("utf-8") if isinstance(data, str) else data
            staged.write_bytes(payload)
        _record(targets[name], kind)
    return list(targets.values())


@contextlib.contextmanager
def staged_file(target: Path, replaces: bool) -> Iterator[Path]:
    """A staging path for `target`, placed when the block ends, removed if it fails."""
    staged = staging_path(target)
    try:
        yield staged
    except BaseException:
        _remove(staged)
        raise
    place(staged, target, replaces)


def write_file(path: Path, data: str | bytes | Callable[[Path], None], kind: str) -> Path:
    """One file by the rule: `data`, or written by `data(staged_path)`; recorded as `kind`."""
    replaces = check_target(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path, replaces) as staged:
        if callable(data):
            data(staged)
        else:
            staged.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    _record(path, kind)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_ledger(folder: Path) -> dict:
    try:
        data = json.loads((folder / LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(path: Path, kind: str) -> None:
    ledger = _read_ledger(path.parent)
    ledger[path.name] = {"kind": kind, "sha256": _sha256(path)}
    ledger_path = path.parent / LEDGER
    staged = staging_path(ledger_path)
    staged.write_text(json.dumps(ledger, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(staged, ledger_path)
