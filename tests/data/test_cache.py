"""The rendered-data cache: what is written is read back exactly, and an entry that does not
agree with itself is refused, whatever part of it is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from tunelab.data.cache import (
    DamagedCache,
    _arrays,
    _digest,
    read_cache,
    write_cache,
)
from tunelab.data.load import DataReport
from tunelab.data.render import IGNORE_INDEX, RenderedSample

X = IGNORE_INDEX


def _report(kept: int) -> DataReport:
    return DataReport(sources=[{"path": "a.json", "kept": kept}])


def _same(read: list[RenderedSample], written: list[RenderedSample]) -> bool:
    return [vars(s) for s in read] == [vars(s) for s in written]


def test_edge_cases_read_back_exactly(tmp_path):
    """Runs that touch a sample's edge, samples with nothing trained, an empty sample."""
    samples = [
        RenderedSample([5, 6, 7], [5, 6, 7], location="a.json:1"),
        RenderedSample([8, 9], [8, 9], location="a.json:2"),  # trained up to the edge again
        RenderedSample([1, 2, 3, 4], [X, X, X, X]),
        RenderedSample([], []),
        RenderedSample([1, 2, 3, 4, 5, 6], [X, 2, 3, X, 5, X], location="a.json:5"),
    ]
    path = tmp_path / "entry.safetensors"
    write_cache(path, samples, _report(len(samples)))
    read, report = read_cache(path, vocab_size=10)
    assert _same(read, samples) and report.kept == len(samples)
    assert _arrays(samples)["trained"].tolist() == [[0, 3], [3, 5], [10, 12], [13, 14]]


@pytest.mark.skipif(not (SHARED_DATA / "llamafactory").is_dir(), reason="../shared/data absent")
def test_real_data_reads_back_exactly(tmp_path, builtin_tokenizer):
    from tunelab.data.load import load_conversations
    from tunelab.data.render import ConversationRenderer
    from tunelab.recipe import DataConfig

    registry = str(SHARED_DATA / "llamafactory" / "dataset_info.json")
    config = DataConfig(train=["alpaca_zh_demo", "glaive_toolcall_en_demo"], registry=registry)
    conversations, report = load_conversations(config, None, "train")
    renderer = ConversationRenderer(builtin_tokenizer, builtin_tokenizer.chat_template)
    samples = renderer.render_many(conversations)
    path = tmp_path / "entry.safetensors"
    write_cache(path, samples, report)
    read, _ = read_cache(path, len(builtin_tokenizer))
    assert _same(read, samples) and len(read) == 1300


def test_a_label_that_is_not_its_token_is_never_written(tmp_path):
    with pytest.raises(ValueError, match="neither its token nor ignored"):
        write_cache(tmp_path / "e.safetensors", [RenderedSample([1, 2], [X, 3])], _report(1))


def _rewrite(path, change):
    """The entry with its arrays changed and its checksum made to agree (only the part
    under test is wrong)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as handle:
        meta = json.loads(handle.metadata()["tunelab"])
    arrays = load_file(str(path))
    change(arrays)
    if "trained" in arrays:
        meta["sha256"] = _digest(arrays)
    save_file(arrays, str(path), metadata={"tunelab": json.dumps(meta)})


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda a: a.update(trained=np.array([[0, 4]])), "trained runs do not fit"),  # across
        (lambda a: a.update(trained=np.array([[3, 5], [0, 2]])), "trained runs do not fit"),
        (lambda a: a.update(trained=np.array([[0, 2], [1, 3]])), "trained runs do not fit"),
        (lambda a: a.update(trained=np.array([[2, 2]])), "trained runs do not fit"),
        (lambda a: a.update(trained=np.array([[6, 7]])), "trained runs do not fit"),
        (lambda a: a.update(trained=np.array([[-2, -1]])), "trained runs do not fit"),
        (lambda a: a.update(trained=np.array([0, 2])), "trained runs do not fit"),
        (lambda a: a["input_ids"].__setitem__(0, 99), "outside the tokenizer's vocabulary"),
        (lambda a: a.update(lengths=np.array([2, 2])), "token count does not match"),
        (lambda a: a.update(lengths=np.array([6, -1])), "token count does not match"),
        (lambda a: a.pop("trained"), "missing trained"),
    ],
)
def test_an_entry_that_disagrees_with_itself_is_refused(tmp_path, change, reason):
    samples = [RenderedSample([1, 2, 3], [X, 2, 3]), RenderedSample([4, 5], [4, X])]
    path = tmp_path / "entry.safetensors"
    write_cache(path, samples, _report(2))
    assert _same(read_cache(path, 10)[0], samples)
    _rewrite(path, change)
    with pytest.raises(DamagedCache, match=reason):
        read_cache(path, 10)


def test_a_changed_byte_fails_the_checksum(tmp_path):
    path = tmp_path / "entry.safetensors"
    write_cache(path, [RenderedSample([1, 2, 3], [X, 2, 3])], _report(1))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DamagedCache, match="checksum"):
        read_cache(path, 10)
