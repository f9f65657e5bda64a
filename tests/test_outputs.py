"""The rule for every file tunelab writes outside a run folder (`tunelab.outputs`): a new path,
or tunelab's own earlier output of the same kind, replaced atomically; never anything else;
nothing left behind by a writer that was killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import run_cli
from tunelab import outputs
from tunelab.errors import TunelabError


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_file_that_appears_while_writing_is_kept(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(TunelabError, match="appeared while tunelab was writing it"):  # noqa: SIM117
        with outputs.staged_file(target, replaces=False) as staged:
            staged.write_text("tunelab's", encoding="utf-8")
            target.write_text("the user's", encoding="utf-8")  # appears meanwhile
    assert target.read_text(encoding="utf-8") == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_only_a_recorded_unchanged_output_of_the_same_kind_is_replaced(tmp_path):
    outputs.write_files(tmp_path, {"a.md": "one"}, "report")
    outputs.write_files(tmp_path, {"a.md": "two"}, "report")  # its own: replaced
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "two"
    with pytest.raises(TunelabError, match="is not a plot tunelab wrote"):
        outputs.write_files(tmp_path, {"a.md": "three"}, "plot")  # another kind
    (tmp_path / "a.md").write_text("edited by hand", encoding="utf-8")
    with pytest.raises(TunelabError, match="a file of yours, or changed since"):
        outputs.write_files(tmp_path, {"a.md": "four"}, "report")
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "edited by hand"
    (tmp_path / "b.md").write_text("mine", encoding="utf-8")
    with pytest.raises(TunelabError, match="b.md exists"):  # checked before any is written
        outputs.write_files(tmp_path, {"c.md": "new", "b.md": "x"}, "report")
    assert not (tmp_path / "c.md").exists()


def test_what_a_killed_writer_left_is_removed_and_nothing_else(tmp_path):
    target = tmp_path / "model.gguf"
    dead, alive = dead_pid(), os.getppid()
    leftover = tmp_path / f".model.gguf.tunelab-{dead}"
    leftover.mkdir()
    (leftover / "model.gguf").write_bytes(b"\0" * 1024)
    old_style = tmp_path / f".model.gguf.export-{dead}"
    old_style.write_bytes(b"x")
    running = tmp_path / f".model.gguf.tunelab-{alive}"  # another writer, still at work
    running.write_bytes(b"y")
    other = tmp_path / f".other.gguf.tunelab-{dead}"  # beside another target
    other.write_bytes(b"z")
    staged = outputs.staging_path(target)
    assert not leftover.exists() and not old_style.exists()
    assert running.exists() and other.exists() and not staged.exists()


def tiny_run(root, model) -> object:
    import tunelab

    rows = [{"instruction": f"Question {i}?", "output": "An answer."} for i in range(4)]
    (root / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(root / "d.json")]},
        "method": {"type": "lora", "r": 4},
        "train": {"max_steps": 1, "tensorboard": False, "batch_size": 4},
        "output": str(root / "run"),
    }
    (root / "r.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return tunelab.train(str(root / "r.yaml")).run_dir


def test_an_export_whose_out_appears_meanwhile_keeps_the_users_file(
    tmp_path, tiny_model_dir, monkeypatch
):
    from tunelab.exporters import runtimes

    run = tiny_run(tmp_path, tiny_model_dir)
    out = tmp_path / "model.gguf"
    real = runtimes._write_model

    def slow_write(*args):
        written = real(*args)
        out.write_bytes(b"the user's file")  # appears while the export runs
        return written

    monkeypatch.setattr(runtimes, "_write_model", slow_write)
    with pytest.raises(TunelabError, match="appeared while tunelab was writing it"):
        runtimes.export_gguf(run, out, verify=False)
    assert out.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_data_stats_never_replaces_a_users_plot(tmp_path, tiny_model_dir):
    rows = [{"instruction": "Hi?", "output": "Hello."}] * 3
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "lengths.png").write_bytes(b"my holiday photo")
    args = ("data", "stats", "d.json", "--model", str(tiny_model_dir))
    refused = run_cli(*args, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "lengths.png exists and is not a length plot tunelab wrote" in refused.stderr
    assert (tmp_path / "lengths.png").read_bytes() == b"my holiday photo"
    (tmp_path / "lengths.png").unlink()
    for _ in range(2):  # written, then its own plot replaced
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "lengths.png").read_bytes()[:4] == b"\x89PNG"
