"""Reasoning as its own part of an assistant turn: read from `reasoning_content`, given to the
templates that render it, written as a think block for those that do not, never dropped."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.data.test_published_templates import _trained_runs
from tests.data.test_template_args import qwen3  # noqa: F401 - the fixture
from tunelab.cli import app
from tunelab.data.load import load_conversations
from tunelab.data.render import ConversationRenderer
from tunelab.recipe import DataConfig

RECORD = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "It is four.", "reasoning_content": "\nAdd them.\n"},
    ]
}


def _load(tmp_path, record=RECORD):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    conversations, _ = load_conversations(DataConfig(train=[str(path)]))
    return conversations[0]


def test_reasoning_content_is_read_apart_from_the_answer(tmp_path):
    conversation = _load(tmp_path)
    answers = [m for m in conversation.messages if m.role == "assistant"]
    assert [(m.content, m.reasoning) for m in answers] == [
        ("Hello!", "Greet back."),
        ("It is four.", "Add them."),
    ]


def test_a_template_that_renders_reasoning_gets_it_as_a_field(tmp_path, qwen3):  # noqa: F811
    tokenizer, template = qwen3
    samples = ConversationRenderer(tokenizer, template).render_all(_load(tmp_path))
    runs = [tokenizer.decode(run) for s in samples for run in _trained_runs(s)]
    assert runs == [
        "<think>\nGreet back.\n</think>\n\nHello!<|im_end|>",
        "<think>\nAdd them.\n</think>\n\nIt is four.<|im_end|>",
    ]


def test_a_template_without_a_place_for_it_gets_a_think_block(tmp_path, builtin_tokenizer):
    renderer = ConversationRenderer(builtin_tokenizer, builtin_tokenizer.chat_template)
    assert not renderer.shape.reads_reasoning
    sample = renderer.render(_load(tmp_path))
    runs = [builtin_tokenizer.decode(run) for run in _trained_runs(sample)]
    assert runs[1] == "<think>\nAdd them.\n</think>\n\nIt is four.<|im_end|>"


def test_reasoning_that_is_not_text_is_a_bad_row(tmp_path):
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                              "reasoning_content": 5}]}  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "check", str(path), "--no-lengths"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "d.jsonl:1 field `messages[1].reasoning_content`" in flat and "must be text" in flat


def test_converting_to_sharegpt_keeps_the_reasoning(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(RECORD) + "\n", encoding="utf-8")
    out = tmp_path / "s.jsonl"
    result = CliRunner().invoke(
        app, ["data", "convert", str(path), "--to", "sharegpt", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    turns = json.loads(out.read_text())["conversations"]
    assert turns[3]["value"] == "<think>\nAdd them.\n</think>\n\nIt is four."


THINK_IN_CONTENT = {
    "messages": [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nIt is four."},
    ]
}


def _loaded(tmp_path, records, **settings):
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    thinking = settings.pop("thinking", None)
    return load_conversations(DataConfig(train=[str(path)], **settings), thinking=thinking)


def test_data_reasoning_keep_strip_and_auto(tmp_path):
    records = [RECORD, THINK_IN_CONTENT]
    kept, report = _loaded(tmp_path, records)
    assert (report.reasoning_turns, report.reasoning_dropped) == (3, 0)
    assert kept[1].messages[1].content.startswith("<think>")  # trained as written

    for settings in ({"reasoning": "strip"}, {"thinking": False}):  # auto follows enable_thinking
        stripped, report = _loaded(tmp_path, records, **settings)
        assert (report.reasoning_turns, report.reasoning_dropped) == (0, 3), settings
        answers = [m for c in stripped for m in c.messages if m.role == "assistant"]
        assert [(m.content, m.reasoning) for m in answers] == [
            ("Hello!", None), ("It is four.", None), ("It is four.", None)
        ]  # fmt: skip
    _, report = _loaded(tmp_path, records, reasoning="keep", thinking=False)
    assert report.reasoning_turns == 3


def test_data_check_and_stats_report_reasoning(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(THINK_IN_CONTENT) + "\n")
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "answers with reasoning: 3" in result.output
    stats = CliRunner().invoke(
        app, ["data", "stats", str(path), "--json", "--png", str(tmp_path / "h.png")]
    )
    reasoning = json.loads(stats.stdout)["reasoning"]
    assert reasoning["answers"] == 3 and reasoning["dropped"] == 0
    assert 0.2 < reasoning["token_share"] < 0.8 and reasoning["reasoning_tokens"] > 5


def test_gsm8k_scores_the_answer_after_the_reasoning():
    from tunelab.evaluation.gsm8k import Problem
    from tunelab.evaluation.gsm8k import judge as _scored

    problem = Problem(question="2 + 10?", answer="2 + 10 = 12\n#### 12")
    output = "<think>\nFirst guess: #### 9. No, add again: 12.\n</think>\n\nIt is 12.\n#### 12"
    record = _scored(problem, output, opened=False)
    assert record["strict_correct"] and record["strict"] == "12"
    assert record["reasoning"].startswith("First guess")
    opened = _scored(problem, "Guess #### 9 then 12.\n</think>\n\n#### 12", opened=True)
    assert opened["strict"] == "12"
    plain = _scored(problem, "#### 12", opened=False)
    assert "reasoning" not in plain and plain["strict_correct"]


def test_data_preview_shows_a_reasoning_conversation_as_trained(tmp_path, tiny_model_dir):
    """With the qwen3 template the earlier answer drops its reasoning once the conversation goes
    on, so each turn is its own sample, trained as generated: reasoning, answer, stop token."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(RECORD) + "\n", encoding="utf-8")
    recipe = {"model": {"path": str(tiny_model_dir), "template": "qwen3"}, "data": {"train": [str(path)]},
              "method": {"type": "lora"}, "output": str(tmp_path / "run")}  # fmt: skip
    (tmp_path / "r.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    result = CliRunner(env={"COLUMNS": "300"}).invoke(
        app, ["data", "preview", str(tmp_path / "r.yaml"), "--plain"]
    )
    assert result.exit_code == 0, result.output
    flat = result.output
    assert "[[<think>\nGreet back.\n</think>\n\nHello!<|im_end|>]]" in flat
    assert "[[<think>\nAdd them.\n</think>\n\nIt is four.<|im_end|>]]" in flat
    assert "[[" not in flat.split("What is two plus two?")[0].split("Hello!")[-1]


