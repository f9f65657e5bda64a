"""Source formats, registries and bad rows, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tunelab.data.load import load_conversations
from tunelab.errors import TunelabError
from tunelab.recipe import DataConfig

LLAMAFACTORY = SHARED_DATA / "llamafactory"
needs_shared = pytest.mark.skipif(not LLAMAFACTORY.is_dir(), reason="../shared/data not present")


def load(tmp_path: Path, records, suffix=".json", **config):
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text(
            "\n".join(
                r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records
            )
            + "\n",
            encoding="utf-8",
        )
    else:
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return load_conversations(DataConfig(train=[str(path)], **config))


def roles(conversation):
    return [(m.role, m.content) for m in conversation.messages]


def test_alpaca_with_system_input_and_history(tmp_path):
    convs, report = load(
        tmp_path,
        [
            {
                "instruction": "Translate",
                "input": "bonjour",
                "output": "hello",
                "system": "You translate.",
                "history": [["Hi", "Hello!"]],
            }
        ],
    )
    assert roles(convs[0]) == [
        ("system", "You translate."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Translate\nbonjour"),
        ("assistant", "hello"),
    ]
    assert report.sources[0]["format"] == "alpaca"


def test_sharegpt_and_messages_jsonl(tmp_path):
    convs, _ = load(
        tmp_path,
        [
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
            {
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "c"},
                    {"from": "gpt", "value": "d"},
                ]
            },
        ],
        suffix=".jsonl",
    )
    assert roles(convs[0]) == [("user", "a"), ("assistant", "b")]
    assert roles(convs[1])[0] == ("system", "s")
    convs, report = load(
        tmp_path,
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x"}]},
                    {"role": "assistant", "content": "y"},
                ]
            }
        ],
        suffix=".jsonl",
    )
    assert roles(convs[0]) == [("user", "x"), ("assistant", "y")]
    assert report.sources[0]["format"] == "messages"


def test_placeholders_are_replaced_and_unreplaced_ones_are_bad_rows(tmp_path):
    rows = [{"instruction": "who", "input": "", "output": "I am {{name}}."}]
    convs, report = load(tmp_path, rows, replace={"{{name}}": "Dali"})
    assert convs[0].messages[-1].content == "I am Dali." and report.placeholders_replaced == 1
    with pytest.raises(TunelabError, match=r"unreplaced placeholder \{\{name\}\}"):
        load(tmp_path, rows)


def test_bad_rows_are_all_listed_with_location(tmp_path):
    lines = [
        json.dumps({"instruction": "ok", "output": "fine"}),
        '{"instruction": "broken", ',
        json.dumps({"instruction": "no output"}),
        json.dumps({"instruction": "", "input": "", "output": "x"}),
    ]
    with pytest.raises(TunelabError) as info:
        load(tmp_path, lines, suffix=".jsonl")
    message = str(info.value)
    assert "3 bad row(s)" in message
    assert "data.jsonl:2: broken JSON" in message
    assert "data.jsonl:3 field `output`: missing" in message
    assert "data.jsonl:4 field `instruction`: is empty" in message


def test_skip_counts_every_skipped_row(tmp_path):
    rows = [
        {"instruction": "a", "output": "b"},
        {"instruction": "c", "output": 5.5},
        {"conversations": "nope"},
        {"instruction": "d", "output": ["list"]},
    ]
    convs, report = load(tmp_path, rows, on_bad_row="skip")
    assert len(convs) == 2  # 5.5 is read as text
    assert len(report.bad_rows) == 2 and report.sources[0]["bad"] == 2
    assert report.sources[0]["read"] == 4
    assert any("[3] field `output`: must be text" in r for r in report.bad_rows)


def test_sharegpt_unknown_role_and_order(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]},
        {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
        {"conversations": [{"from": "human", "value": "a"}]},
    ]
    with pytest.raises(TunelabError) as info:
        load(tmp_path, rows)
    message = str(info.value)
    assert "[0] field `conversations[1].from`: unknown role 'bot'" in message
    assert (
        "[1] field `turn 0 (assistant)`: a assistant turn as the first turn is out of order"
        in message
    )
    assert "[2]" in message


def test_unknown_format_is_one_clear_error(tmp_path):
    with pytest.raises(TunelabError, match="cannot tell the data format"):
        load(tmp_path, [{"q": "question", "a": "answer"}])


def test_builtin_identity_has_both_languages():
    convs, report = load_conversations(
        DataConfig(train=["identity"], replace={"{{name}}": "N", "{{author}}": "A"})
    )
    assert 50 <= len(convs) <= 150
    text = " ".join(m.content for c in convs for m in c.messages)
    assert "我是N" in text and "I'm N" in text


@needs_shared
@pytest.mark.parametrize(
    "name, count, first_role",
    [
        ("alpaca_en_demo", 999, "user"),
        ("alpaca_zh_demo", 1000, "user"),
        ("glaive_toolcall_en_demo", 300, "user"),
    ],
)
def test_llamafactory_registry_entries_load_as_they_are(name, count, first_role):
    convs, report = load_conversations(
        DataConfig(train=[name], registry=str(LLAMAFACTORY / "dataset_info.json"))
    )
    assert len(convs) == count and not report.bad_rows
    assert convs[0].messages[0].role == first_role


@needs_shared
def test_registry_identity_needs_replacement_and_preference_data_is_named():
    registry = str(LLAMAFACTORY / "dataset_info.json")
    with pytest.raises(TunelabError, match="unreplaced placeholder"):
        load_conversations(DataConfig(train=["identity"], registry=registry))
    convs, _ = load_conversations(
        DataConfig(
            train=["identity"], registry=registry, replace={"{{name}}": "X", "{{author}}": "Y"}
        )
    )
    assert len(convs) == 91
    with pytest.raises(TunelabError, match="dpo_en_demo.* is preference data"):
        load_conversations(DataConfig(train=["dpo_en_demo"], registry=registry))
    with pytest.raises(TunelabError, match="mllm_demo.json is missing"):
        load_conversations(DataConfig(train=["mllm_demo"], registry=registry))


def test_source_limit_takes_the_first_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(10))
    )
    convs, report = load_conversations(DataConfig(train=[{"path": str(path), "limit": 3}]))
    assert [c.messages[0].content for c in convs] == ["q0", "q1", "q2"]
    assert report.sources[0]["read"] == 3
