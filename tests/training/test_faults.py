"""Real faults: locks held by another process, SIGKILL, a full disk, damaged checkpoints and
cache entries, a diverging run, a huge record; and nothing executable is ever read back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tunelab
from tests.conftest import REPO, run_cli
from tests.test_hardening import DATA, snapshot
from tests.training.test_resume import KILLER

HOLDER = """
import sys, time
from pathlib import Path
from tunelab.run import RunLock
RunLock.take(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def write_recipe(root: Path, model: Path, output: Path, **train) -> Path:
    (root / "d.jsonl").write_text(DATA * 2, encoding="utf-8")
    recipe = {
        "model": {"path": str(model)},
        "data": {"train": [str(root / "d.jsonl")], "max_length": 64},
        "method": {"type": "lora", "r": 4},
        "train": {"max_steps": 2, "batch_size": 2, "tensorboard": False, **train},
        "output": str(output),
    }
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def train_here(recipe: Path) -> None:
    """A finished run to start from, trained in this process (a child costs seconds of imports;
    the command itself is what each test then runs)."""
    tunelab.train(recipe)


def one_line(result) -> str:
    return " ".join((result.stdout + result.stderr).split())


def assert_refused(result, *words: str) -> None:
    text = one_line(result)
    assert result.returncode == 2, text
    assert "Traceback" not in text and "internal error" not in text, text
    for word in words:
        assert word in text, text


def test_second_writer_is_refused_with_the_holders_pid_and_a_dead_holders_lock_is_taken(
    tmp_path, tiny_model_dir
):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=1)
    train_here(recipe)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        refused = run_cli("train", str(recipe), "--overwrite")
        assert_refused(refused, "being written by another tunelab process", f"pid {holder.pid}")
        assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    again = run_cli("train", str(recipe), "--overwrite")
    assert again.returncode == 0, again.stderr
    assert f"left by pid {holder.pid}, which has ended" in one_line(again)
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


def test_two_trainings_started_on_one_folder_leave_one_consistent_run(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=3)
    from tests.conftest import start_cli

    procs = [start_cli("train", str(recipe)) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(text for code, text in results if code == 2)
    assert "another tunelab process" in loser or "already holds a run" in loser, loser
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_overwrite_that_fails_before_training_puts_the_old_run_back(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=1)
    train_here(recipe)
    before = snapshot(run)
    (tmp_path / "d.jsonl").write_text(DATA + '{"instruction": "no answer"}\n', encoding="utf-8")
    failed = run_cli("train", str(recipe), "--overwrite")
    assert_refused(failed, "d.jsonl:7", "bad row")
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "r.yaml", "run"]


def _killed_run(tmp_path: Path, model: Path) -> tuple[Path, Path]:
    """A run stopped by SIGKILL in step 7, with checkpoints 2, 4 and 6."""
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, model, run, max_steps=8, save_every=2, keep_last=3)
    from tests.conftest import run_python

    killed = run_python(KILLER, str(recipe), "7")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert names == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    return run, recipe


def test_resume_skips_damaged_checkpoints_and_names_them(tmp_path, tiny_model_dir):
    run, recipe = _killed_run(tmp_path, tiny_model_dir)
    checkpoints = run / "checkpoints"
    weights = checkpoints / "checkpoint-6" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (checkpoints / "checkpoint-4" / "trainer_state.json").unlink()

    resumed = run_cli("train", str(recipe), "--resume")
    text = one_line(resumed)
    assert resumed.returncode == 0, text
    assert "checkpoint-6 is damaged (adapter_model.safetensors is" in text
    assert "checkpoint-4 is damaged (trainer_state.json is missing)" in text
    assert "resuming from checkpoint-2 instead" in text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["steps"] == 8


