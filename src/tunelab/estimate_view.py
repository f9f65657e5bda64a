"""The estimate as a terminal table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunelab.estimation import CPU_MATMUL_EFFICIENCY, DataCount, Estimate, GiB

PART_NAMES = {
    "weights": "weights",
    "gradients": "gradients (trainable)",
    "optimizer": "optimizer states (AdamW)",
    "activations": "activations",
    "loss_buffers": "loss buffers (logits)",
    "adapter_buffers": "adapter temporaries (CPU allocator)",
    "runtime": "runtime (Python, torch, data)",
}


def show_estimate(console: Console, result: Estimate) -> None:
    mode = "with" if result.gradient_checkpointing else "without"
    batch = (
        f"up to {result.batch_tokens:,} tokens per pass"
        if result.batch_tokens
        else f"batch {result.batch_size}"
    )
    console.print(
        f"{result.method} on {result.device}: {result.trainable_parameters:,} trainable of "
        f"{result.total_parameters:,} parameters; {result.tokens_per_step:,} tokens in the largest "
        f"step ({batch}, length {result.length}), {mode} gradient checkpointing",
        highlight=False,
    )
    table = Table(show_edge=False)
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for key, value in result.parts.items():
        table.add_row(PART_NAMES.get(key, key), f"{value / GiB:.2f}")
    table.add_row("[bold]peak[/]", f"[bold]{result.total_bytes / GiB:.2f}[/]")
    console.print(table)
    if result.fused_loss:
        console.print("loss: liger's fused linear cross entropy (no logits held)", highlight=False)
    console.print(
        f"activations: {result.activations_without_checkpointing / GiB:.2f} GiB saved without "
        f"checkpointing, {result.activations_with_checkpointing / GiB:.2f} GiB with",
        highlight=False,
    )
    if result.seconds_per_step is not None:
        console.print(
            f"time: about {result.seconds_per_step:.1f} s for the largest step "
            f"({result.flops_per_token / 1e6:,.0f} MFLOP per token, at {CPU_MATMUL_EFFICIENCY:.0%} of this machine's "
            f"measured fp32 matmul rate of {result.matmul_flops_per_second / 1e9:.0f} GFLOP/s)",
            highlight=False,
        )
    by_strategy = {
        "each process": (result.per_process, "train.distributed; batch_size is per process"),
        "each process sends per step": (
            result.communication,
            "ring collectives, on paper; between machines the slowest link sets the pace",
        ),
    }
    for title, (values, why) in by_strategy.items():
        if values:
            shown = ", ".join(f"{k} {v / GiB:.2f} GiB" for k, v in values.items())
            console.print(f"{title}: {shown} ({why})", highlight=False)
    if result.data:
        show_data_count(console, result.data)
    if result.budget_bytes is not None:
        verdict = "[green]fits[/]" if result.fits else "[red]does not fit[/]"
        console.print(
            f"{verdict} in {result.budget_bytes / GiB:.1f} GiB"
            + (" (1 GiB kept for the CUDA context)" if result.device == "cuda" else ""),
        )
        for line in result.suggestions:
            console.print(f"  {line}", highlight=False)


def show_data_count(console: Console, data: DataCount) -> None:
    extra = (
        f", {data.turn_samples:,} of them extra: the chat template is trained turn by turn"
        if data.turn_samples
        else ""
    )
    console.print(
        f"data: {data.samples:,} samples from {data.conversations:,} conversations{extra}; "
        f"{data.tokens_per_epoch:,} tokens an epoch; {data.steps_per_epoch:,} optimizer steps "
        f"an epoch, {data.steps:,} in all"
        + (f"; about {_duration(data.seconds)} on this CPU" if data.seconds else "")
        + ("; sampling the answers adds to the time" if data.sampled else ""),
        highlight=False,
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def show_estimates(recipe, results: list, as_json: bool) -> None:
    """`tunelab estimate`: each stage's estimate as a table (a rule between stages), or all
    of them as JSON on stdout."""
    import json

    from tunelab.recipe import stage_recipes

    if as_json:
        payload = [r.as_dict() for r in results] if recipe.stages else results[0].as_dict()
        print(json.dumps(payload, indent=1))
        return
    out = Console()
    stages = stage_recipes(recipe) if recipe.stages else [recipe]
    for index, (stage, result) in enumerate(zip(stages, results), start=1):
        if recipe.stages:
            out.rule(f"stage {index}/{len(stages)}: {Path(stage.output).name}")
        show_estimate(out, result)
