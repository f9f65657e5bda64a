"""tunelab: instruction fine-tuning of chat LLMs from one YAML recipe.

The Python API mirrors the CLI:

    import tunelab
    tunelab.check_data("examples/identity.yaml")          # tunelab data check
    tunelab.data_stats("examples/identity.yaml")          # tunelab data stats
    tunelab.estimation("examples/identity.yaml")            # tunelab estimate
    result = tunelab.train("examples/identity.yaml", ["train.epochs=2"])
    print(tunelab.chat(result.run_dir, "Who are you?"))   # tunelab chat
    tunelab.evaluation(result.run_dir, "test.jsonl", shots=0)   # tunelab eval
    tunelab.compare("smollm2-135m-instruct", result.run_dir, "probes.jsonl")
    tunelab.export(result.run_dir, "merged/")             # tunelab export
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, TaskOptions, load_recipe
from tunelab.version import __version__

__all__ = [
    "Recipe",
    "TaskOptions",
    "TunelabError",
    "__version__",
    "chat",
    "check_data",
    "compare",
    "data_stats",
    "estimate",
    "evaluate",
    "export",
    "load_recipe",
    "sweep",
    "train",
]


def train(recipe, overrides=(), overwrite: bool = False, resume: bool = False, callbacks=()):
    """Fine-tune from a recipe (path, dict or Recipe).

    Returns a TrainResult with `run_dir`, `summary` and the trained `model`; `callbacks` are
    extra transformers TrainerCallbacks.
    """
    from tunelab.training.runner import train as run_training

    return run_training(
        recipe, list(overrides), overwrite=overwrite, resume=resume, callbacks=callbacks
    )


def sweep(recipe, overrides=(), resume: bool = False, workers: int = 1):
    """Train the recipe's sweep (Optuna over its sweep.space) with `workers` processes;
    returns a SweepResult with the sweep folder, every trial ranked, and the best one."""
    from tunelab.recipe import load_recipe
    from tunelab.sweeps import sweep as run_sweep

    return run_sweep(load_recipe(recipe, list(overrides)), resume=resume, workers=workers)


def chat(
    target: str | Path,
    prompt: str,
    system: str | None = None,
    base: bool = False,
    max_new_tokens: int = 256,
) -> str:
    """One greedy answer from a run folder (base + adapter, or base=True), a folder or an alias."""
    from tunelab.inference.chat_model import open_chat_model
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    return open_chat_model(target, with_adapter=not base).answer(prompt, system, max_new_tokens)


def export(
    run_dir: str | Path,
    out: str | Path,
    merge: bool | None = None,
    overwrite: bool = False,
    to: str = "hf",
    quant: str | None = None,
    max_shard_size: str | None = None,
    verify: bool = True,
) -> Path:
    """Export a run (or `RUN@N`, its checkpoint N) to `out`: an HF folder (LoRA-family runs
    merged by default, weight files up to `max_shard_size`), a GGUF file (`to="gguf"`,
    `quant` f16/bf16/q8_0/q4_0) or an Ollama folder (`to="ollama"`). It is checked against
    the run before it is kept (`export_report.json`; `verify=False` skips the check)."""
    from tunelab.exporters import export as export_to
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    return export_to(run_dir, out, to, quant, merge, overwrite, max_shard_size, verify)


def check_data(target: str | Path, model: str | None = None):
    """Every bad row of a recipe's data, a data file or a dataset_info.json (`data check`).

    Returns a CheckResult: `.report` (counts, `bad_rows`), `.conversations`, `.problems`.
    """
    from tunelab import data_tools
    from tunelab.data import doctor

    return data_tools.check_data(doctor.open_target(target, model))


def data_stats(target: str | Path, model: str | None = None, png: str | Path | None = None):
    """Token-length percentiles, cutoff costs and the suggested max_length (`data stats`)."""
    from tunelab.data import doctor
    from tunelab.data_tools import length_stats

    return length_stats(doctor.open_target(target, model), Path(png) if png else None)


def estimate(
    recipe,
    overrides=(),
    device: str | None = None,
    gpu_memory: str | None = None,
    memory: str | None = None,
    processes: int = 1,
):
    """Peak memory by part and what fits, before anything loads (`tunelab estimate`);
    `processes`: each one's peak by strategy, and the steps of all of them together.

    Returns one Estimate per stage (a list of one for a recipe without stages).
    """
    from tunelab.estimation import estimate_run

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, list(overrides))
    return estimate_run(recipe, device, gpu_memory, memory, processes)


def evaluate(
    target: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    **options,
) -> dict:
    """GSM8K-style strict and flexible exact match (`tunelab eval`); `options` are the
    fields of TaskOptions (shots, fewshot_from, limit, batch_size, max_new_tokens, ...)."""
    from tunelab.evaluation.runner import evaluate_gsm8k

    task = TaskOptions(task="gsm8k", data=str(data), **{"shots": 0, **options})
    return evaluate_gsm8k(target, task, Path(out) if out else None)


def compare(
    before: str | Path,
    after: str | Path,
    prompts: str | Path,
    out: str | Path | None = None,
    task: TaskOptions | None = None,
    max_new_tokens: int = 128,
) -> dict:
    """The same probe prompts (and task) through two models (`tunelab compare`); the report,
    also written to `out` as report.md, report.html and report.json when given."""
    from tunelab.evaluation import compare as comparison

    report = comparison.compare(
        str(before), str(after), comparison.read_prompts(Path(prompts)), task, max_new_tokens
    )
    if out is not None:
        comparison.write_report(Path(out), report)
    return report
