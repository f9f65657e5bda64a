"""Read record files, keeping each record's location for error messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tunelab.data.conversation import Location, RowError
from tunelab.errors import TunelabError


def read_records(path: Path) -> Iterator[tuple[Location, object]]:
    """Yield (location, record) from a .json array or a .jsonl file.

    A line of broken JSON in a .jsonl file yields a RowError in place of the record, so the
    caller can count it with the other bad rows instead of stopping at the first.
    """
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        known = ", ".join(sorted(_READERS))
        raise TunelabError(f"{path}: unsupported data file type `{suffix}`; use one of {known}.")
    yield from reader(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TunelabError(
            f"{path}: byte {exc.start} is not valid UTF-8; re-save the file as UTF-8."
        ) from None


def _read_json(path: Path) -> Iterator[tuple[Location, object]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TunelabError(
            f"{path}:{exc.lineno}: broken JSON ({exc.msg} at column {exc.colno}); fix that line."
        ) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        # {"data": [...]} style wrappers
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise TunelabError(
            f"{path}: expected a JSON array of records, found {type(data).__name__}."
        )
    for index, record in enumerate(data):
        yield Location(str(path), index=index), record


def _read_jsonl(path: Path) -> Iterator[tuple[Location, object]]:
    text = _read_text(path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        location = Location(str(path), line=number)
        try:
            yield location, json.loads(line)
        except json.JSONDecodeError as exc:
            yield (
                location,
                RowError(location, None, f"broken JSON ({exc.msg} at column {exc.colno})"),
            )


_READERS = {".json": _read_json, ".jsonl": _read_jsonl}
