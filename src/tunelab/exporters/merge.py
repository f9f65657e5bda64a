"""Export a run: LoRA-family adapters merged into a plain HF folder, or the weights as trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.inference.chat_model import open_chat_model
from tunelab.methods import get_method
from tunelab.training.run_folder import RunFolder


def export_run(
    run_dir: str | Path, out: str | Path, merge: bool | None = None, overwrite: bool = False
) -> Path:
    """Write the run's result to `out`.

    merge=None does what the method allows: LoRA-family runs are merged into the base (a plain
    HF folder), prompt-style runs export their adapter, full and freeze runs their model.
    """
    run = RunFolder.open(run_dir).final_run()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TunelabError(f"{out} is not empty; pass --overwrite or choose another --out folder.")
    method = get_method(run.read_recipe()["method"]["type"])
    if merge and not method.mergeable:
        raise TunelabError(
            f"merging is only for LoRA-family runs (lora, dora, qlora); this run used {method.name}. "
            "Export without --merge to save its "
            + ("adapter." if method.saves_adapter else "model.")
        )
    if out.exists():
        shutil.rmtree(out)
    if method.family == "full":
        shutil.copytree(run.model_dir, out)
    elif merge is False or not method.mergeable:
        shutil.copytree(run.adapter_dir, out)
    else:
        chat = open_chat_model(run.path, with_adapter=True, quantized=False)
        merged = chat.model.merge_and_unload()
        merged.save_pretrained(out)
        chat.tokenizer.save_pretrained(out)
    merged_flag = bool(method.mergeable and merge is not False)
    provenance = {
        "exported_from": str(run.path.resolve()),
        "method": method.name,
        "merged": merged_flag,
        "recipe": run.read_recipe(),
    }
    (out / "tunelab_export.json").write_text(
        json.dumps(provenance, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return out
