"""From a recipe's data section to training samples: load, check, render, cache, cut, split.

Rendering (chat template + tokenizer) is the slow part, so its untruncated result is cached
under a fingerprint of everything it depends on: the bytes of every data file, the
tokenizer's vocabulary and rules, the template, the data settings and tunelab's version.
Truncation and the validation split are cheap and run after the cache, which holds nothing
that can run code when read (see `tunelab.data.cache`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.cache import CACHE_SUFFIX, DamagedCache, read_cache, write_cache
from tunelab.data.conversation import RowError
from tunelab.data.load import DataReport, load_conversations, raise_for_bad_rows, resolve_source
from tunelab.data.render import (
    IGNORE_INDEX,
    RENDERING,
    ConversationRenderer,
    RenderedSample,
    truncate,
)
from tunelab.data.stats import suggest_max_length
from tunelab.data.transforms import hold_out
from tunelab.errors import TunelabError
from tunelab.locations import cache_dir
from tunelab.ranks import is_local_main
from tunelab.recipe import DataConfig
from tunelab.version import __version__


@dataclass
class RenderedSplit:
    """One split rendered without truncation, with what loading it reported."""

    samples: list[RenderedSample]
    report: DataReport
    fingerprint: str
    from_cache: bool
    seconds: float
    cache_problem: str | None = None  # why a cache entry was thrown away and rebuilt


@dataclass
class PreparedData:
    """Training-ready samples and everything said about them."""

    train: list[RenderedSample]
    eval: list[RenderedSample] | None
    report: DataReport
    max_length: int
    max_length_note: str
    cache_notes: list[str] = field(default_factory=list)
    untruncated: list[RenderedSample] = field(default_factory=list)
    stop_token_trained: int = 0  # training samples whose last trained token is a special one


def fingerprint(
    config: DataConfig,
    base_dir: Path | None,
    split: str,
    tokenizer,
    template: str,
    cut_for: int | None = None,
    template_args: dict | None = None,
) -> str:
    """A hash of everything that decides the rendered samples of a split."""
    digest = hashlib.sha256()
    settings = config.model_dump(
        mode="json",
        include={
            "registry",
            "system",
            "replace",
            "on_bad_row",
            "max_answer_chars",
            "dedupe",
            "reasoning",
        },
    )
    extra = [__version__, RENDERING, split, settings, cut_for, template_args or {}]
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for source in config.sources(split):
        resolved = resolve_source(source, config, base_dir)
        digest.update(
            json.dumps(
                [source.model_dump(), resolved.format, resolved.columns], sort_keys=True
            ).encode()
        )
        digest.update(hashlib.sha256(resolved.file.read_bytes()).digest())
    digest.update(template.encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    digest.update(_code_fingerprint())
    return digest.hexdigest()[:16]


def data_files(config: DataConfig, base_dir: Path | None) -> dict[str, str]:
    """The SHA-256 of every data file the data section reads (train and eval), by path."""
    found = {}
    for split in ("train", "eval"):
        for source in config.sources(split):
            try:
                file = resolve_source(source, config, base_dir).file
            except TunelabError:  # said where the data is read
                continue
            if file.is_file():
                found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


SHAPING_MODULES = (  # tunelab.data modules whose code decides the rendered samples
    "chat_text",
    "conversation",
    "encoding",
    "formats",
    "load",
    "readers",
    "render",
    "template_shape",
    "tool_calls",
    "transforms",
    "validate",
)


def _code_fingerprint() -> bytes:
    """The source of the modules that shape samples, so a code change is a cache miss."""
    digest = hashlib.sha256()
    for name in SHAPING_MODULES:  # this package's own files, read without importing them
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.digest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary, merges, normaliser and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (
        backend.to_str()
        if backend is not None
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256((text + special).encode()).hexdigest()


def render_split(
    config: DataConfig,
    base_dir: Path | None,
    split: str,
    tokenizer,
    template: str,
    use_cache: bool = True,
    cut_for: int | None = None,
    template_args: dict | None = None,
) -> RenderedSplit:
    """Load, check and render a split without truncation, from the cache when possible.

    `cut_for` (a fixed max_length) bounds each record's memory: see ConversationRenderer.
    """
    started = time.perf_counter()
    key = fingerprint(config, base_dir, split, tokenizer, template, cut_for, template_args)
    path = cache_dir() / "data" / f"{key}{CACHE_SUFFIX}"
    problem = None
    if use_cache and path.is_file():
        try:
            samples, report = read_cache(path, len(tokenizer))
            return RenderedSplit(samples, report, key, True, time.perf_counter() - started)
        except DamagedCache as damaged:
            problem = str(damaged)
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, never trusted
    thinking = (template_args or {}).get("enable_thinking")
    conversations, report = load_conversations(config, base_dir, split, thinking=thinking)
    renderer = ConversationRenderer(
        tokenizer, template, max_length=None, cut_for=cut_for, template_args=template_args
    )
    samples, refused = [], 0
    for result in renderer.render_many(conversations):
        if isinstance(result, RowError):
            report.bad_rows.append(str(result))
            refused += 1
        else:
            samples.append(result)
    report.turn_samples = len(samples) - (len(conversations) - refused)
    raise_for_bad_rows(report, config.on_bad_row, split)
    if use_cache and is_local_main():  # one process per machine writes the cache
        write_cache(path, samples, report)
    rendered = RenderedSplit(samples, report, key, False, time.perf_counter() - started)
    rendered.cache_problem = problem
    return rendered


def prepare_data(
    config: DataConfig,
    base_dir: Path | None,
    tokenizer,
    template: str,
    seed: int,
    context: int | None = None,
    template_args: dict | None = None,
) -> PreparedData:
    """Everything the trainer needs from the data section, with notes on what was done.

    `context` (the model's max_position_embeddings) bounds what a record may cost when
    max_length is auto, and the auto cutoff itself.
    """
    cut_for = config.max_length if isinstance(config.max_length, int) else context
    rendered = render_split(
        config, base_dir, "train", tokenizer, template, config.cache, cut_for, template_args
    )
    notes = [_cache_note("train", rendered)]
    report = rendered.report
    if config.max_length == "auto":
        max_length = suggest_max_length(rendered.samples)
        note = f"max_length auto: {max_length} (smallest multiple of 64 losing under 1% of trained tokens)"
        if context and max_length > context:
            max_length, note = context, f"max_length auto: {context} (the model's context)"
    else:
        max_length, note = config.max_length, f"max_length {config.max_length} (from the recipe)"
    train = _cut(rendered.samples, max_length, report, config.on_bad_row)
    evaluation = None
    if config.eval:
        held_out = render_split(
            config, base_dir, "eval", tokenizer, template, config.cache, cut_for, template_args
        )
        notes.append(_cache_note("eval", held_out))
        evaluation = _cut(held_out.samples, max_length, held_out.report, config.on_bad_row)
    elif config.val_ratio:
        train, evaluation, split_note = hold_out(train, config.val_ratio, seed)
        notes.append(split_note)
    report.truncated = sum(s.truncated for s in train)
    stops = set(tokenizer.all_special_ids)
    prepared = PreparedData(train, evaluation, report, max_length, note, notes, rendered.samples)
    prepared.stop_token_trained = sum(ends_with_trained(s, stops) for s in train)
    return prepared


def ends_with_trained(sample: RenderedSample, stop_ids: set[int]) -> bool:
    """Whether the sample's last trained token is a stop (special) token: the model learns to
    end its answer. A truncated answer, or a template that closes turns with plain text, does
    not teach it."""
    last = next((label for label in reversed(sample.labels) if label != IGNORE_INDEX), None)
    return last is not None and last in stop_ids


def _cut(
    samples: list[RenderedSample], max_length: int, report: DataReport, on_bad_row: str
) -> list[RenderedSample]:
    def cut(sample: RenderedSample) -> RenderedSample:
        short = truncate(sample.input_ids, sample.labels, max_length)
        short.location = sample.location
        return short

    return cut_samples(samples, max_length, report, on_bad_row, cut, lambda s: s.trained_tokens > 0)


def cut_samples(samples, max_length: int, report: DataReport, on_bad_row: str, cut, left) -> list:
    """Each sample cut to `max_length` by `cut`; one with no answer token `left` is a bad row
    (on_bad_row: error stops, skip drops it and says where)."""
    kept = []
    for sample in samples:
        short = cut(sample)
        if not left(short):
            problem = f"{sample.location}: no answer token is left after truncation to {max_length}"
            if on_bad_row == "error":
                raise TunelabError(f"{problem}; raise data.max_length.")
            report.bad_rows.append(problem)
            continue
        kept.append(short)
    return kept


def _cache_note(split: str, rendered: RenderedSplit) -> str:
    if rendered.cache_problem:
        return (
            f"{split} data: the cache entry {rendered.fingerprint} was damaged "
            f"({rendered.cache_problem}); tokenized again in {rendered.seconds:.2f} s and rebuilt"
        )
    if rendered.from_cache:
        return (
            f"{split} data: {len(rendered.samples)} samples loaded from the cache "
            f"(fingerprint {rendered.fingerprint}, nothing changed, not tokenized again) "
            f"in {rendered.seconds:.2f} s"
        )
    return (
        f"{split} data: {len(rendered.samples)} samples tokenized in {rendered.seconds:.2f} s "
        f"(cached as {rendered.fingerprint})"
    )
