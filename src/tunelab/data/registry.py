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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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
    columns = dict(entry.get("columns") or {})
    columns.update(entry.get("tags") or {})
    return RegistryEntry(name, file, entry.get("formatting", "alpaca"), columns, _kind(entry))


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
