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
    max_shard_size: str | None = None,
    verify: bool = True,
) -> Path:
    """Export a run to `out` in the format `to`; `quant` is for GGUF (f16 unless given),
    `max_shard_size` (e.g. "2GB") for an HF folder's weight files. The export is checked
    against the run before it is placed (`export_report.json`) unless `verify` is False."""
    if to not in TARGETS:
        raise TunelabError(f"--to {to} is not one of {', '.join(TARGETS)}.")
    if to == "hf":
        if quant is not None:
            raise TunelabError(
                "--quant is for --to gguf or --to ollama; an HF folder keeps its dtype."
            )
        from tunelab.exporters.merge import export_run

        shard = check_shard_size(max_shard_size)
        return export_run(
            run_dir, out, merge=merge, overwrite=overwrite, max_shard_size=shard, verify=verify
        )
    if max_shard_size is not None:
        raise TunelabError(f"--max-shard-size is for --to hf; --to {to} writes one file.")
    if merge is False:
        raise TunelabError(
            f"--to {to} writes a whole model, so a LoRA adapter is always merged; drop --no-merge."
        )
    from tunelab.exporters.gguf_file import QUANTS
    from tunelab.exporters.runtimes import export_gguf, export_ollama

    if quant is not None and quant not in QUANTS:
        raise TunelabError(f"--quant {quant} is not one of {', '.join(QUANTS)}.")

    writer = export_gguf if to == "gguf" else export_ollama
    return writer(run_dir, out, quant or "f16", overwrite, verify)


def check_shard_size(size: str | None) -> int | None:
    """A shard size ("500MB", "2GB") in bytes, checked before anything loads."""
    if size is None:
        return None
    from tunelab.estimation import parse_size

    try:
        limit = parse_size(size)
    except TunelabError:
        raise TunelabError(
            f"--max-shard-size {size!r} is not a size; write it like 2GB or 500MB."
        ) from None
    if limit < 2**20:
        raise TunelabError(f"--max-shard-size {size} is under 1MB; give e.g. 500MB or 2GB.")
    return limit
