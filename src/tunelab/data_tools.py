"""What `tunelab data stats`, `data preview` and `data check` compute, and the data a recipe
trains on, each through the recipe's objective (its own rows, lengths and preview).

(The checks that need no tokenizer live in `tunelab.data.doctor`.)
"""

from __future__ import annotations

from pathlib import Path

from tunelab.data.doctor import CheckResult, Target, check
from tunelab.data.render import RenderedSample
from tunelab.objectives import get_objective, objective_of


def _tokenizer_and_template(target: Target):
    from tunelab.models.load import load_tokenizer
    from tunelab.models.sources import resolve_model
    from tunelab.quiet import quiet_libraries
    from tunelab.templates import resolve_template

    quiet_libraries()
    tokenizer = load_tokenizer(resolve_model(target.model, target.trust_remote_code))
    return tokenizer, resolve_template(target.template, tokenizer, target.base_dir)


def length_stats(target: Target, png: Path | None = None) -> dict:
    """Render the target's data (cached), then measure it; optionally save the histogram."""
    from tunelab.data.stats import PLOT_KIND, save_histogram
    from tunelab.outputs import check_target

    if png is not None:  # refused before the work, not after it
        check_target(Path(png), PLOT_KIND)
    tokenizer, template = _tokenizer_and_template(target)
    stats, sequences = get_objective(target.objective).lengths(target, tokenizer, template)
    if png is not None:
        suggested = stats.get("suggested_max_length")
        stats["histogram"] = str(save_histogram(sequences, png, suggested))
    return stats


def check_data(target: Target) -> CheckResult:
    """Every record of every source read, all bad rows collected instead of stopping: the
    objective's own rows (prompts, pairs), else conversations."""
    config = target.config.model_copy(update={"on_bad_row": "skip"})
    return check(target, get_objective(target.objective).read_rows(target, config))


def recipe_data(recipe, source, config=None):
    """(tokenizer, template, prepared data) for a recipe's model, as training gets them: its
    template and template arguments, records bounded by the model's context, in the form its
    objective trains on."""
    from tunelab.models.load import load_config, load_tokenizer
    from tunelab.templates import resolve_template

    tokenizer = load_tokenizer(source)
    template = resolve_template(recipe.model.template, tokenizer, recipe.source_dir)
    config = config if config is not None else load_config(source)
    context = getattr(config, "max_position_embeddings", None)
    return tokenizer, template, objective_of(recipe).prepare(recipe, tokenizer, template, context)


def preview_samples(target: Target, n: int) -> tuple[list[RenderedSample], object]:
    """The first `n` training sequences as the trainer gets them, and their tokenizer."""
    tokenizer, template = _tokenizer_and_template(target)
    return get_objective(target.objective).preview(target, tokenizer, template, n), tokenizer


CONVERTED = "converted data file"


def convert_file(
    source: Path, to: str, out: Path, fmt: str = "auto", overwrite: bool = False
) -> int:
    """`source` rewritten as `to` (messages, sharegpt or alpaca) into `out` (.jsonl, or .json
    for one array); every bad row is reported and none is written. The records written."""
    import json

    from tunelab.data.doctor import convert_records
    from tunelab.data.load import load_conversations
    from tunelab.errors import TunelabError
    from tunelab.outputs import check_target, write_file
    from tunelab.recipe import DataConfig, DataSource

    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise TunelabError(f"--out {out} is the file being converted; write to another file.")
    if out.is_dir():
        raise TunelabError(f"--out {out} is a folder; give a .jsonl or .json file.")
    if out.exists() and not overwrite:
        raise TunelabError(f"--out {out} exists; pass --overwrite to replace it.")
    check_target(out, CONVERTED)  # --overwrite replaces only a file this command wrote
    config = DataConfig(train=[DataSource(path=str(source), format=fmt)])
    conversations, _ = load_conversations(config)
    records = convert_records(conversations, to)
    if out.suffix.lower() == ".json":
        text = json.dumps(records, ensure_ascii=False, indent=1)
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_file(out, text, CONVERTED)
    return len(records)


def check_command(console, target: Path, model: str | None, lengths: bool) -> int:
    """`tunelab data check`: every bad row shown, then the lengths (`lengths`); the count of
    problems."""
    from tunelab.data.doctor import open_target
    from tunelab.data.views import show_check, show_stats

    found = open_target(target, model)
    result = check_data(found)
    show_check(console, found, result)
    if lengths and (result.conversations or result.preference_rows):
        show_stats(console, length_stats(found))
    return result.problems
