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
