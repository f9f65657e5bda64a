"""Data doctor: formats from tables, transforms, stats and auto cutoff, cache, preview, convert."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.conftest import SHARED_DATA
from tunelab.cli import app
from tunelab.data import pipeline
from tunelab.data.doctor import preview_segments
from tunelab.data.load import load_conversations
from tunelab.data.render import IGNORE_INDEX, ConversationRenderer
from tunelab.data.stats import cutoff_cost, full_report, suggest_max_length
from tunelab.objectives.collator import PaddingCollator, SampleDataset
from tunelab.recipe import DataConfig

runner = CliRunner()
RECORDS = [{"instruction": f"Say {i}", "input": "", "output": f"{i} " * (i + 1)} for i in range(40)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh data cache (the converted built-in model stays where it is)."""
    folder = tmp_path / "cache"
    monkeypatch.setattr(pipeline, "cache_dir", lambda: folder)
    return folder


def test_csv_parquet_arrow_and_xtuner_read_the_same(tmp_path):
    """Tables and XTuner's conversation lists, top-level or nested under `input`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(RECORDS[:5])
    pq.write_table(table, tmp_path / "d.parquet")
    with (
        pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as writer,
    ):
        writer.write_table(table)
    import csv

    with (tmp_path / "d.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(RECORDS[:5])
    xtuner = [
        {"conversation": [{"input": r["instruction"], "output": r["output"]}]} for r in RECORDS[:5]
    ]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(x) for x in xtuner), encoding="utf-8")
    nested = "\n".join(json.dumps({"input": x}) for x in xtuner)  # input: {conversation: [...]}
    (tmp_path / "n.jsonl").write_text(nested, encoding="utf-8")
    results = {}
    for name in ("d.parquet", "d.arrow", "d.csv", "x.jsonl", "n.jsonl"):
        convs, report = load_conversations(DataConfig(train=[str(tmp_path / name)]))
        results[name] = [c.as_dicts() for c in convs]
        assert report.sources[0]["evidence"].startswith("detected")
    assert results["d.parquet"] == results["d.arrow"] == results["d.csv"] == results["x.jsonl"]
    assert results["n.jsonl"] == results["x.jsonl"]


def test_transforms_report_counts(tmp_path):
    rows = RECORDS[:10] + RECORDS[:3] + [{"instruction": "long", "output": "x" * 500}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    convs, report = load_conversations(
        DataConfig(train=[str(path)], dedupe=True, max_answer_chars=100)
    )
    assert len(convs) == 10
    assert len(report.duplicates_dropped) == 3 and "same as" in report.duplicates_dropped[0]
    assert len(report.long_answers_dropped) == 1 and "[13]" in report.long_answers_dropped[0]
    assert report.as_dict()["kept"] == 10


def test_auto_max_length_is_the_smallest_cutoff_losing_under_one_percent(builtin_tokenizer):
    renderer = ConversationRenderer(builtin_tokenizer, builtin_tokenizer.chat_template)
    convs, _ = load_conversations(
        DataConfig(train=["identity"], replace={"{{name}}": "N", "{{author}}": "A"})
    )
    samples = renderer.render_many(convs)
    chosen = suggest_max_length(samples)
    assert chosen % 64 == 0
    assert cutoff_cost(samples, chosen)["trained_tokens_lost"] < 0.01
    assert cutoff_cost(samples, chosen - 64)["trained_tokens_lost"] >= 0.01
    report = full_report(samples)
    assert report["answer"]["max"] == max(s.trained_tokens for s in samples)
    assert report["total"]["p50"] <= report["total"]["p95"] <= report["total"]["max"]


def test_second_run_reads_the_cache_and_does_not_tokenize(
    tmp_path, cache, builtin_tokenizer, monkeypatch
):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    config = DataConfig(train=[str(path)])
    template = builtin_tokenizer.chat_template
    first = pipeline.render_split(config, None, "train", builtin_tokenizer, template)
    assert not first.from_cache

    def no_rendering(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(ConversationRenderer, "render_many", no_rendering)
    second = pipeline.render_split(config, None, "train", builtin_tokenizer, template)
    assert second.from_cache and second.fingerprint == first.fingerprint
    assert [s.input_ids for s in second.samples] == [s.input_ids for s in first.samples]
    assert [s.labels for s in second.samples] == [s.labels for s in first.samples]
    # A changed setting or file means a new fingerprint.
    changed = DataConfig(train=[str(path)], system="Be brief.")
    assert (
        pipeline.fingerprint(changed, None, "train", builtin_tokenizer, template)
        != first.fingerprint
    )
    path.write_text(json.dumps(RECORDS[:-1]), encoding="utf-8")
    assert (
        pipeline.fingerprint(config, None, "train", builtin_tokenizer, template)
        != first.fingerprint
    )


def test_preview_shows_exactly_the_tokens_the_trainer_trains(tmp_path, cache, builtin_tokenizer):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS[:8]), encoding="utf-8")
    config = DataConfig(train=[str(path)], max_length=24)  # truncation included
    data = pipeline.prepare_data(
        config, None, builtin_tokenizer, builtin_tokenizer.chat_template, seed=0
    )
    batch = PaddingCollator(builtin_tokenizer.pad_token_id)(
        [SampleDataset(data.train)[i] for i in range(len(data.train))]
    )
    for row, sample in enumerate(data.train):
        shown = [
            t
            for _text, ids, trained in preview_segments(sample, builtin_tokenizer)
            if trained
            for t in ids
        ]
        labels = batch["labels"][row]
        assert shown == labels[labels != IGNORE_INDEX].tolist()
        assert shown  # every sample trains something


def test_val_ratio_split_is_seeded(tmp_path, cache, builtin_tokenizer):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    config = DataConfig(train=[str(path)], val_ratio=0.25)
    template = builtin_tokenizer.chat_template
    a = pipeline.prepare_data(config, None, builtin_tokenizer, template, seed=1)
    b = pipeline.prepare_data(config, None, builtin_tokenizer, template, seed=1)
    c = pipeline.prepare_data(config, None, builtin_tokenizer, template, seed=2)
    assert len(a.eval) == 10 and len(a.train) == 30
    assert (
        [s.location for s in a.eval] == [s.location for s in b.eval] != [s.location for s in c.eval]
    )


def test_stats_json_and_histogram(tmp_path, cache):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    png = tmp_path / "h.png"
    result = runner.invoke(app, ["data", "stats", str(path), "--json", "--png", str(png)])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["samples"] == 40 and set(stats["prompt"]) == {
        "min",
        "mean",
        "p50",
        "p90",
        "p95",
        "p99",
        "max",
    }
    assert stats["suggested_max_length"] in [c["cutoff"] for c in stats["cutoffs"]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_plain_marks_trained_text(tmp_path, cache):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS[:2]), encoding="utf-8")
    result = runner.invoke(app, ["data", "preview", str(path), "-n", "2", "--plain"])
    assert result.exit_code == 0, result.output
    assert "[[0 <|im_end|>]]" in result.stdout and "[[1 1 <|im_end|>]]" in result.stdout
    assert "[[<|im_start|>" not in result.stdout


@pytest.mark.parametrize("to", ["messages", "sharegpt", "alpaca"])
def test_convert_round_trips(tmp_path, to):
    source = tmp_path / "in.json"
    rows = [
        {"instruction": "q1", "output": "a1", "system": "s", "history": [["h", "i"]]},
        RECORDS[0],
    ]
    source.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["data", "convert", str(source), "--to", to, "--out", str(out)])
    assert result.exit_code == 0, result.output
    before, _ = load_conversations(DataConfig(train=[str(source)]))
    after, report = load_conversations(DataConfig(train=[str(out)]))
    assert [c.as_dicts() for c in after] == [c.as_dicts() for c in before]
    assert report.sources[0]["format"] == to


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason="../shared/data not present")
def test_gsm8k_is_detected_as_question_answer(cache):
    convs, report = load_conversations(
        DataConfig(train=[str(SHARED_DATA / "gsm8k" / "train.jsonl")])
    )
    assert len(convs) == 7473 and report.sources[0]["format"] == "qa"
    assert convs[0].messages[-1].content.endswith("#### 72")


@pytest.mark.skipif(
    not (SHARED_DATA / "llamafactory").is_dir(), reason="../shared/data not present"
)
@pytest.mark.parametrize("to", ["messages", "sharegpt"])
def test_tool_calls_are_read_as_calls_and_convert_round_trips(tmp_path, to):
    """LLaMA-Factory's glaive tool-call demo: each function_call turn becomes a structured
    call (name, arguments), and converting keeps every call, tool result and schema."""
    source = SHARED_DATA / "llamafactory" / "glaive_toolcall_en_demo.json"
    before, report = load_conversations(DataConfig(train=[str(source)]))
    calls = [call for c in before for m in c.messages for call in m.tool_calls or []]
    assert len(before) == 300 and not report.bad_rows and len(calls) == 211
    assert all(call["function"]["name"] and isinstance(call["function"]["arguments"], dict)
               for call in calls)  # fmt: skip
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["data", "convert", str(source), "--to", to, "--out", str(out)])
    assert result.exit_code == 0, result.output
    after, _ = load_conversations(DataConfig(train=[str(out)]))
    assert [c.as_dicts() for c in after] == [c.as_dicts() for c in before]
    assert [c.tools for c in after] == [c.tools for c in before]
