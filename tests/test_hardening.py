"""Careless inputs at every entry point: one `error:` line naming file/line/key or argument,
exit code 2, no traceback, and the user's folder byte-for-byte as it was.

Each case writes a small work folder (recipe, data, notes), runs the real command in it, and
compares a hash of every file and folder before and after.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app

runner = CliRunner()

ROWS = [{"instruction": f"What is {i} plus one?", "output": f"It is {i + 1}."} for i in range(6)]
DATA = "".join(json.dumps(r) + "\n" for r in ROWS)
NOTES = "my own notes, not tunelab's\n"


def recipe(**sections: str) -> str:
    """A small valid recipe on the tiny model; a section given as text replaces the default."""
    parts = {
        "model": "model:\n  path: {model}\n",
        "data": "data:\n  train: [d.jsonl]\n  max_length: 64\n",
        "method": "method:\n  type: lora\n  r: 4\n",
        "train": "train:\n  max_steps: 1\n  batch_size: 2\n  tensorboard: false\n",
        "output": "output: runs/a\n",
    }
    parts.update(sections)
    return "".join(parts.values())


@dataclass
class Case:
    args: list[str]
    where: str  # the file:line, key or argument the message must name
    words: str  # what it must say
    files: dict[str, str | bytes] = field(default_factory=dict)
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)  # {work} is the work folder


def train_case(text: str, where: str, words: str, *extra: str, **files) -> Case:
    return Case(["train", "r.yaml", *extra], where, words, {"r.yaml": text, **files})


def override(item: str, words: str) -> Case:
    return train_case(recipe(), f"override `{item}`", words, item)


BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f"], "abcdefg")
)
DEEP = "data:\n  train: [d.jsonl]\nx: " + "[" * 100 + "]" * 100 + "\n"
LATIN1 = "data:\n  train: [d.jsonl]\n  system: caf\xe9\n".encode("latin-1")

CASES: dict[str, Case] = {
    # the recipe file itself
    "yaml-two-train-sections": train_case(
        recipe() + "train:\n  epochs: 2\n", "r.yaml:14", "appears twice in one section (lines 9"
    ),
    "yaml-duplicate-key": train_case(
        recipe(train="train:\n  lr: 0.1\n  lr: 0.2\n"), "r.yaml:11", "`lr` appears twice"
    ),
    "yaml-recursive-alias": train_case(
        recipe() + "x: &x\n  y: *x\n", "r.yaml:", "refers to itself"
    ),
    "yaml-alias-bomb": train_case(BOMB + recipe(), "r.yaml:", "expands to over 20,000 values"),
    "yaml-huge-without-alias": train_case(
        recipe() + "x:\n" + "".join(f"  k{i}: {i}\n" for i in range(21_000)),
        "r.yaml:",
        "it holds over 20,000 values, where a recipe has a few hundred",
    ),
    "yaml-deep-nesting": train_case(DEEP, "r.yaml:3", "nested deeper than 64"),
    "yaml-broken-indentation": train_case(
        "data:\n  train: [d.jsonl]\n   max_length: 64\n", "r.yaml:3", "not valid YAML"
    ),
    "yaml-not-a-mapping": train_case("- data\n- train\n", "r.yaml", "must be a mapping"),
    "yaml-not-utf8": train_case(LATIN1, "r.yaml", "not UTF-8"),
    "recipe-missing": Case(["train", "nope.yaml"], "nope.yaml", "does not exist"),
    "recipe-is-a-folder": Case(["train", "sub"], "sub", "is a folder", {"sub/x.txt": "x"}),
    # numbers out of range or not finite, as overrides
    "lr-inf": override("train.lr=.inf", "finite number"),
    "lr-nan": override("train.lr=.nan", "finite number"),
    "lr-huge": override("train.lr=1000", "less than or equal to 10"),
    "seed-negative": override("train.seed=-1", "greater than or equal to 0"),
    "seed-huge": override("train.seed=99999999999", "less than or equal to"),
    "epochs-inf": override("train.epochs=.inf", "finite number"),
    "epochs-huge": override("train.epochs=1e9", "less than or equal to 10000"),
    "max-steps-negative": override("train.max_steps=-5", "greater than 0"),
    "batch-size-zero": override("train.batch_size=0", "greater than 0"),
    "batch-size-huge": override("train.batch_size=1000000000", "less than or equal to 65536"),
    "grad-accum-zero": override("train.grad_accum=0", "greater than 0"),
    "max-length-tiny": override("data.max_length=8", "between 16 and 1,048,576"),
    "max-length-huge": override("data.max_length=1000000000000", "between 16 and 1,048,576"),
    "rank-zero": override("method.r=0", "greater than 0"),
    "rank-huge": override("method.r=100000", "less than or equal to 4096"),
    "alpha-negative": override("method.alpha=-1", "greater than 0"),
    "dropout-over-one": override("method.dropout=1.5", "less than 1"),
    "warmup-over-one": override("train.warmup_ratio=2", "less than 1"),
    "grad-norm-inf": override("train.max_grad_norm=.inf", "finite number"),
    "weight-decay-negative": override("train.weight_decay=-1", "greater than or equal to 0"),
    "keep-last-zero": override("train.keep_last=0", "greater than 0"),
    "save-every-zero": override("train.save_every=0", "greater than 0"),
    "sample-tokens-zero": override("train.sample_max_new_tokens=0", "greater than 0"),
    "override-without-equals": override("train.epochs", "has no `=`"),
    # values in the file
    "lr-nan-in-file": train_case(
        recipe(train="train:\n  lr: .nan\n"), "r.yaml:10", "`train.lr` input should be a finite"
    ),
    "empty-placeholder": train_case(
        recipe(data='data:\n  train: [d.jsonl]\n  replace: {"": ZZ}\n'),
        "r.yaml:5",
        "empty placeholder",
    ),
    "empty-train-list": train_case(
        recipe(data="data:\n  train: []\n"), "r.yaml:4", "lists no data set"
    ),
    "empty-train-entry": train_case(
        recipe(data='data:\n  train: [""]\n'), "r.yaml:4", "has an empty entry"
    ),
    "empty-output": train_case(recipe(output='output: ""\n'), "r.yaml:13", "`output`"),
    "template-syntax-error": train_case(
        recipe(model="model:\n  path: {model}\n  template: t.jinja\n"),
        "t.jinja:2",
        "does not compile",
        **{"t.jinja": "{% for m in messages %}\n{{ m.content }\n{% endfor %}"},
    ),
    "template-missing": train_case(
        recipe(model="model:\n  path: {model}\n  template: gone.jinja\n"),
        "model.template `gone.jinja`",
        "nor an existing .jinja file",
    ),
    "template-not-utf8": train_case(
        recipe(model="model:\n  path: {model}\n  template: t.jinja\n"),
        "t.jinja",
        "not UTF-8",
        **{"t.jinja": b"{{ '\xff' }}"},
    ),
    "lora-target-missing": train_case(
        recipe(method="method:\n  type: lora\n  target: [q_prj]\n"),
        "method.target `q_prj`",
        "Did you mean q_proj",
    ),
    "lora-target-bad-regex": train_case(
        recipe(method="method:\n  type: lora\n  target: '(q_proj'\n"),
        "method.target `(q_proj`",
        "not a valid regular expression",
    ),
    "lora-target-regex-matches-nothing": train_case(
        recipe(method="method:\n  type: lora\n  target: '.*attn_q'\n"),
        "method.target `.*attn_q`",
        "matches no module",
    ),
    "freeze-more-layers-than-model": train_case(
        recipe(method="method:\n  type: freeze\n  layers: 9\n"),
        "method.layers",
        "the model has 2 layers",
    ),
    "data-file-is-a-folder": train_case(
        recipe(data="data:\n  train: [dd]\n"), "data set `dd`", "is not a file", **{"dd/x": "x"}
    ),
    "eval-file-missing": train_case(
        recipe(data="data:\n  train: [d.jsonl]\n  eval: [gone.jsonl]\n"),
        "data set `gone.jsonl`",
        "is not a file",
    ),
    "evaluate-prompts-missing": train_case(
        recipe() + "evaluate:\n  prompts: probes.jsonl\n",
        "evaluate.prompts",
        "does not exist",
    ),
    "model-folder-without-weights": train_case(
        recipe(model="model:\n  path: m\n"),
        "m",
        "cannot load",
        **{"m/config.json": json.dumps({"model_type": "llama", "vocab_size": 100})},
    ),
    "registry-entry-is-text": train_case(
        recipe(data="data:\n  train: [a]\n  registry: dataset_info.json\n"),
        "dataset_info.json entry `a`",
        "not an object",
        **{"dataset_info.json": json.dumps({"a": "just text"})},
    ),
    "registry-columns-not-a-map": train_case(
        recipe(data="data:\n  train: [a]\n  registry: dataset_info.json\n"),
        "dataset_info.json entry `a`",
        "`columns` must map names",
        **{"dataset_info.json": json.dumps({"a": {"file_name": "d.jsonl", "columns": [1]}})},
    ),
    "registry-unknown-formatting": train_case(
        recipe(data="data:\n  train: [a]\n  registry: dataset_info.json\n"),
        "dataset_info.json entry `a`",
        "is not alpaca or sharegpt",
        **{"dataset_info.json": json.dumps({"a": {"file_name": "d.jsonl", "formatting": "x"}})},
    ),
    "registry-file-is-a-folder": train_case(
        recipe(data="data:\n  train: [a]\n  registry: dataset_info.json\n"),
        "dataset_info.json entry `a`",
        "is a folder",
        **{"dataset_info.json": json.dumps({"a": {"file_name": "dd"}}), "dd/x": "x"},
    ),
    "empty-data-file": train_case(recipe(), "train data", "no usable conversations"),
    # where the run would be written
    "output-is-current-directory": train_case(
        recipe(output="output: .\n"), "output .", "is the current directory"
    ),
    "output-is-parent-directory": train_case(
        recipe(output="output: ..\n"), "output ..", "a folder above it"
    ),
    "output-holds-the-recipe": Case(
        ["train", "conf/r.yaml"],
        "output conf",
        "holds",
        {"conf/r.yaml": recipe(output="output: conf\n", data="data:\n  train: [../d.jsonl]\n")},
    ),
    "output-holds-the-data": train_case(
        recipe(output="output: data\n", data="data:\n  train: [data/d.jsonl]\n"),
        "output data",
        "holds",
        **{"data/d.jsonl": DATA},
    ),
    "output-is-users-folder": train_case(
        recipe(output="output: mine\n"), "mine", "was not made by tunelab", **{"mine/n.txt": "n"}
    ),
    "overwrite-folder-that-only-looks-like-a-run": train_case(
        recipe(output="output: mine\n"),
        "mine",
        "was not made by tunelab",
        "--overwrite",
        **{"mine/recipe.yaml": "my recipe\n", "mine/summary.json": "{}"},
    ),
    "output-is-a-file": train_case(
        recipe(output="output: out.txt\n"), "output out.txt", "is a file", **{"out.txt": "x"}
    ),
    "output-is-home": Case(
        ["train", "r.yaml"],
        "output",
        "is your home or root folder",
        {"r.yaml": recipe(output='output: "~"\n'), "h/x": "x"},
        env={"HOME": "{work}/h"},
    ),
    "resume-folder-tunelab-did-not-make": train_case(
        recipe(output="output: mine\n"),
        "mine",
        "holds a recipe.yaml but is not a tunelab run folder",
        "--resume",
        **{"mine/recipe.yaml": recipe(output="output: mine\n")},
    ),
    # chat, eval, compare, data: arguments and models
    "chat-max-new-tokens-zero": Case(
        ["chat", "{model}", "-p", "hi", "--max-new-tokens", "0"],
        "--max-new-tokens",
        "Invalid value",
    ),
    "chat-template-arg-without-value": Case(
        ["chat", "{model}", "-p", "hi", "--template-arg", "enable_thinking"],
        "--template-arg `enable_thinking`",
        "is not KEY=VALUE",
    ),
    "chat-prompt-over-context": Case(
        ["chat", "{model}", "-p", "word " * 700], "context of 512 tokens", "fills the model's"
    ),
    "chat-random-bytes-gguf": Case(
        ["chat", "model.gguf", "-p", "hi"],
        "model.gguf",
        "cannot load",
        {"model.gguf": bytes(range(256)) * 16},
    ),
    "chat-folder-without-config": Case(
        ["chat", "m", "-p", "hi"], "m", "has no config.json", {"m/weights.bin": b"x"}
    ),
    "chat-not-a-model": Case(["chat", "nothing-here", "-p", "hi"], "nothing-here", "is not"),
    "eval-batch-size-zero": Case(
        ["eval", "{model}", "--data", "d.jsonl", "--batch-size", "0"],
        "--batch-size",
        "greater than or equal to 1",
    ),
    "eval-shots-negative": Case(
        ["eval", "{model}", "--data", "d.jsonl", "--shots", "-1"],
        "--shots",
        "greater than or equal to 0",
    ),
    "eval-limit-zero": Case(
        ["eval", "{model}", "--data", "d.jsonl", "--limit", "0"],
        "--limit",
        "greater than or equal to 1",
    ),
    "eval-max-new-tokens-zero": Case(
        ["eval", "{model}", "--data", "d.jsonl", "--max-new-tokens", "0"],
        "Invalid value for '--max-new-tokens'",
        "Input should be greater than or equal",
    ),
    "eval-seed-negative": Case(
        ["eval", "{model}", "--data", "d.jsonl", "--seed", "-1"],
        "--seed",
        "greater than or equal to 0",
    ),
    "compare-prompts-missing": Case(
        ["compare", "{model}", "{model}", "--prompts", "gone.jsonl"], "gone.jsonl", "not"
    ),
    "preview-zero-samples": Case(
        ["data", "preview", "d.jsonl", "-n", "0"], "-n", "greater than or equal to 1"
    ),
    "convert-onto-its-source": Case(
        ["data", "convert", "d.jsonl", "--to", "messages", "--out", "d.jsonl", "--overwrite"],
        "--out d.jsonl",
        "is the file being converted",
    ),
    "convert-onto-an-existing-file": Case(
        ["data", "convert", "d.jsonl", "--to", "messages", "--out", "notes.txt"],
        "--out notes.txt",
        "exists; pass --overwrite",
    ),
    "check-empty-jsonl": Case(
        ["data", "check", "e.jsonl", "--no-lengths"], "e.jsonl", "holds no records", {"e.jsonl": ""}
    ),
    "check-blank-jsonl": Case(
        ["data", "check", "e.jsonl", "--no-lengths"],
        "e.jsonl",
        "holds no records",
        {"e.jsonl": "\n\n  \n"},
    ),
    "check-empty-json-array": Case(
        ["data", "check", "e.json", "--no-lengths"], "e.json", "holds no records", {"e.json": "[]"}
    ),
    "check-registry-entry-is-text": Case(
        ["data", "check", "dataset_info.json"],
        "dataset_info.json entry `a`",
        "not an object",
        {"dataset_info.json": json.dumps({"a": "text", "b": {"file_name": "d.jsonl"}})},
    ),
    # export: never into or over its own source, never over the user's folders
    "export-over-its-own-run": Case(
        ["export", "{run}", "--out", "{run}", "--overwrite"], "--out", "the run folder"
    ),
    "export-into-its-own-run": Case(
        ["export", "{run}", "--out", "{run}/adapter", "--overwrite"], "--out", "inside the run"
    ),
    "export-over-folder-holding-the-run": Case(
        ["export", "{run}", "--out", "{run}/..", "--overwrite"], "--out", "holds"
    ),
    "export-into-current-directory": Case(
        ["export", "{run}", "--out", ".", "--overwrite"], "--out .", "is the current directory"
    ),
    "export-over-users-folder": Case(
        ["export", "{run}", "--out", "mine", "--overwrite"],
        "mine",
        "is not a tunelab export",
        {"mine/n.txt": "n"},
    ),
    "export-onto-a-file": Case(
        ["export", "{run}", "--out", "out.txt"], "--out out.txt", "is a file", {"out.txt": "x"}
    ),
    "export-not-a-run": Case(
        ["export", "mine", "--out", "x"], "mine", "not a tunelab run folder", {"mine/n.txt": "n"}
    ),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder below `folder`, each file with a hash of its bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        found[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished LoRA run of the tiny model (one step), in a folder of its own."""
    root = tmp_path_factory.mktemp("finished")
    (root / "d.jsonl").write_text(DATA, encoding="utf-8")
    text = fill(recipe(output=f"output: {root / 'run'}\n"), {"model": str(tiny_model_dir)})
    (root / "r.yaml").write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["train", str(root / "r.yaml")])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_cleanly(name, tmp_path, monkeypatch, tiny_model_dir, request):
    case = CASES[name]
    values = {"model": str(tiny_model_dir)}
    if any("{run}" in a for a in case.args):
        values["run"] = str(request.getfixturevalue("finished_run"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "d.jsonl").write_text(DATA, encoding="utf-8")
    (work / "notes.txt").write_text(NOTES, encoding="utf-8")
    for relative, content in case.files.items():
        path = work / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(fill(content, values), encoding="utf-8")
    if name == "empty-data-file":
        (work / "d.jsonl").write_text("", encoding="utf-8")
    monkeypatch.chdir(work)
    for key, value in case.env.items():
        monkeypatch.setenv(key, fill(value, {"work": str(work)}))
    watched = [work] + ([Path(values["run"])] if "run" in values else [])
    before = [snapshot(folder) for folder in watched]

    result = runner.invoke(app, [fill(a, values) for a in case.args])

    output = " ".join(result.output.split())
    assert result.exit_code == case.code, output
    assert "Traceback" not in output and "internal error" not in output, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert case.where in output and case.words in output, output
    assert [snapshot(folder) for folder in watched] == before, "the user's files changed"


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60


def test_internal_errors_name_a_log_with_the_traceback(tmp_path, monkeypatch):
    """A bug is not dressed up as a user error: exit 1, and the traceback is in the log."""
    from tunelab import data_tools

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_tools, "length_stats", broken)
    (tmp_path / "d.jsonl").write_text(DATA, encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(tmp_path / "d.jsonl")])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "internal error: ZeroDivisionError: a bug" in output
    log = Path(output.split("the traceback is in ")[1].rstrip(". "))
    assert "ZeroDivisionError" in log.read_text() and "Traceback" in log.read_text()
    assert "Traceback" not in result.output
