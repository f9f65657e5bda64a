"""What a training run says on the console about its data and its end (the progress bar is
`callbacks.ConsoleView`, fed by the run's events)."""

from __future__ import annotations

from rich.console import Console


def show_data(console: Console, data) -> None:
    """The data's cache and length notes, the samples kept and skipped, and what the template
    does to reasoning and to earlier turns."""
    for note in [*data.cache_notes, data.max_length_note]:
        console.print(note, highlight=False)
    untaught = len(data.train) - data.stop_token_trained
    if untaught and getattr(data, "kind", None) != "prompts":  # (grpo samples its answers)
        console.print(
            f"[yellow]{untaught} of {len(data.train)} training samples do not train a stop token "
            "at the end of their answer[/] (cut by max_length, or the template closes turns "
            "with plain text); the model may not learn to stop.",
            highlight=False,
        )
    console.print(
        f"data: {len(data.train)} training samples, {len(data.eval or [])} validation, "
        f"{len(data.report.bad_rows)} bad row(s) skipped, {data.report.truncated} truncated",
        highlight=False,
    )
    if data.report.reasoning_turns or data.report.reasoning_dropped:
        console.print(
            f"reasoning: {data.report.reasoning_turns} answer(s) train their reasoning, "
            f"{data.report.reasoning_dropped} had it dropped (data.reasoning)",
            highlight=False,
        )
    if data.report.turn_samples:
        console.print(
            f"{data.report.turn_samples} extra samples: the chat template renders earlier turns "
            "otherwise once the conversation goes on, so those conversations train one turn "
            "per sample, each as it is generated",
            highlight=False,
        )


def show_done(console: Console, summary: dict) -> None:
    console.print(
        f"done: {summary['steps']} steps in {summary['train_seconds']:.1f} s, "
        f"final loss {summary['final_loss']:.4f}, {summary['tokens_per_second']:.0f} tok/s, "
        f"peak memory {summary['peak_memory_bytes'] / 2**30:.2f} GiB",
        highlight=False,
    )
