"""lm-evaluation-harness on tunelab's models: a base, a run (base + adapter) or a merged folder.

The harness's own HF wrapper loads the model, with the run's adapter through its `peft`
argument, and its TaskManager reads task YAML files from the task file's folder, so a task
can point at local data (dataset_path: json, dataset_kwargs.data_files).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab.errors import TunelabError
from tunelab.models.sources import resolve_model
from tunelab.outputs import write_files
from tunelab.run import RunFolder, is_run_target


def hf_paths(target: str | Path) -> tuple[Path, Path | None, Path]:
    """(weights folder, adapter folder or None, tokenizer folder) for what `target` names."""
    if is_run_target(target):
        weights = RunFolder.open(target).trained()
        if weights.model is not None:
            return weights.model, None, weights.model
        base = resolve_model(weights.base, weights.recipe.model.trust_remote_code)
        if base.gguf_file:
            raise TunelabError(
                "the harness cannot load a .gguf base; convert it to an HF folder first."
            )
        return base.folder, weights.adapter, weights.adapter
    source = resolve_model(str(target))
    if source.gguf_file:
        raise TunelabError(
            "the harness cannot load a .gguf file; convert it to an HF folder first."
        )
    return source.folder, None, source.folder


def evaluate_with_harness(
    target: str | Path,
    task_file: Path,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    out: Path | None = None,
) -> dict:
    """Run one task YAML through lm-evaluation-harness; returns its metrics and per-item samples."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise TunelabError(
            "lm-evaluation-harness is not installed; install it with `pip install 'tunelab[harness]'`."
        ) from None
    if not task_file.is_file():
        raise TunelabError(f"task file {task_file} does not exist.")
    task_name = (yaml.safe_load(task_file.read_text(encoding="utf-8")) or {}).get("task")
    if not task_name:
        raise TunelabError(f"{task_file} has no `task:` name.")
    weights, adapter, tokenizer = hf_paths(target)
    import torch

    model = HFLM(
        pretrained=str(weights),
        peft=str(adapter) if adapter else None,
        tokenizer=str(tokenizer),
        batch_size=batch_size,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    results = simple_evaluate(
        model=model,
        tasks=[task_name],
        limit=limit,
        num_fewshot=num_fewshot,
        task_manager=TaskManager(include_path=str(task_file.parent)),
        log_samples=True,
    )
    metrics = results["results"][task_name]
    samples = results["samples"][task_name]
    summary = {
        "task": task_name,
        "task_file": str(task_file),
        "model": str(target),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    if out is not None:
        items = "".join(
            json.dumps(sample, default=str, ensure_ascii=False) + "\n" for sample in samples
        )
        files = {"harness_summary.json": json.dumps(summary, indent=2) + "\n"}
        write_files(Path(out), {**files, "harness_items.jsonl": items}, "evaluation result")
    summary["samples"] = samples
    return summary
