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


def train(recipe, overrides=(), overwrite: bool = False):
    """Fine-tune from a recipe (path, dict or Recipe); returns a TrainResult (run_dir, summary)."""
    from tunelab.training.runner import train as run_training

    return run_training(recipe, list(overrides), overwrite=overwrite)


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


def export(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Merge a run's adapter into its base model and save a plain HF folder at `out`."""
    from tunelab.exporters.merge import export_merged
    from tunelab.quiet import quiet_libraries

    quiet_libraries()
    return export_merged(run_dir, out, overwrite=overwrite)
