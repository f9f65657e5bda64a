"""Read record files, keeping each record's location for error messages.

A reader yields (location, record) pairs. A record that cannot be read (a line of broken
JSON, bytes that are not UTF-8, a JSON escape of half a UTF-16 pair) is yielded as a RowError
in its place, so the caller counts it with the other bad rows instead of stopping at the first.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from tunelab.data.conversation import Location, RowError
from tunelab.errors import TunelabError


def read_records(path: Path) -> Iterator[tuple[Location, object]]:
    """Yield (location, record) from a .json, .jsonl, .csv, .parquet or .arrow file."""
    if not path.is_file():
        raise TunelabError(f"data file {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        known = ", ".join(sorted(_READERS))
        raise TunelabError(f"{path}: unsupported data file type `{suffix}`; use one of {known}.")
    yield from reader(path)


# A JSON escape of a UTF-16 surrogate; json.loads joins a pair into one character, so one left
# in a string after loading is half a pair: no tokenizer takes it.
ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _readable(location: Location, record: object, escapes: bool) -> object:
    """The record, or a RowError if a string in it holds half a UTF-16 pair (`escapes`: the
    file has surrogate escapes at all; without them no record is walked)."""
    found = surrogate_at(record) if escapes else None
    if found is None:
        return record
    where, char = found
    return RowError(location, where or None, f"{half_pair(char)}; fix or remove that escape")


def half_pair(char: str) -> str:
    """What is wrong with a lone surrogate, in words."""
    return (
        f"holds a lone UTF-16 surrogate (\\u{ord(char):04x}: half of an emoji or a broken "
        "escape), which is not text a tokenizer can read"
    )


def surrogate_at(value: object, where: str = "") -> tuple[str, str] | None:
    """(where, the character) of the first lone surrogate in a JSON-like value, or None;
    `where` as `conversations[1].value`."""
    if isinstance(value, str):
        found = LONE_SURROGATE.search(value)
        return (where, found.group(0)) if found else None
    items = value.items() if isinstance(value, dict) else ()
    items = enumerate(value) if isinstance(value, list) else items
    for key, item in items:
        path = (
            f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        )
        found = surrogate_at(item, path)
        if found:
            return found
    return None


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TunelabError(
            f"{path}:{line}: byte {exc.start} is not valid UTF-8; re-save the file as UTF-8."
        ) from None


def _read_json(path: Path) -> Iterator[tuple[Location, object]]:
    raw = path.read_bytes()
    escapes = ESCAPED_SURROGATE.search(raw) is not None
    text = _decode(raw, path)
    if not text.strip():
        raise TunelabError(f"{path} is empty; it should hold a JSON array of records.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (one record per line is a .jsonl file)" if exc.msg == "Extra data" else ""
        raise TunelabError(
            f"{path}:{exc.lineno}: broken JSON ({exc.msg} at column {exc.colno}){hint}; fix that line."
        ) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} wrappers
    if not isinstance(data, list):
        raise TunelabError(
            f"{path}: expected a JSON array of records, found a {type(data).__name__}."
        )
    for index, record in enumerate(data):
        location = Location(str(path), index=index)
        yield location, _readable(location, record, escapes)


def _read_jsonl(path: Path) -> Iterator[tuple[Location, object]]:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    escapes = ESCAPED_SURROGATE.search(raw) is not None
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        location = Location(str(path), line=number)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                location,
                RowError(location, None, f"byte {exc.start} of the line is not valid UTF-8"),
            )
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield (
                location,
                RowError(location, None, f"broken JSON ({exc.msg} at column {exc.colno})"),
            )
            continue
        yield location, _readable(location, record, escapes)


def _read_csv(path: Path) -> Iterator[tuple[Location, object]]:
    text = _decode(path.read_bytes(), path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise TunelabError(f"{path} has no header row; the first line must name the columns.")
    for row in reader:
        # The line where the record ends; multi-line quoted cells span several lines.
        location = Location(str(path), line=reader.line_num)
        if None in row:
            yield (
                location,
                RowError(
                    location,
                    None,
                    f"has {len(reader.fieldnames) + len(row[None])} cells, the header has {len(reader.fieldnames)}",
                ),
            )
            continue
        missing = [name for name, value in row.items() if value is None]
        if missing:
            yield (
                location,
                RowError(location, missing[0], "the row has fewer cells than the header"),
            )
            continue
        yield location, dict(row)


def _read_table(path: Path) -> Iterator[tuple[Location, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if path.suffix.lower() == ".parquet" else _read_arrow(path, pa)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TunelabError(f"{path} is not a readable {path.suffix} file ({exc}).") from None
    for index, record in enumerate(table.to_pylist()):
        yield Location(str(path), index=index), record


def _read_arrow(path: Path, pa):
    # datasets' save_to_disk writes the streaming format; pyarrow's own writer the file format.
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()


_READERS = {
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".csv": _read_csv,
    ".parquet": _read_table,
    ".arrow": _read_table,
}
