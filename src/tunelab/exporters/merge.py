"""Merge a run's LoRA adapter into its base model and save a plain HF folder."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.inference.chat_model import open_chat_model
from tunelab.training.run_folder import RunFolder


def export_merged(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write base + adapter, merged, to `out`; it loads with plain AutoModelForCausalLM."""
    run = RunFolder.open(run_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TunelabError(f"{out} is not empty; pass --overwrite or choose another --out folder.")
    chat = open_chat_model(run.path, with_adapter=True)
    merged = chat.model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    chat.tokenizer.save_pretrained(out)
    provenance = {
        "exported_from": str(run.path.resolve()),
        "recipe": run.read_recipe(),
        "merged": True,
    }
    (out / "tunelab_export.json").write_text(
        json.dumps(provenance, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return out