def test_llamafactory_reasoning_and_tool_call_parts_are_read(tmp_path):
    """LLaMA-Factory's reason_tool_use_demo_50: content parts of type text, reasoning and
    tool_call, each with its text under `value`."""
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "llamafactory" / "reason_tool_use_demo_50.jsonl"
    if not path.is_file():
        import pytest

        pytest.skip(f"{path} is not there")
    conversations, report = load_conversations(DataConfig(train=[str(path)]))
    assert len(conversations) == 50 and not report.bad_rows
    assert report.reasoning_turns == 112  # every assistant turn of the file has a reasoning part
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    parts = first["messages"][2]["content"]
    answer = conversations[0].messages[2]
    assert answer.reasoning == next(p["value"] for p in parts if p["type"] == "reasoning").strip()
    assert answer.content == next(p["value"] for p in parts if p["type"] == "text")
    calls = [call for c in conversations for m in c.messages for call in m.tool_calls or []]
    assert len(calls) == 68  # every tool_call part, as a call with its name and arguments
    assert calls[0]["function"] == {
        "name": "get_movie_details",
        "arguments": {"title": "Inception"},
    }
    assert not any(
        m.content.lstrip().startswith('{"name"') for c in conversations for m in c.messages
    )
    assert conversations[0].tools  # the record's tool schemas are kept

    bad = {"messages": [{"role": "user", "content": [{"type": "image_url", "value": "x.png"}]},
                        {"role": "assistant", "content": "ok"}]}  # fmt: skip
    (tmp_path / "b.jsonl").write_text(json.dumps(bad) + "\n", encoding="utf-8")
    config = DataConfig(train=[str(tmp_path / "b.jsonl")], on_bad_row="skip")
    _, report = load_conversations(config, allow_empty=True)
    assert "messages[0].content[0].type" in report.bad_rows[0]
    assert "'image_url' is not supported (text, reasoning and tool_call are)" in report.bad_rows[0]