def test_resume_with_every_checkpoint_damaged_says_what_is_wrong(tmp_path, tiny_model_dir):
    run, recipe = _killed_run(tmp_path, tiny_model_dir)
    for checkpoint in (run / "checkpoints").glob("checkpoint-*"):
        (checkpoint / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    before = snapshot(run)
    before.pop(".tunelab-lock")  # the lock file is the only thing the attempt may touch
    refused = run_cli("train", str(recipe), "--resume")
    assert_refused(refused, "no whole checkpoint to resume from", "checkpoint-6 is damaged")
    after = snapshot(run)
    after.pop(".tunelab-lock")
    assert after == before


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs: room for one checkpoint of the tiny model's run, not for two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)])
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_saving_keeps_the_last_checkpoint(tmp_path, tiny_model_dir, small_disk):
    run = small_disk / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=6, save_every=1, keep_last=3)
    full = run_cli("train", str(recipe))
    assert_refused(full, f"no space left in {run} while saving", "checkpoint-")
    from tunelab.training.checkpoints import checkpoint_problem, complete_checkpoints

    kept = complete_checkpoints(run / "checkpoints")
    assert kept and all(checkpoint_problem(c) is None for c in kept)
    assert not (run / "checkpoints" / ".staging").exists()
    assert not (run / "summary.json").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_cli("train", str(recipe), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_a_diverging_run_stops_with_the_step_and_saves_nothing_of_it(tmp_path, tiny_model_dir):
    """Full fine-tuning in float16 at lr 10 overflows within a few steps."""
    run = tmp_path / "run"
    recipe = write_recipe(
        tmp_path, tiny_model_dir, run, max_steps=30, lr=10, max_grad_norm=1e6, save_every=1
    )
    text = recipe.read_text().replace("type: lora", "type: full")
    recipe.write_text(text.replace("model:\n", "model:\n  dtype: float16\n"))
    result = run_cli("train", str(recipe))
    assert_refused(result, "training diverged at step", "Lower train.lr (now 10)")
    step = int(one_line(result).split("diverged at step ")[1].split()[0])
    from tunelab.training.checkpoints import checkpoint_problem, complete_checkpoints

    kept = complete_checkpoints(run / "checkpoints")
    assert [int(c.name.split("-")[1]) for c in kept] == list(range(1, step))[-2:]
    assert all(checkpoint_problem(c) is None for c in kept)
    assert f"the last good checkpoint is {kept[-1]}" in one_line(result)
    assert not (run / "summary.json").exists() and not (run / "model").exists()
    assert "final loss" not in one_line(result)


def test_a_damaged_cache_entry_is_rebuilt_and_said(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=1)
    train_here(recipe)
    [entry] = (tmp_path / "cache" / "data").glob("*.safetensors")
    raw = bytearray(entry.read_bytes())
    raw[-40:] = bytes(40)  # token ids of the last samples overwritten
    entry.write_bytes(bytes(raw))
    again = run_cli("train", str(recipe), "--overwrite")
    text = one_line(again)
    assert again.returncode == 0, text
    assert "was damaged (its checksum does not match)" in text and "rebuilt" in text
    assert json.loads((run / "summary.json").read_text())["samples"] == 12


@pytest.mark.slow  # test_no_module_reads_pickles checks the code in the default suite
def test_a_pickle_in_the_cache_is_never_loaded(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=1)
    assert run_cli("train", str(recipe)).returncode == 0
    sentinel = tmp_path / "PAYLOAD-RAN"
    for entry in (tmp_path / "cache" / "data").glob("*.safetensors"):
        payload = (
            b"cos\nsystem\n(S'touch " + str(sentinel).encode() + b"'\ntR."
        )  # a pickle that runs a shell command when loaded
        entry.with_suffix(".pkl").write_bytes(payload)
        entry.write_bytes(payload)
    again = run_cli("train", str(recipe), "--overwrite")
    assert again.returncode == 0, again.stderr
    assert not sentinel.exists()
    assert "was damaged" in one_line(again)


def test_no_module_reads_pickles():
    sources = "".join(p.read_text() for p in (REPO / "src").rglob("*.py"))
    assert "import pickle" not in sources and "pickle.load" not in sources


def test_custom_model_code_never_runs_even_when_stdin_says_yes(tmp_path, tiny_model_dir):
    model = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, model)
    sentinel = tmp_path / "CUSTOM-CODE-RAN"
    config = json.loads((model / "config.json").read_text())
    config.update(
        model_type="sneaky",
        architectures=["SneakyForCausalLM"],
        auto_map={"AutoConfig": "sneaky.SneakyConfig", "AutoModelForCausalLM": "sneaky.Sneaky"},
    )
    (model / "config.json").write_text(json.dumps(config))
    (model / "sneaky.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    result = subprocess.run(
        [sys.executable, "-m", "tunelab", "chat", str(model), "-p", "hi"],
        input="y\ny\ny\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_refused(result, str(model), "model.trust_remote_code: true")
    assert not sentinel.exists()


@pytest.mark.parametrize("max_length, kept", [(64, 64), ("auto", 512)])
def test_a_huge_answer_costs_memory_by_max_length_not_by_its_size(tmp_path, max_length, kept):
    """A 20 MB answer: rendered in memory bounded by max_length (auto: by the model's context,
    here 512), not by its size."""
    script = f"""
import json, time
from pathlib import Path
from tunelab.data.pipeline import prepare_data
from tunelab.models.load import load_tokenizer
from tunelab.models.sources import resolve_model
from tunelab.recipe import DataConfig
path = Path({str(tmp_path)!r}) / "big.jsonl"
path.write_text(json.dumps({{"instruction": "Say a lot.", "output": "word " * 4_000_000}}) + "\\n")
tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
start = time.perf_counter()
max_length = {max_length!r}
data = prepare_data(DataConfig(train=[str(path)], max_length=max_length, cache=False), None, tok,
                    tok.chat_template, 0, context=512)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
s = data.train[0]
print(json.dumps({{"kib": peak, "seconds": time.perf_counter() - start, "len": len(s.input_ids),
                  "trained": s.trained_tokens}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["len"] == kept and figures["trained"] > 0
    assert figures["kib"] < 1.5 * 2**20, figures  # whole, it took over 4 GiB
    assert figures["seconds"] < 30, figures


def test_cutting_a_long_message_gives_the_same_truncated_sample(builtin_tokenizer):
    from tunelab.data.conversation import Conversation, Message
    from tunelab.data.render import ConversationRenderer, truncate

    long_prompt = "Tell me. " + "a b c d e f g " * 3000
    answer = "sure " * 5000
    for prompt in (long_prompt, "Short question?"):
        conversation = Conversation(
            [Message("user", prompt), Message("assistant", answer)], location=None
        )
        template = builtin_tokenizer.chat_template
        whole = ConversationRenderer(builtin_tokenizer, template).render(conversation)
        cut = ConversationRenderer(builtin_tokenizer, template, cut_for=64).render(conversation)
        assert len(cut.input_ids) < len(whole.input_ids)
        a = truncate(whole.input_ids, whole.labels, 64)
        b = truncate(cut.input_ids, cut.labels, 64)
        assert (a.input_ids, a.labels) == (b.input_ids, b.labels)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_an_unreadable_data_file_is_named(tmp_path):
    """Root reads everything, so the command runs without the capability to bypass file
    permissions (as a normal user would)."""
    data = tmp_path / "d.jsonl"
    data.write_text(DATA, encoding="utf-8")
    data.chmod(0o000)
    (tmp_path / "r.yaml").write_text(f"data:\n  train: [{data}]\noutput: {tmp_path / 'run'}\n")
    plain_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    for args, words in (
        (["data", "check", str(data), "--no-lengths"], "is not readable"),
        (["train", str(tmp_path / "r.yaml")], f"{data} cannot be read (permission denied)"),
    ):
        result = subprocess.run(
            [*plain_user, sys.executable, "-m", "tunelab", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "COLUMNS": "400"},
        )
        assert_refused(result, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "r.yaml"]


def test_disk_full_while_the_final_model_is_saved_is_one_sentence(
    tmp_path, tiny_model_dir, small_disk
):
    """A full fine-tune (13 MB of weights) without checkpoints into a 6 MiB disk: the final
    save fails as `no space left`, not as torch's or safetensors' own error."""
    run = small_disk / "run"
    recipe = write_recipe(tmp_path, tiny_model_dir, run, max_steps=1)
    recipe.write_text(recipe.read_text().replace("type: lora", "type: full"))
    full = run_cli("train", str(recipe))
    assert_refused(full, "no space left in")
    assert not (run / "summary.json").exists()
