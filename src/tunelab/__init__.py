"""tunelab: instruction fine-tuning of chat LLMs from one YAML recipe.

The Python API mirrors the CLI:

    import tunelab
    result = tunelab.train("examples/identity.yaml", ["train.epochs=2"])
    print(tunelab.chat(result.run_dir, "Who are you?"))
    tunelab.export(result.run_dir, "merged/")
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.recipe import Recipe, load_recipe

__version__ = "0.1.0"
__all__ = ["Recipe", "TunelabError", "chat", "export", "load_recipe", "train"]


def train(recipe, overrides=(), overwrite: bool = False, resume: bool = False, callbacks=()):
    """Fine-tune from a recipe (path, dict or Recipe).

    Returns a TrainResult with `run_dir`, `summary` and the trained `model`; `callbacks` are
    extra transformers TrainerCallbacks.
    """
    from tunelab.training.runner import train as run_training

    return run_training(
        recipe, list(overrides), overwrite=overwrite, resume=resume, callbacks=callbacks
    )


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
    run_dir: str | Path, out: str | Path, merge: bool | None = None, overwrite: bool = False
) -> Path:
    """Export a run to `out`: LoRA-family runs merged into a plain HF folder by default."""
    from tunelab.exporters.merge import export_run
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    return export_run(run_dir, out, merge=merge, overwrite=overwrite)
