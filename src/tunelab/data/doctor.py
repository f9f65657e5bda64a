"""What `tunelab data` does: check, stats, preview and convert, on a recipe, file or registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.conversation import Conversation
from tunelab.data.load import DataReport, load_conversations
from tunelab.data.preference import KTO, PAIR, read_preferences
from tunelab.data.registry import RegistryEntry, lookup, read_registry
from tunelab.data.render import IGNORE_INDEX, RenderedSample
from tunelab.errors import TunelabError
from tunelab.recipe import DataConfig, Recipe, load_recipe


@dataclass
class Target:
    """What the user pointed at, as data settings plus the model whose tokenizer measures it."""

    description: str
    config: DataConfig
    base_dir: Path | None
    model: str = "smollm2-135m-instruct"
    template: str = "auto"
    registry_entries: list[dict] = field(default_factory=list)
    template_args: dict = field(default_factory=dict)
    trust_remote_code: bool = False  # the recipe's model.trust_remote_code
    objective: str = "sft"  # the recipe's train.objective, whose rows are read


def open_target(path: str | Path, model: str | None = None) -> Target:
    """A recipe (.yaml), a data file, or a dataset_info.json registry."""
    path = Path(path)
    if not path.exists():
        raise TunelabError(
            f"{path} does not exist; give a recipe, a data file or a dataset_info.json."
        )
    if path.suffix.lower() in {".yaml", ".yml"}:
        recipe: Recipe = load_recipe(path)
        return Target(
            str(path),
            recipe.data,
            recipe.source_dir,
            model or recipe.model.path,
            recipe.model.template,
            template_args=recipe.model.template_args,
            trust_remote_code=recipe.model.trust_remote_code,
            objective=recipe.train.objective,
        )
    if path.name == "dataset_info.json" or _looks_like_registry(path):
        return _registry_target(path, model)
    config = DataConfig(train=[str(path)], on_bad_row="skip")
    return Target(str(path), config, None, model or "smollm2-135m-instruct")


def _looks_like_registry(path: Path) -> bool:
    if path.suffix.lower() != ".json" or path.stat().st_size > 5_000_000:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (
        isinstance(data, dict)
        and bool(data)
        and all(
            isinstance(v, dict) and ("file_name" in v or "hf_hub_url" in v or "ms_hub_url" in v)
            for v in data.values()
        )
    )


def _registry_target(path: Path, model: str | None) -> Target:
    """Every local SFT entry becomes a source; the others are described, not loaded."""
    entries, usable = [], []
    for name, raw in read_registry(path).items():
        if not isinstance(raw, dict):
            lookup(path, name)  # says what is wrong with the entry
        if "file_name" not in raw:
            entries.append({"name": name, "status": "hub only (not downloaded)"})
            continue
        try:
            entry: RegistryEntry = lookup(path, name)
        except TunelabError as problem:
            entries.append({"name": name, "status": "missing file", "problem": str(problem)})
            continue
        if entry.kind in (PAIR, KTO):
            entries.append(_preference_entry(entry))
            continue
        if entry.kind != "sft":
            entries.append({"name": name, "status": f"{entry.kind} data (not SFT), not checked"})
            continue
        entries.append({"name": name, "status": "sft"})
        usable.append(name)
    config = DataConfig(train=usable or ["-"], registry=str(path), on_bad_row="skip")
    return Target(
        str(path), config, None, model or "smollm2-135m-instruct", registry_entries=entries
    )


def _preference_entry(entry: RegistryEntry) -> dict:
    """A preference or KTO entry, every row checked as such."""
    rows, bad = read_preferences(entry.file, entry.kind, entry.columns)
    what = "pairs" if entry.kind == PAIR else "rated answers"
    extra = f" ({sum(r.label for r in rows)} desirable)" if entry.kind == KTO else ""
    status = f"{entry.kind}: {len(rows)} {what}{extra}, {len(bad)} bad"
    return {"name": entry.name, "status": status, "bad_rows": bad}


@dataclass
class CheckResult:
    report: DataReport
    conversations: list[Conversation]
    registry_entries: list[dict]
    preference_rows: int = 0  # rows read as pairs, rated answers or prompts (not SFT)

    @property
    def empty_sources(self) -> list[str]:
        """Sources that hold no record at all (an empty or blank file)."""
        return [s["name"] for s in self.report.sources if s["read"] == 0]

    @property
    def problems(self) -> int:
        missing = sum(1 for e in self.registry_entries if e["status"] == "missing file")
        preference = sum(len(e.get("bad_rows", [])) for e in self.registry_entries)
        return len(self.report.bad_rows) + missing + preference + len(self.empty_sources)


def check(target: Target, read: tuple[list, DataReport] | None = None) -> CheckResult:
    """Read every record of every source, collecting all bad rows instead of stopping;
    `read`: the (rows, report) an objective read itself (prompts, pairs), else conversations
    are read here."""
    if read is not None:
        rows, report = read
        return CheckResult(report, [], target.registry_entries, len(rows))
    config = target.config.model_copy(update={"on_bad_row": "skip"})
    if target.registry_entries and not any(e["status"] == "sft" for e in target.registry_entries):
        return CheckResult(DataReport(), [], target.registry_entries)
    thinking = target.template_args.get("enable_thinking")
    conversations, report = load_conversations(
        config, target.base_dir, allow_empty=True, thinking=thinking
    )
    return CheckResult(report, conversations, target.registry_entries)


def preview_segments(sample: RenderedSample, tokenizer) -> list[tuple[str, list[int], bool]]:
    """The sample as runs of (text, token ids, trained), exactly as the labels mark them."""
    segments: list[tuple[str, list[int], bool]] = []
    run: list[int] = []
    trained = None
    for token, label in zip(sample.input_ids, sample.labels):
        is_trained = label != IGNORE_INDEX
        if trained is not None and is_trained != trained:
            segments.append((tokenizer.decode(run), run, trained))
            run = []
        run.append(token)
        trained = is_trained
    if run:
        segments.append((tokenizer.decode(run), run, bool(trained)))
    return segments


def convert_records(conversations: list[Conversation], to: str) -> list[dict]:
    """Canonical conversations written in another format."""
    writer = _WRITERS.get(to)
    if writer is None:
        raise TunelabError(
            f"--to {to} is not a format tunelab writes; use one of {', '.join(_WRITERS)}."
        )
    return [writer(c) for c in conversations]


def _to_messages(conversation: Conversation) -> dict:
    record = {"messages": conversation.as_dicts()}
    if conversation.tools:
        record["tools"] = conversation.tools
    return record


_SHAREGPT_TAGS = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def _to_sharegpt(conversation: Conversation) -> dict:
    turns = [_sharegpt_turn(m, conversation) for m in conversation.messages]
    record = {"conversations": turns}
    if conversation.tools:
        record["tools"] = conversation.tools
    return record


def _sharegpt_turn(message, conversation: Conversation) -> dict:
    """One sharegpt turn; a turn that calls tools is a function_call turn holding the calls."""
    if not message.tool_calls:
        return {"from": _SHAREGPT_TAGS[message.role], "value": message.with_reasoning()}
    if message.content.strip() or message.reasoning:
        raise TunelabError(
            f"{conversation.location}: has a turn with text and tool calls, which sharegpt "
            "cannot hold; convert to messages."
        )
    calls = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in message.tool_calls
    ]
    value = calls[0] if len(calls) == 1 else calls
    return {"from": "function_call", "value": json.dumps(value, ensure_ascii=False)}


def _to_alpaca(conversation: Conversation) -> dict:
    messages = list(conversation.messages)
    record: dict = {}
    if messages[0].role == "system":
        record["system"] = messages.pop(0).content
    if any(m.role == "tool" or m.tool_calls for m in messages):
        raise TunelabError(
            f"{conversation.location}: has tool turns, which alpaca cannot hold; convert to messages."
        )
    if [m.role for m in messages] != ["user", "assistant"] * (len(messages) // 2):
        raise TunelabError(
            f"{conversation.location}: turns do not alternate user/assistant, which alpaca needs; "
            "convert to messages."
        )
    pairs = [
        (messages[i].content, messages[i + 1].with_reasoning()) for i in range(0, len(messages), 2)
    ]
    *history, last = pairs
    record.update({"instruction": last[0], "input": "", "output": last[1]})
    if history:
        record["history"] = [list(p) for p in history]
    return record


_WRITERS = {"messages": _to_messages, "sharegpt": _to_sharegpt, "alpaca": _to_alpaca}
