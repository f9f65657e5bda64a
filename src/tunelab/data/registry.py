"""LLaMA-Factory style dataset_info.json registries, read as they are."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError


@dataclass
class RegistryEntry:
    name: str
    file: Path
    formatting: str
    columns: dict
    kind: str  # sft, preference, kto or pretraining

    @property
    def format_name(self) -> str:
        return "alpaca" if self.formatting == "alpaca" else "sharegpt"


def read_registry(path: Path) -> dict[str, dict]:
    """The registry's entries by name."""
    if not path.is_file():
        raise TunelabError(
            f"data.registry: {path} does not exist; point it at a dataset_info.json."
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TunelabError(
            f"{path}:{line}: the registry is not UTF-8 text (byte {raw[exc.start]:#04x} at "
            f"offset {exc.start}); save it as UTF-8."
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TunelabError(
            f"{path}:{exc.lineno}: broken JSON in the registry ({exc.msg})."
        ) from None
    if not isinstance(data, dict):
        raise TunelabError(f"{path}: a registry is a JSON object of name -> entry.")
    return data


def lookup(path: Path, name: str) -> RegistryEntry:
    """Resolve one registry entry to a local file and its column map."""
    entries = read_registry(path)
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=1)
        hint = f"; did you mean `{close[0]}`?" if close else "."
        raise TunelabError(f"{path}: no entry named `{name}`{hint}")
    entry = entries[name]
    where = f"{path} entry `{name}`"
    _check_entry(entry, where)
    if "file_name" not in entry:
        hub = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("script_url")
        raise TunelabError(
            f"{where} points to the hub ({hub}), which tunelab does not download; "
            "download the file and register it with file_name."
        )
    file = path.parent / entry["file_name"]
    if not file.exists():
        raise TunelabError(
            f"{where}: its file {file} is missing; put the file there or fix file_name."
        )
    if not file.is_file():
        raise TunelabError(
            f"{where}: file_name {entry['file_name']} is a folder; tunelab reads one file per "
            "entry, so register each file as its own entry."
        )
    columns = dict(entry.get("columns") or {})
    columns.update(entry.get("tags") or {})
    return RegistryEntry(name, file, entry.get("formatting", "alpaca"), columns, _kind(entry))


def _check_entry(entry, where: str) -> None:
    """The fields tunelab reads have the types dataset_info.json gives them."""
    if not isinstance(entry, dict):
        raise TunelabError(
            f"{where} is {type(entry).__name__} {entry!r:.60}, not an object like "
            '{"file_name": "data.json"}; fix the registry.'
        )
    for key in ("file_name", "formatting", "hf_hub_url", "ms_hub_url", "script_url"):
        if key in entry and not isinstance(entry[key], str):
            raise TunelabError(f"{where}: `{key}` must be text, not {type(entry[key]).__name__}.")
    for key in ("columns", "tags"):
        value = entry.get(key)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise TunelabError(
                f"{where}: `{key}` must map names to column names, e.g. "
                '{"prompt": "instruction"}.'
            )
    if entry.get("formatting", "alpaca") not in ("alpaca", "sharegpt"):
        raise TunelabError(
            f"{where}: formatting `{entry['formatting']}` is not alpaca or sharegpt."
        )


def _kind(entry: dict) -> str:
    if entry.get("ranking"):
        return "preference"
    columns = entry.get("columns") or {}
    if "kto_tag" in columns:
        return "kto"
    if "chosen" in columns or "rejected" in columns:
        return "preference"
    if set(columns) == {"prompt"} and entry.get("formatting", "alpaca") == "alpaca":
        return "pretraining"
    return "sft"
