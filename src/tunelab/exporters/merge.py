"""Export a run: LoRA-family adapters merged into a plain HF folder, or the weights as trained."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.exporters.gate import REPORT, Gate
from tunelab.inference.chat_model import ChatModel, open_chat_model
from tunelab.methods import get_method
from tunelab.models.sources import resolve_model
from tunelab.outputs import place, staging_path
from tunelab.run import RunFolder, TrainedWeights, refuse_precious

EXPORT_MARK = "tunelab_export.json"


def export_run(
    run_dir: str | Path,
    out: str | Path,
    merge: bool | None = None,
    overwrite: bool = False,
    max_shard_size: int | None = None,
    verify: bool = True,
) -> Path:
    """Write the run's result to `out`.

    merge=None does what the method allows: LoRA-family runs are merged into the base (a plain
    HF folder), prompt-style runs export their adapter, full and freeze runs their model. The
    export is written beside `out` and moved into place when complete; `overwrite` replaces
    only an earlier tunelab export. A whole model is checked against the run first (the
    parity gate, `export_report.json`); `verify=False` skips that and says so there.
    """
    top = RunFolder.open(run_dir)
    weights = top.trained()
    run, out = weights.run, Path(out)
    replaces = check_destination(out, [top.path, run.path, Path(weights.base)], overwrite)
    method = get_method(weights.recipe.method.type)
    if merge and not method.mergeable:
        raise TunelabError(
            f"merging is only for LoRA-family runs (lora, dora, qlora); this run used {method.name}. "
            "Export without --merge to save its "
            + ("adapter." if method.saves_adapter else "model.")
        )
    staging = staging_path(out)
    gate = Gate(weights, verify)
    try:
        merged = _write_export(weights, method, merge, staging, max_shard_size, gate)
        report = _check_export(gate, staging)
        (staging / REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
        provenance = {
            "exported_from": str(Path(run.target).resolve()),
            "method": method.name,
            "merged": merged,
            "recipe": run.read_recipe(),
        }
        (staging / EXPORT_MARK).write_text(
            json.dumps(provenance, indent=2, ensure_ascii=False), encoding="utf-8"
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    place(staging, out, replaces)
    return out


def check_destination(out: Path, sources: list[Path], overwrite: bool) -> bool:
    """`out` may be new, empty, or (with overwrite) an earlier export; never a source.
    Returns whether an earlier export is to be replaced."""
    target = out.resolve()
    for source in sources[:2]:
        if source.resolve() == target:
            raise TunelabError(
                f"--out {out} is the run folder being exported; export to a folder of its own."
            )
        if source.resolve() in target.parents:
            raise TunelabError(
                f"--out {out} lies inside the run folder {source}; export to a folder of its own."
            )
    refuse_precious(out, "--out", [p for p in sources if p.exists()])
    if out.exists() and not out.is_dir():
        raise TunelabError(f"--out {out} is a file; choose a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise TunelabError(
                f"{out} is not empty; pass --overwrite or choose another --out folder."
            )
        if not (out / EXPORT_MARK).is_file():
            raise TunelabError(
                f"{out} is not empty and is not a tunelab export (no {EXPORT_MARK}); "
                "--overwrite replaces only an earlier export. Choose another --out folder."
            )
        return True
    return False


# what a checkpoint holds besides the weights: resume state, never part of an export
RESUME_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*", "trainer_state.json",
                "training_args.bin", "tunelab_checkpoint.json")  # fmt: skip


def _check_export(gate: Gate, folder: Path) -> dict:
    if not (folder / "config.json").is_file():
        return {"passed": None, "verified": False, "reason": "an adapter folder, not a model"}
    return gate.check_folder(folder)


def _write_export(
    weights: TrainedWeights, method, merge: bool | None, folder: Path, shard: int | None, gate
) -> bool:
    """The weights into `folder` (in files of at most `shard` bytes); whether a
    LoRA-family adapter was merged."""
    keep_adapter = weights.model is None and (merge is False or not method.mergeable)
    if shard is None or keep_adapter:
        source = weights.adapter if keep_adapter else weights.model
        if source is not None:
            shutil.copytree(source, folder, ignore=shutil.ignore_patterns(*RESUME_STATE))
            return False
    save_merged(merged_model(weights, gate.before_merge), weights, folder, shard)
    return weights.adapter is not None


def save_merged(chat: ChatModel, weights: TrainedWeights, folder: Path, shard=None) -> None:
    """The merged model and its tokenizer in `folder` (see `save_tokenizer`)."""
    chat.model.save_pretrained(folder, max_shard_size=shard or "5GB")
    save_tokenizer(chat.tokenizer, folder, _weight_folders(weights))


def save_tokenizer(tokenizer, folder: Path, sources: list[Path]) -> None:
    """The tokenizer in `folder`, with the first SentencePiece model (`tokenizer.model`) found
    in `sources`, which a fast tokenizer does not save and GGUF converters read; beside one,
    the added tokens are listed in tokenizer_config.json as converters read them (a
    SentencePiece model lacks Phi-3's <|end|> or GLM's <|user|>)."""
    tokenizer.save_pretrained(folder)
    for name in SENTENCEPIECE_FILES:
        found = [f / name for f in sources if (f / name).is_file()]
        if found and not (folder / name).exists():
            shutil.copy2(found[0], folder / name)
    config_file = folder / "tokenizer_config.json"
    if (folder / "tokenizer.model").is_file() and config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.setdefault("added_tokens_decoder", {
            str(i): {"content": t.content, "special": t.special, "lstrip": t.lstrip,
                     "rstrip": t.rstrip, "normalized": t.normalized, "single_word": t.single_word}
            for i, t in tokenizer.added_tokens_decoder.items()
        })  # fmt: skip
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _weight_folders(weights: TrainedWeights) -> list[Path]:
    """The folders the run's weights came from: its own model folder, then the recipe's base."""
    folders = [weights.model] if weights.model else []
    with contextlib.suppress(TunelabError):  # a base that no longer resolves gives nothing more
        folders.append(resolve_model(weights.base, weights.recipe.model.trust_remote_code).folder)
    return folders


SENTENCEPIECE_FILES = ("tokenizer.model",)


def merged_model(weights: TrainedWeights, before_merge=None) -> ChatModel:
    """The run's model in full precision with a LoRA-family adapter merged in (a QLoRA run's
    base is loaded unquantised, so the merge is not into 4-bit weights)."""
    method = get_method(weights.recipe.method.type)
    if weights.adapter is not None and not method.mergeable:
        raise TunelabError(
            f"a {method.name} run's adapter cannot be merged into the model, which this export "
            "needs; export it without --to to save the adapter."
        )
    chat = open_chat_model(weights.run.target, with_adapter=True, quantized=False)
    if before_merge is not None:  # e.g. the parity gate reads the run as trained
        before_merge(chat)
    if weights.adapter is not None:
        chat.model = chat.model.merge_and_unload()
    return chat
