"""What `tunelab data stats` and `data preview` compute with a tokenizer: lengths, samples.

(The checks that need no tokenizer live in `tunelab.data.doctor`.)
"""

from __future__ import annotations

from pathlib import Path

from tunelab.data.doctor import Target
from tunelab.data.render import RenderedSample


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
    from tunelab.data.pipeline import render_split
    from tunelab.data.stats import PLOT_KIND, full_report, save_histogram
    from tunelab.outputs import check_target

    if png is not None:  # refused before the work, not after it
        check_target(Path(png), PLOT_KIND)
    tokenizer, template = _tokenizer_and_template(target)
    config = target.config.model_copy(update={"on_bad_row": "skip"})
    if target.objective == "grpo":
        return _prompt_lengths(target, config, tokenizer, template, png)
    if target.objective != "sft":
        return _preference_lengths(target, config, tokenizer, template, png)
    rendered = render_split(
        config,
        target.base_dir,
        "train",
        tokenizer,
        template,
        config.cache,
        template_args=target.template_args,
    )
    stats = {**full_report(rendered.samples), "model": target.model}
    stats["reasoning"] = reasoning_share(target, tokenizer)
    stats["cache"] = {
        "fingerprint": rendered.fingerprint,
        "hit": rendered.from_cache,
        "seconds": round(rendered.seconds, 3),
    }
    if png is not None:
        stats["histogram"] = str(
            save_histogram(rendered.samples, png, stats["suggested_max_length"])
        )
    return stats


def _preference_lengths(target: Target, config, tokenizer, template, png: Path | None) -> dict:
    """The length report of a preference recipe: each answer after its prompt is one sequence
    (what the trainer pads and runs), the answers' tokens the trained ones."""
    from tunelab.data.preference_pipeline import answer_sequences, prepare_preferences
    from tunelab.data.stats import full_report, save_histogram

    prepared = prepare_preferences(
        config.model_copy(update={"max_length": "auto", "val_ratio": None, "eval": None}),
        target.base_dir,
        tokenizer,
        template,
        0,
        target.objective,
        template_args=target.template_args,
    )
    sequences = [seq for sample in prepared.train for seq in answer_sequences(sample)]
    stats = {**full_report(sequences), "model": target.model, "objective": target.objective}
    if png is not None:
        stats["histogram"] = str(save_histogram(sequences, png, stats["suggested_max_length"]))
    return stats


def _prompt_lengths(target: Target, config, tokenizer, template, png: Path | None) -> dict:
    """The length report of a grpo recipe: each prompt as rendered (answers are sampled)."""
    from tunelab.data.prompt_pipeline import prepare_prompts
    from tunelab.data.stats import length_stats as lengths
    from tunelab.data.stats import save_histogram

    prepared = prepare_prompts(
        config, target.base_dir, tokenizer, template, 0, template_args=target.template_args
    )
    stats = {**lengths(prepared.train), "model": target.model, "objective": "grpo"}
    if png is not None:
        stats["histogram"] = str(save_histogram(prepared.train, png))
    return stats


def reasoning_share(target: Target, tokenizer) -> dict:
    """How many answers carry reasoning (after `data.reasoning`), how many had it dropped, and
    the reasoning's share of the assistant tokens."""
    from tunelab.data.load import load_conversations
    from tunelab.reasoning import split_reasoning

    config = target.config.model_copy(update={"on_bad_row": "skip"})
    thinking = target.template_args.get("enable_thinking")
    conversations, report = load_conversations(
        config, target.base_dir, allow_empty=True, thinking=thinking
    )
    reasoning_tokens = answer_tokens = 0
    for conversation in conversations:
        for message in conversation.messages:
            if message.role != "assistant":
                continue
            reasoning, answer = message.reasoning, message.content
            if reasoning is None and message.has_reasoning:
                reasoning, answer = split_reasoning(message.content)
            reasoning_tokens += _count(tokenizer, reasoning or "")
            answer_tokens += _count(tokenizer, answer)
    total = reasoning_tokens + answer_tokens
    return {
        "answers": report.reasoning_turns,
        "dropped": report.reasoning_dropped,
        "reasoning_tokens": reasoning_tokens,
        "token_share": round(reasoning_tokens / total, 4) if total else 0.0,
    }


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def recipe_data(recipe, source, config=None):
    """(tokenizer, template, prepared data) for a recipe's model, as training gets them: its
    template and template arguments, records bounded by the model's context; preference
    samples for a preference objective."""
    from tunelab.data.pipeline import prepare_data
    from tunelab.models.load import load_config, load_tokenizer
    from tunelab.templates import resolve_template

    tokenizer = load_tokenizer(source)
    template = resolve_template(recipe.model.template, tokenizer, recipe.source_dir)
    config = config if config is not None else load_config(source)
    context = getattr(config, "max_position_embeddings", None)
    if recipe.train.objective == "grpo":
        from tunelab.data.prompt_pipeline import prepare_prompts

        room = context - recipe.grpo.max_completion_length if context else None
        data = prepare_prompts(
            recipe.data,
            recipe.source_dir,
            tokenizer,
            template,
            recipe.train.seed,
            room,
            recipe.model.template_args,
            recipe.grpo.max_completion_length,
        )
        return tokenizer, template, data
    if recipe.train.objective != "sft":
        from tunelab.data.preference_pipeline import prepare_preferences

        data = prepare_preferences(
            recipe.data,
            recipe.source_dir,
            tokenizer,
            template,
            recipe.train.seed,
            recipe.train.objective,
            context,
            recipe.model.template_args,
        )
        return tokenizer, template, data
    data = prepare_data(
        recipe.data,
        recipe.source_dir,
        tokenizer,
        template,
        recipe.train.seed,
        context,
        recipe.model.template_args,
    )
    return tokenizer, template, data


def preview_samples(target: Target, n: int) -> tuple[list[RenderedSample], object]:
    """The first `n` training samples as the trainer gets them, and their tokenizer."""
    from tunelab.data.pipeline import prepare_data

    tokenizer, template = _tokenizer_and_template(target)
    if target.objective not in ("sft", "grpo"):
        return _preference_preview(target, tokenizer, template, n), tokenizer
    data = prepare_data(
        target.config, target.base_dir, tokenizer, template, 0, template_args=target.template_args
    )
    return data.train[:n], tokenizer


def _preference_preview(target: Target, tokenizer, template: str, n: int) -> list:
    """The first `n` rows of a preference recipe as the trainer reads them: the prompt, then
    each answer (chosen and rejected, or the rated one), trained tokens marked."""
    from dataclasses import replace

    from tunelab.data.preference_pipeline import answer_sequences, prepare_preferences

    prepared = prepare_preferences(
        target.config.model_copy(update={"val_ratio": None, "eval": None}),
        target.base_dir,
        tokenizer,
        template,
        0,
        target.objective,
        template_args=target.template_args,
    )
    shown = []
    for sample in prepared.train[:n]:
        names = ["chosen", "rejected"] if sample.rejected_ids is not None else [
            {True: "rated desirable", False: "rated undesirable"}.get(sample.label, "answer")
        ]  # fmt: skip
        for name, sequence in zip(names, answer_sequences(sample)):
            shown.append(replace(sequence, location=f"{sample.location or ''} {name}".strip()))
    return shown
