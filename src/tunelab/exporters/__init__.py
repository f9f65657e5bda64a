"""Exports of a run: an HF folder (merged or as trained), one GGUF file, or an Ollama folder."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError

TARGETS = ("hf", "gguf", "ollama")


def export(
    run_dir: str | Path,
    out: str | Path,
    to: str = "hf",
    quant: str | None = None,
    merge: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a run to `out` in the format `to`; `quant` is for GGUF (f16 unless given)."""
    if to not in TARGETS:
        raise TunelabError(f"--to {to} is not one of {', '.join(TARGETS)}.")
    if to == "hf":
        if quant is not None:
            raise TunelabError(
                "--quant is for --to gguf or --to ollama; an HF folder keeps its dtype."
            )
        from tunelab.exporters.merge import export_run

        return export_run(run_dir, out, merge=merge, overwrite=overwrite)
    if merge is False:
        raise TunelabError(
            f"--to {to} writes a whole model, so a LoRA adapter is always merged; drop --no-merge."
        )
    from tunelab.exporters.gguf_file import QUANTS
    from tunelab.exporters.runtimes import export_gguf, export_ollama

    if quant is not None and quant not in QUANTS:
        raise TunelabError(f"--quant {quant} is not one of {', '.join(QUANTS)}.")

    writer = export_gguf if to == "gguf" else export_ollama
    return writer(run_dir, out, quant or "f16", overwrite)
