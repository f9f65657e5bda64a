"""A GGUF file's scalar and string metadata, read without its arrays.

`gguf.GGUFReader` builds a view of every entry of every array when it opens a file: a
tokenizer of 49k tokens and as many merges takes it 3.4 s here, Qwen's 151k some 10 s, and an
export reads a file's metadata several times. The header is walked here instead, arrays
stepped over by their lengths (a few milliseconds); the `gguf` package's own type table says
how large each value is. A big-endian file is left to `gguf.GGUFReader`.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from tunelab.errors import TunelabError

MAGIC = b"GGUF"


def gguf_metadata(file: Path) -> dict:
    """Every scalar and string key of the GGUF `file` (arrays are left out)."""
    with open(file, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != MAGIC:
            raise TunelabError(f"{file} is not a GGUF file (it does not start with GGUF).")
        version, count = struct.unpack_from("<I", data, 4)[0], struct.unpack_from("<Q", data, 16)[0]
        if version > 0xFFFF:  # a big-endian file
            return _slow(file)
        found, at = {}, 24
        for _ in range(count):
            key, at = _string(data, at)
            kind = struct.unpack_from("<I", data, at)[0]
            value, at = _value(data, at + 4, kind)
            if value is not _ARRAY:
                found[key] = value
        return found


_ARRAY = object()
_STRING, _ARRAY_TYPE = 8, 9


def _codes(gguf) -> dict[int, str]:
    kinds = gguf.GGUFValueType
    return {
        kinds.UINT8: "B", kinds.INT8: "b", kinds.UINT16: "H", kinds.INT16: "h",
        kinds.UINT32: "I", kinds.INT32: "i", kinds.FLOAT32: "f", kinds.BOOL: "?",
        kinds.UINT64: "Q", kinds.INT64: "q", kinds.FLOAT64: "d",
    }  # fmt: skip


def _string(data, at: int) -> tuple[str, int]:
    length = struct.unpack_from("<Q", data, at)[0]
    start = at + 8
    return bytes(data[start : start + length]).decode("utf-8", errors="replace"), start + length


def _value(data, at: int, kind: int):
    if kind == _STRING:
        return _string(data, at)
    if kind == _ARRAY_TYPE:
        inner, length = struct.unpack_from("<IQ", data, at)
        at += 12
        if inner == _STRING:
            for _ in range(length):
                at += 8 + struct.unpack_from("<Q", data, at)[0]
        elif inner == _ARRAY_TYPE:
            for _ in range(length):
                _, at = _value(data, at, _ARRAY_TYPE)
        else:
            at += length * struct.calcsize(_FORMATS[inner])
        return _ARRAY, at
    code = _FORMATS[kind]
    return struct.unpack_from(code, data, at)[0], at + struct.calcsize(code)


def _slow(file: Path) -> dict:
    import gguf

    fields = gguf.GGUFReader(str(file)).fields.values()
    return {f.name: f.contents() for f in fields if f.types and f.types[0] != _ARRAY_TYPE}


def _load_formats() -> dict[int, str]:
    import gguf

    return {int(kind): f"<{code}" for kind, code in _codes(gguf).items()}


_FORMATS = _load_formats()
