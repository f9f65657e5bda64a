"""The rendered-data cache on disk: one safetensors file per split, nothing that runs code.

Token ids and labels are flat int32 arrays cut by a lengths array; sample locations and the
data report are JSON in the file's metadata, with a SHA-256 of the arrays and the counts they
must agree on. Reading checks all of it; any mismatch is `DamagedCache`, and the caller
renders again instead of training on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path

import numpy as np

from tunelab.data.load import DataReport
from tunelab.data.render import IGNORE_INDEX, RenderedSample

CACHE_SUFFIX = ".safetensors"
FORMAT = "tunelab-rendered-v1"


class DamagedCache(Exception):
    """A cache entry that is unreadable or does not agree with itself."""


def write_cache(path: Path, samples: list[RenderedSample], report: DataReport) -> None:
    """Write atomically: readers never see a half-written file (the temp name is per process)."""
    from safetensors.numpy import save_file

    arrays = _arrays(samples)
    meta = {
        "format": FORMAT,
        "samples": len(samples),
        "tokens": int(arrays["input_ids"].size),
        "sha256": _digest(arrays),
        "locations": [s.location for s in samples],
        "report": report.as_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(arrays, str(tmp), metadata={"tunelab": json.dumps(meta, ensure_ascii=False)})
    os.replace(tmp, path)


def read_cache(path: Path, vocab_size: int) -> tuple[list[RenderedSample], DataReport]:
    """The samples and report of a cache entry, after checking it end to end."""
    arrays, meta = _load(path)
    _check(arrays, meta, vocab_size)
    ends = np.cumsum(arrays["lengths"])
    ids = np.split(arrays["input_ids"], ends[:-1]) if len(ends) else []
    labels = np.split(arrays["labels"], ends[:-1]) if len(ends) else []
    samples = [
        RenderedSample(i.tolist(), label.tolist(), location=loc)
        for i, label, loc in zip(ids, labels, meta["locations"])
    ]
    try:
        report = DataReport.from_dict(meta["report"])
    except (KeyError, TypeError) as exc:
        raise DamagedCache(f"its data report lacks {exc}") from None
    # every conversation kept by loading gives a sample (one per turn when its template
    # rewrites history), unless rendering refused it (a bad row)
    expected = report.kept + report.turn_samples
    if not expected - len(report.bad_rows) <= len(samples) <= expected:
        raise DamagedCache(f"it holds {len(samples)} samples but its report kept {report.kept}")
    return samples, report


def _arrays(samples: list[RenderedSample]) -> dict[str, np.ndarray]:
    lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
    total = int(lengths.sum())

    def flat(name: str) -> np.ndarray:
        values = itertools.chain.from_iterable(getattr(s, name) for s in samples)
        return np.fromiter(values, np.int32, count=total)

    return {"lengths": lengths, "input_ids": flat("input_ids"), "labels": flat("labels")}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in ("lengths", "input_ids", "labels"):
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def _load(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            raw = (handle.metadata() or {}).get("tunelab")
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        meta = json.loads(raw) if raw else None
    except Exception as exc:  # safetensors raises its own error types for a broken file
        raise DamagedCache(f"unreadable: {type(exc).__name__}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DamagedCache("no tunelab metadata of this version")
    missing = {"lengths", "input_ids", "labels"} - set(arrays)
    if missing:
        raise DamagedCache(f"missing {', '.join(sorted(missing))}")
    return arrays, meta


def _check(arrays: dict[str, np.ndarray], meta: dict, vocab_size: int) -> None:
    lengths, ids, labels = arrays["lengths"], arrays["input_ids"], arrays["labels"]
    if _digest(arrays) != meta.get("sha256"):
        raise DamagedCache("its checksum does not match")
    locations = meta.get("locations")
    if not isinstance(locations, list) or not (
        len(lengths) == len(locations) == meta.get("samples")
    ):
        raise DamagedCache("its sample count does not match")
    if int(lengths.sum()) != ids.size or ids.size != labels.size or ids.size != meta.get("tokens"):
        raise DamagedCache("its token count does not match")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise DamagedCache("it holds token ids outside the tokenizer's vocabulary")
    if np.any((labels != IGNORE_INDEX) & (labels != ids)):
        raise DamagedCache("its labels do not match its token ids")
