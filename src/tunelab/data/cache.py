"""The rendered-data cache on disk: one safetensors file per split, nothing that runs code.

Token ids are one flat int32 array cut by a lengths array; labels are kept as the runs of
trained tokens (a label is its token or ignored), which also spares reading them a Python int
per ignored position. Sample locations and the data report are JSON in the file's metadata,
with a SHA-256 of the arrays and the counts they must agree on. Reading checks all of it; any
mismatch is `DamagedCache`, and the caller renders again instead of training on it.
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
FORMAT = "tunelab-rendered-v2"
ARRAYS = ("lengths", "input_ids", "trained")


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
    samples = _samples(arrays, meta["locations"])
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


def _samples(arrays: dict[str, np.ndarray], locations: list) -> list[RenderedSample]:
    """Each sample's ids, and its labels rebuilt from the trained runs (sharing the ids' ints)."""
    ids, runs = arrays["input_ids"], arrays["trained"].tolist()
    bounds = np.concatenate(([0], np.cumsum(arrays["lengths"]))).tolist()
    samples, run = [], 0
    for begin, end, location in zip(bounds, bounds[1:], locations):
        row = ids[begin:end].tolist()
        labels, at = [], begin
        while run < len(runs) and runs[run][0] < end:
            first, stop = runs[run]
            labels += [IGNORE_INDEX] * (first - at)
            labels += row[first - begin : stop - begin]
            at, run = stop, run + 1
        labels += [IGNORE_INDEX] * (end - at)
        samples.append(RenderedSample(row, labels, location=location))
    return samples


def _arrays(samples: list[RenderedSample]) -> dict[str, np.ndarray]:
    lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
    total = int(lengths.sum())

    def flat(name: str) -> np.ndarray:
        values = itertools.chain.from_iterable(getattr(s, name) for s in samples)
        return np.fromiter(values, np.int32, count=total)

    ids, labels = flat("input_ids"), flat("labels")
    trained = labels != IGNORE_INDEX
    if np.any(labels[trained] != ids[trained]):
        raise ValueError("a label is neither its token nor ignored; the cache cannot hold it")
    return {"lengths": lengths, "input_ids": ids, "trained": _runs(trained, lengths)}


def _runs(trained: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[start, end) of each run of trained positions, cut where a sample ends."""
    ends = np.cumsum(lengths)
    cut = np.zeros(trained.size + 1, bool)
    cut[ends - lengths] = True  # a sample starts: a run starts afresh
    edge = np.diff(np.concatenate(([False], trained, [False])).astype(np.int8))
    begins = np.flatnonzero((edge[:-1] == 1) | (trained & cut[:-1]))
    stops = np.flatnonzero((edge[1:] == -1) | (trained & cut[1:]))
    return np.stack([begins, stops + 1], axis=1).astype(np.int64).reshape(-1, 2)


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in ARRAYS:
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
    missing = set(ARRAYS) - set(arrays)
    if missing:
        raise DamagedCache(f"missing {', '.join(sorted(missing))}")
    return arrays, meta


def _check(arrays: dict[str, np.ndarray], meta: dict, vocab_size: int) -> None:
    lengths, ids, runs = arrays["lengths"], arrays["input_ids"], arrays["trained"]
    if _digest(arrays) != meta.get("sha256"):
        raise DamagedCache("its checksum does not match")
    locations = meta.get("locations")
    if not isinstance(locations, list) or not (
        len(lengths) == len(locations) == meta.get("samples")
    ):
        raise DamagedCache("its sample count does not match")
    if (
        int(lengths.sum()) != ids.size
        or ids.size != meta.get("tokens")
        or lengths.min(initial=0) < 0
    ):
        raise DamagedCache("its token count does not match")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise DamagedCache("it holds token ids outside the tokenizer's vocabulary")
    if not _runs_fit(runs, np.cumsum(lengths), ids.size):
        raise DamagedCache("its trained runs do not fit its samples")


def _runs_fit(runs: np.ndarray, ends: np.ndarray, total: int) -> bool:
    """Runs are non-empty, in order, apart, inside the tokens and each inside one sample."""
    if runs.ndim != 2 or runs.shape[1] != 2:
        return False
    begins, stops = runs[:, 0], runs[:, 1]
    if not runs.size:
        return True
    return bool(
        (begins < stops).all()
        and begins[0] >= 0
        and stops[-1] <= total
        and (begins[1:] >= stops[:-1]).all()
        and (
            np.searchsorted(ends, begins, "right") == np.searchsorted(ends, stops - 1, "right")
        ).all()
    )
