"""A corpus of bad inputs: each gives one clear message with its location, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import SHARED_DATA
from tunelab.cli import app

runner = CliRunner()


def jsonl(*records) -> bytes:
    return (
        b"\n".join(
            r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()
            for r in records
        )
        + b"\n"
    )


def array(*records) -> bytes:
    return json.dumps(list(records), ensure_ascii=False).encode()


OK = {"instruction": "q", "output": "a"}
SG_OK = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}

# name: (file name, bytes, expected location, expected words)
CASES = {
    "jsonl-broken-json": (
        "d.jsonl",
        jsonl(OK, b'{"instruction": "x", '),
        "d.jsonl:2",
        "broken JSON",
    ),
    "json-broken-json": (
        "d.json",
        b'[{"instruction": "x",\n "output": }]',
        "d.json:2",
        "broken JSON",
    ),
    "json-lines-in-json-file": ("d.json", jsonl(OK, OK), "d.json:2", ".jsonl"),
    "json-not-an-array": ("d.json", b'"just a string"', "d.json", "expected a JSON array"),
    "json-empty-file": ("d.json", b"", "d.json", "is empty"),
    "record-not-an-object": ("d.json", array(OK, "text"), "d.json[1]", "must be a JSON object"),
    "record-null": ("d.json", array(OK, None), "d.json[1]", "must be a JSON object"),
    "alpaca-missing-output": (
        "d.json",
        array(OK, {"instruction": "q"}),
        "d.json[1] field `output`",
        "missing",
    ),
    "alpaca-empty-output": (
        "d.json",
        array(OK, {"instruction": "q", "output": "  "}),
        "d.json[1] field `output`",
        "is empty",
    ),
    "alpaca-output-list": (
        "d.json",
        array(OK, {"instruction": "q", "output": ["a"]}),
        "d.json[1] field `output`",
        "must be text",
    ),
    "alpaca-no-question": (
        "d.json",
        array(OK, {"instruction": "", "input": "", "output": "a"}),
        "d.json[1] field `instruction`",
        "is empty",
    ),
    "alpaca-history-not-list": (
        "d.json",
        array(OK, {**OK, "history": "hi"}),
        "d.json[1] field `history`",
        "must be a list of [question, answer] pairs",  # printed as written, not as markup
    ),
    "alpaca-history-bad-pair": (
        "d.json",
        array(OK, {**OK, "history": [["only one"]]}),
        "d.json[1] field `history[0]`",
        "pair",
    ),
    "alpaca-system-not-text": (
        "d.json",
        array(OK, {**OK, "system": {"a": 1}}),
        "d.json[1] field `system`",
        "must be text",
    ),
    "sharegpt-missing-list": (
        "d.jsonl",
        jsonl(SG_OK, {"messages_x": []}),
        "d.jsonl:2 field `conversations`",
        "missing",
    ),
    "sharegpt-not-a-list": (
        "d.jsonl",
        jsonl(SG_OK, {"conversations": "hi"}),
        "d.jsonl:2 field `conversations`",
        "non-empty list",
    ),
    "sharegpt-empty-list": (
        "d.jsonl",
        jsonl(SG_OK, {"conversations": []}),
        "d.jsonl:2 field `conversations`",
        "non-empty list",
    ),
    "sharegpt-turn-not-object": (
        "d.jsonl",
        jsonl(SG_OK, {"conversations": ["hi"]}),
        "d.jsonl:2 field `conversations[0]`",
        "must be an object",
    ),
    "sharegpt-unknown-role": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
        ),
        "d.jsonl:2 field `conversations[1].from`",
        "unknown role 'bot'",
    ),
    "sharegpt-empty-content": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "a"}]},
        ),
        "d.jsonl:2 field `conversations[0].value`",
        "is empty",
    ),
    "sharegpt-content-number-dict": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {
                "conversations": [
                    {"from": "human", "value": {"x": 1}},
                    {"from": "gpt", "value": "a"},
                ]
            },
        ),
        "d.jsonl:2 field `conversations[0].value`",
        "must be text",
    ),
    "assistant-first": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {
                "conversations": [
                    {"from": "gpt", "value": "a"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "b"},
                ]
            },
        ),
        "d.jsonl:2 field `turn 0 (assistant)`",
        "out of order",
    ),
    "two-user-turns": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {
                "conversations": [
                    {"from": "human", "value": "a"},
                    {"from": "human", "value": "b"},
                    {"from": "gpt", "value": "c"},
                ]
            },
        ),
        "d.jsonl:2 field `turn 1 (user)`",
        "out of order",
    ),
    "no-assistant-turn": (
        "d.jsonl",
        jsonl(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
        ),
        "d.jsonl:2",
        "no assistant turn",
    ),
    "ends-with-user": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                    {"from": "human", "value": "more?"},
                ]
            },
        ),
        "d.jsonl:2",
        "ends with a user turn",
    ),
    "system-not-first": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "system", "value": "s"},
                    {"from": "gpt", "value": "a"},
                ]
            },
        ),
        "d.jsonl:2 field `turn 1 (system)`",
        "out of order",
    ),
    "tool-result-without-call": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "observation", "value": "{}"},
                    {"from": "gpt", "value": "a"},
                ]
            },
        ),
        "d.jsonl:2 field `turn 1 (tool)`",
        "out of order",
    ),
    "function-call-not-json": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "function_call", "value": "search(q)"},
                    {"from": "observation", "value": "{}"},
                    {"from": "gpt", "value": "a"},
                ]
            },
        ),
        "d.jsonl:2 field `conversations[1].value`",
        "a tool call must be JSON",
    ),
    "tool-call-arguments-not-json": (
        "d.jsonl",
        jsonl(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"type": "function", "function": {"name": "f", "arguments": "{x"}}
                        ],
                    },
                    {"role": "tool", "content": "{}"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ),
        "d.jsonl:1 field `messages[1].tool_calls[0].function.arguments`",
        "is not valid JSON",
    ),
    "tools-not-json": (
        "d.jsonl",
        jsonl(SG_OK, {**SG_OK, "tools": "[{broken"}),
        "d.jsonl:2 field `tools`",
        "not valid JSON",
    ),
    "unreplaced-placeholder": (
        "d.json",
        array(OK, {"instruction": "who?", "output": "I am {{name}}."}),
        "d.json[1] field `turn 1 (assistant)`",
        "unreplaced placeholder {{name}}",
    ),
    "jsonl-bad-utf8-line": (
        "d.jsonl",
        jsonl(OK, b'{"instruction": "caf\xe9", "output": "x"}'),
        "d.jsonl:2",
        "not valid UTF-8",
    ),
    "json-bad-utf8": (
        "d.json",
        b'[{"instruction": "caf\xe9", "output": "x"}]',
        "d.json:1",
        "not valid UTF-8",
    ),
    "json-lone-surrogate": (  # a pair (an emoji) is fine; half of one is not text
        "d.json",
        b'[{"instruction": "hi \\ud83d\\ude00", "output": "x"},'
        b' {"instruction": "q", "output": "cut \\ud83d"}]',
        "d.json[1] field `output`",
        "lone UTF-16 surrogate (\\ud83d",
    ),
    "jsonl-lone-surrogate": (
        "d.jsonl",
        jsonl(
            OK,
            b'{"conversations": [{"from": "human", "value": "\\udc00?"},'
            b' {"from": "gpt", "value": "x"}]}',
        ),  # fmt: skip
        "d.jsonl:2 field `conversations[0].value`",
        "lone UTF-16 surrogate (\\udc00",
    ),
    "unsupported-extension": ("d.txt", b"hello", "d.txt", "unsupported data file type"),
    "unknown-layout": (
        "d.jsonl",
        jsonl({"q": "x", "a": "y"}),
        "d.jsonl:1",
        "cannot tell the data format",
    ),
    "content-parts-not-text": (
        "d.jsonl",
        jsonl(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ),
        "d.jsonl:1 field `messages[0].content[0].type`",
        "content part 'image_url' is not supported (text, reasoning and tool_call are)",
    ),
    "xtuner-missing-output": (
        "d.jsonl",
        jsonl(
            {"conversation": [{"input": "q", "output": "a"}]}, {"conversation": [{"input": "q"}]}
        ),
        "d.jsonl:2 field `conversation[0].output`",
        "missing",
    ),
    "xtuner-nested-missing-output": (
        "d.jsonl",
        jsonl({"input": {"conversation": [{"input": "q"}]}}),
        "d.jsonl:1 field `input.conversation[0].output`",
        "missing",
    ),
    "xtuner-late-system": (
        "d.jsonl",
        jsonl(
            {
                "conversation": [
                    {"input": "q", "output": "a"},
                    {"system": "s", "input": "q", "output": "a"},
                ]
            }
        ),
        "d.jsonl:1 field `conversation[1].system`",
        "first turn",
    ),
    "system-given-twice": (
        "d.jsonl",
        jsonl(
            SG_OK,
            {
                "system": "s",
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                ],
            },
        ),
        "d.jsonl:2 field `system`",
        "given twice",
    ),
    "csv-short-row": (
        "d.csv",
        b"instruction,input,output\nq,,a\nonly one cell\n",
        "d.csv:3",
        "fewer cells",
    ),
    "csv-long-row": ("d.csv", b"instruction,input,output\nq,,a\nq,,a,extra\n", "d.csv:3", "cells"),
    "csv-empty-answer": (
        "d.csv",
        b"instruction,input,output\nq,,a\nq2,,\n",
        "d.csv:3 field `output`",
        "is empty",
    ),
    "parquet-not-parquet": ("d.parquet", b"not parquet at all", "d.parquet", "not a readable"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_message(tmp_path, name):
    filename, content, location, words = CASES[name]
    path = tmp_path / filename
    path.write_bytes(content)
    result = runner.invoke(app, ["data", "check", str(path), "--no-lengths"])
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output and "internal error" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    flat = " ".join(output.split())
    assert f"{tmp_path}/{location}" in flat or location in flat, output
    assert words in flat, output


def test_there_are_at_least_30_kinds():
    assert len(CASES) >= 30


def test_train_with_bad_rows_stops_listing_all_of_them(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl(OK, {"instruction": "q"}, b"{broken", OK, {"output": ""}))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  train: [{data}]\noutput: {tmp_path / 'run'}\n")
    result = runner.invoke(app, ["train", str(recipe)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2
    assert (
        "3 bad row(s)" in flat
        and "d.jsonl:2" in flat
        and "d.jsonl:3" in flat
        and "d.jsonl:5" in flat
    )
    assert "on_bad_row: skip" in flat


@pytest.mark.parametrize(
    "entry, words",
    [
        ("mllm_demo", "mllm_demo.json is missing"),
        ("kto_en_demo", "is kto data, not supervised"),
        ("c4_demo", "is pretraining data, not supervised"),
        ("alpaca_en", "points to the hub"),
        ("alpaca_en_dem", "did you mean `alpaca_en_demo`"),
    ],
)
def test_registry_entries_that_cannot_train_say_why(tmp_path, entry, words):
    registry = SHARED_DATA / "llamafactory" / "dataset_info.json"
    if not registry.is_file():
        pytest.skip("../shared/data not present")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"data:\n  train: [{entry}]\n  registry: {registry}\noutput: {tmp_path / 'run'}\n"
    )
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2
    assert words in " ".join(result.output.split())


def test_a_registry_that_is_not_utf8_names_its_line(tmp_path):
    registry = tmp_path / "dataset_info.json"
    registry.write_bytes(
        '{\n  "mine": {\n    "file_name": "caf\u00e9.json"\n  }\n}\n'.encode("latin-1")
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"data:\n  train: [mine]\n  registry: {registry}\noutput: {tmp_path / 'run'}\n"
    )
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"{registry}:3: the registry is not UTF-8 text" in said and "save it as UTF-8" in said


def test_sft_on_rated_kto_rows_is_refused_not_trained(tmp_path):
    data = SHARED_DATA / "llamafactory" / "kto_en_demo.json"
    if not data.is_file():
        pytest.skip("../shared/data not present")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  train: [{data}]\noutput: {tmp_path / 'run'}\n")
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "the rows are rated answers (a `label` true or false, KTO data)" in said
    assert "train.objective: kto" in said and not (tmp_path / "run").exists()
