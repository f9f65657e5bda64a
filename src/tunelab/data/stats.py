"""Token-length statistics, the cost of each cutoff, and the suggested max_length."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tunelab.data.render import RenderedSample, truncate
from tunelab.outputs import write_file

PERCENTILES = (50, 90, 95, 99)
MAX_TRAINED_LOSS = 0.01  # auto max_length loses under 1% of the trained tokens
CUTOFF_STEP = 64


def describe(values: list[int]) -> dict:
    """min, mean, p50, p90, p95, p99 and max of a list of counts."""
    if not values:
        return {}
    array = np.asarray(values)
    summary = {"min": int(array.min()), "mean": round(float(array.mean()), 1)}
    for p in PERCENTILES:
        summary[f"p{p}"] = int(np.percentile(array, p, method="higher"))
    summary["max"] = int(array.max())
    return summary


def length_stats(samples: list[RenderedSample]) -> dict:
    """Token counts of prompt (untrained), answer (trained) and whole sample."""
    answer = [s.trained_tokens for s in samples]
    total = [len(s.input_ids) for s in samples]
    prompt = [t - a for t, a in zip(total, answer)]
    return {
        "samples": len(samples),
        "prompt": describe(prompt),
        "answer": describe(answer),
        "total": describe(total),
    }


def cutoff_cost(samples: list[RenderedSample], cutoff: int) -> dict:
    """What truncating to `cutoff` costs: share of samples cut and of trained tokens lost."""
    trained = sum(s.trained_tokens for s in samples) or 1
    cut, kept = 0, 0
    for sample in samples:
        if len(sample.input_ids) > cutoff:
            cut += 1
            short = truncate(sample.input_ids, sample.labels, cutoff)
            kept += short.trained_tokens
        else:
            kept += sample.trained_tokens
    return {
        "cutoff": cutoff,
        "samples_truncated": round(cut / max(len(samples), 1), 4),
        "trained_tokens_lost": round(1 - kept / trained, 4),
    }


def candidate_cutoffs(samples: list[RenderedSample]) -> list[int]:
    """Powers of two from 64 up to the first that fits the longest sample."""
    longest = max((len(s.input_ids) for s in samples), default=64)
    top = 2 ** max(6, math.ceil(math.log2(max(longest, 2))))
    return [2**k for k in range(6, int(math.log2(top)) + 1)]


def suggest_max_length(samples: list[RenderedSample], max_loss: float = MAX_TRAINED_LOSS) -> int:
    """The smallest multiple of 64 whose truncation loses under `max_loss` of trained tokens."""
    longest = max((len(s.input_ids) for s in samples), default=CUTOFF_STEP)
    low, high = 1, math.ceil(longest / CUTOFF_STEP)
    # The loss shrinks as the cutoff grows, so a binary search over multiples of 64 finds it.
    while low < high:
        middle = (low + high) // 2
        if cutoff_cost(samples, middle * CUTOFF_STEP)["trained_tokens_lost"] < max_loss:
            high = middle
        else:
            low = middle + 1
    return low * CUTOFF_STEP


def full_report(samples: list[RenderedSample]) -> dict:
    """Lengths, the cutoff table and the suggestion, as one JSON-ready dict."""
    suggested = suggest_max_length(samples)
    cutoffs = sorted(set(candidate_cutoffs(samples)) | {suggested})
    return {
        **length_stats(samples),
        "cutoffs": [cutoff_cost(samples, c) for c in cutoffs],
        "suggested_max_length": suggested,
        "suggestion_rule": f"smallest multiple of {CUTOFF_STEP} losing under "
        f"{MAX_TRAINED_LOSS:.0%} of trained tokens",
    }


def save_histogram(samples: list[RenderedSample], path: Path, suggested: int | None = None) -> Path:
    """A PNG histogram of sample lengths (total and answer), with the suggested cutoff marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = [len(s.input_ids) for s in samples]
    answer = [s.trained_tokens for s in samples]
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    bins = min(60, max(10, len(set(total))))
    axis.hist(total, bins=bins, alpha=0.7, label="whole sample")
    axis.hist(answer, bins=bins, alpha=0.6, label="answer (trained)")
    if suggested:
        axis.axvline(
            suggested, color="red", linestyle="--", label=f"suggested max_length {suggested}"
        )
    axis.set_xlabel("tokens")
    axis.set_ylabel("samples")
    axis.set_title(f"token lengths of {len(samples)} samples")
    axis.legend()
    figure.tight_layout()
    try:  # by the rule for written files: a plot tunelab wrote is replaced, nothing else
        write_file(path, lambda staged: figure.savefig(staged, format=_format(path)), PLOT_KIND)
    finally:
        plt.close(figure)
    return path


PLOT_KIND = "length plot"


def _format(path: Path) -> str:
    return path.suffix.lstrip(".").lower() or "png"


def reasoning_share(target, tokenizer) -> dict:
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
