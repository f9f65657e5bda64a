"""Export a run for a local runtime: one GGUF file (llama.cpp and its kin), or a folder with
the GGUF and an Ollama Modelfile.

The run is first merged in full precision (a QLoRA run's base is loaded unquantised), then
written as GGUF. Like every export, it is written beside `--out` and moved into place when
complete, and only an earlier tunelab export is replaced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.exporters.gate import REPORT, Gate, report_of
from tunelab.exporters.gguf_file import write_gguf
from tunelab.exporters.merge import EXPORT_MARK, check_destination, merged_model, save_merged
from tunelab.exporters.ollama import modelfile, translate
from tunelab.outputs import check_target, place, staging_path, write_file
from tunelab.run import RunFolder

REPORT_KIND = "export report"

GGUF_MARK = "tunelab.exported_from"  # metadata key that marks a GGUF file tunelab wrote
MODEL_FILE = "model.gguf"


def export_gguf(
    run_dir: str | Path, out: str | Path, quant: str = "f16", overwrite=False, verify=True
) -> Path:
    """The run as one GGUF file at `out`, checked against the run (its report beside it as
    NAME.export_report.json)."""
    weights, out, staging, replaces = _opened(run_dir, out, overwrite, _check_file)
    report_path = report_of(out)
    check_target(report_path, REPORT_KIND)
    try:
        _, report = _write_model(weights, staging, quant, Gate(weights, verify))
        place(staging / MODEL_FILE, out, replaces)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_file(report_path, json.dumps(report, indent=2), REPORT_KIND)
    return out


def export_ollama(
    run_dir: str | Path, out: str | Path, quant: str = "q8_0", overwrite=False, verify=True
) -> Path:
    """A folder with the run as `model.gguf` and a `Modelfile` for `ollama create`."""
    weights, out, staging, replaces = _opened(run_dir, out, overwrite, check_destination)
    try:
        gate = Gate(weights, verify)
        chat, report = _write_model(weights, staging, quant, gate)
        report["ollama_template"] = _write_modelfile(chat, gate, staging)
        (staging / REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
        mark = {"exported_from": str(weights.run.path.resolve()), "to": "ollama", "quant": quant}
        (staging / EXPORT_MARK).write_text(json.dumps(mark, indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    place(staging, out, replaces)
    return out


def _write_modelfile(chat, gate: Gate, staging: Path) -> dict:
    """staging/Modelfile with the run's template translated for Ollama; the gate's report on
    that TEMPLATE as Go renders it."""
    stops = [chat.tokenizer.convert_ids_to_tokens(i) for i in chat.stop_token_ids()]

    def render(messages):
        return chat.renderer.render_text(messages, add_generation_prompt=True)

    # a BOS the template writes itself; ChatML's <|im_start|> can be a tokenizer's BOS too
    bos = chat.tokenizer.bos_token if "bos_token" in chat.renderer.template else None
    adds_bos = chat.tokenizer("x")["input_ids"][:1] == [chat.tokenizer.bos_token_id]
    translated = translate(render, bos, adds_bos)
    report = gate.check_ollama_template(translated.template, chat.system, adds_bos)
    text = modelfile(MODEL_FILE, translated, chat.system, stops)
    (staging / "Modelfile").write_text(text, encoding="utf-8")
    return report


def _opened(run_dir, out, overwrite: bool, check):
    """(the run's weights, out, a fresh staging folder beside out, whether an earlier export
    is replaced) once `check` allows out."""
    top, out = RunFolder.open(run_dir), Path(out)
    weights = top.trained()
    replaces = check(out, [top.path, weights.run.path, Path(weights.base)], overwrite)
    return weights, out, staging_path(out), replaces


def _write_model(weights, staging: Path, quant: str, gate: Gate):
    """Merge into staging/hf, write staging/model.gguf, drop the HF folder, check the file
    against the run; the merged model and the gate's report."""
    staging.mkdir(parents=True)
    hf = staging / "hf"
    chat = merged_model(weights, gate.before_merge)
    save_merged(chat, weights, hf)
    info = write_gguf(
        hf,
        staging / MODEL_FILE,
        quant,
        chat.renderer.template,
        {GGUF_MARK: str(weights.run.path.resolve())},
        name=Path(str(weights.base).rstrip("/")).name,  # the base's name, e.g. Phi-3-mini-...
    )
    shutil.rmtree(hf)
    report = gate.check_gguf(staging / MODEL_FILE, quant, info["architecture"])
    return chat, {**report, "gguf": info}


def _check_file(out: Path, sources: list[Path], overwrite: bool) -> bool:
    """`out` may be new or (with overwrite) a GGUF file tunelab wrote; never a source."""
    if out.suffix != ".gguf":
        raise TunelabError(f"--out {out} should be a .gguf file name.")
    if out.is_dir():
        raise TunelabError(f"--out {out} is a folder; give a .gguf file name.")
    for source in sources[:2]:
        if source.resolve() in out.resolve().parents:
            raise TunelabError(
                f"--out {out} lies inside the run folder {source}; export outside it."
            )
    if out.exists():
        if not overwrite:
            raise TunelabError(f"{out} exists; pass --overwrite or choose another --out file.")
        if not _is_our_gguf(out):
            raise TunelabError(
                f"{out} is not a GGUF file tunelab wrote; --overwrite replaces only an earlier "
                "export. Choose another --out file."
            )
        return True
    return False


def _is_our_gguf(path: Path) -> bool:
    from tunelab.exporters.gguf_metadata import gguf_metadata

    try:
        return GGUF_MARK in gguf_metadata(path)
    except Exception:  # not a GGUF file at all (or a damaged one)
        return False
