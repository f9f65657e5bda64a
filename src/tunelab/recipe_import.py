"""A LLaMA-Factory training YAML as a tunelab recipe: each key mapped, or dropped with why.

LLaMA-Factory's defaults are carried where they differ from tunelab's (LoRA alpha twice the
rank, no LoRA dropout, gradient checkpointing on), so the imported recipe trains as the file
did. Its own template names are not needed: tunelab renders with the model's own template.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.recipe import TRACKERS, load_recipe, looks_like_llamafactory, read_yaml

SCHEDULERS = {"cosine", "linear", "constant", "constant_with_warmup"}
IGNORED = {  # settled by tunelab itself: why each has no key of its own
    "do_train": "tunelab train always trains",
    "preprocessing_num_workers": "tunelab renders with the tokenizer's own threads and caches it",
    "dataloader_num_workers": "data is tokenized once, before training",
    "ddp_timeout": "train.collective_timeout (default 1800 s) bounds each wait for the other "
    "processes; a wait of years would hide a hung node",
    "plot_loss": "every run writes its loss plot",
    "save_only_model": "checkpoints always hold what exact resume needs",
    "overwrite_output_dir": "pass --overwrite to tunelab train (only a tunelab run is replaced)",
    "overwrite_cache": "the data cache is rebuilt whenever anything it depends on changes",
    "flash_attn": "packed attention is chosen by device",
    "bf16": "model.dtype: auto trains in bfloat16 on a GPU that has it",
    "fp16": "model.dtype: auto picks the precision for the device",
    "double_quantization": "tunelab's QLoRA settings are fixed (nf4)",
    "trust_remote_code": "a model folder's own code runs only when you set "
    "model.trust_remote_code: true yourself, after reading its .py files",
    "neat_packing": "tunelab's packing never attends across samples (data.packing)",
}


PLAIN_TRAIN = {  # LLaMA-Factory key: train.<name>
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
    "logging_steps": "log_every",
    "save_steps": "save_every",
    "save_total_limit": "keep_last",
    "eval_steps": "eval_every",
    "enable_liger_kernel": "fused_kernels",
}
# Every key the import reads; a key close to one of these is taken for a misspelling of it.
OTHER_KEYS = (
    "stage", "model_name_or_path", "template", "finetuning_type", "use_dora", "lora_rank",
    "lora_alpha", "lora_dropout", "lora_target", "freeze_trainable_layers",
    "freeze_trainable_modules", "quantization_bit", "quantization_method", "dataset_dir",
    "max_samples", "dataset", "eval_dataset", "cutoff_len", "packing", "val_size",
    "default_system", "max_steps", "lr_scheduler_type", "disable_gradient_checkpointing",
    "report_to", "output_dir", "deepspeed", "resume_from_checkpoint",
)  # fmt: skip


@dataclass
class Imported:
    """The recipe, and what became of each key of the file."""

    recipe: dict[str, Any]
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (file key, recipe key)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (file key, why)


def import_llamafactory(raw: dict[str, Any], origin: str) -> Imported:
    """The tunelab recipe for a LLaMA-Factory SFT training file (lora, qlora, full, freeze)."""
    stage = raw.get("stage", "sft")
    if stage != "sft":
        raise TunelabError(
            f"{origin}: stage `{stage}` is not supervised fine-tuning; tunelab imports sft "
            "files (lora, qlora, full, freeze) only."
        )
    out = Imported({"model": {}, "data": {}, "method": {}, "train": {}})
    _check_keys(raw, origin)
    keys = dict(raw)
    keys.pop("stage", None)
    out.mapped.append(("stage", "(sft: tunelab train)"))
    _model(keys, out)
    _method(keys, out, origin)
    _data(keys, out)
    _train(keys, out, origin)
    _deepspeed(keys, out, origin)
    for key in list(keys):
        value = keys.pop(key)
        if key in IGNORED:
            out.dropped.append((key, IGNORED[key]))
        elif key == "resume_from_checkpoint":
            why = "resume with tunelab train RECIPE --resume" if value else "not set"
            out.dropped.append((key, why))
        elif "vision" in key or "image" in key or "video" in key or "audio" in key:
            out.dropped.append((key, "tunelab trains text models; media inputs are not read"))
        else:
            out.dropped.append((key, "not a setting tunelab has"))
    return out


def _take(keys: dict, out: Imported, key: str, section: str, name: str, convert=None,
          origin: str = "the file") -> None:  # fmt: skip
    if key not in keys:
        return
    value = keys.pop(key)
    try:
        out.recipe[section][name] = convert(value) if convert else value
    except (TypeError, ValueError):
        raise TunelabError(
            f"{origin}: {key} is {value!r}, which is not a number; write it like 1.0e-4 or 3."
        ) from None
    out.mapped.append((key, f"{section}.{name}"))


def _check_keys(raw: dict, origin: str) -> None:
    """Every key a name, and none a misspelling of a key tunelab reads (it would be dropped
    and the run would train otherwise than the file says)."""
    for key in raw:
        if not isinstance(key, str):
            raise TunelabError(
                f"{origin}: the key {key!r} is not a name; LLaMA-Factory's keys are names "
                "such as learning_rate."
            )
        if key in KNOWN:
            continue
        close = difflib.get_close_matches(key, KNOWN, n=1, cutoff=0.8)
        if close:
            raise TunelabError(
                f"{origin}: {key} is not a LLaMA-Factory setting; did you mean {close[0]}?"
            )


def _deepspeed(keys: dict, out: Imported, origin: str) -> None:
    """A DeepSpeed config file as train.distributed (its ZeRO stage) and train.offload."""
    if "deepspeed" not in keys:
        return
    value = keys.pop("deepspeed")
    config = _deepspeed_file(str(value), Path(origin), origin)
    zero = config.get("zero_optimization") or {}
    stage = zero.get("stage", 0) if isinstance(zero.get("stage", 0), int) else 0
    train = out.recipe["train"]
    train["distributed"] = {0: "ddp", 1: "zero2", 2: "zero2"}.get(stage, "zero3")
    devices = [
        (zero.get(part) or {}).get("device") for part in ("offload_optimizer", "offload_param")
    ]
    if devices[0] == "cpu":
        train["offload"] = "all" if devices[1] == "cpu" and stage == 3 else "optimizer"
    how = f"train.distributed: {train['distributed']}" + (
        f", train.offload: {train['offload']}" if "offload" in train else ""
    )
    out.mapped.append(("deepspeed", f"{how} (ZeRO stage {stage} in {value}; run with --nproc N)"))


def _deepspeed_file(value: str, source: Path, origin: str) -> dict:
    """The DeepSpeed config named by `value`: as given, or beside the training file or in a
    folder above it (LLaMA-Factory names it from its own root, examples/deepspeed/...)."""
    import json

    given = Path(value).expanduser()
    tails = [given, Path(*given.parts[1:])] if len(given.parts) > 1 else [given]
    folders = [Path.cwd(), source.parent, *source.parent.parents]
    found = next((f / t for f in folders for t in tails if (f / t).is_file()), None)
    if found is None:
        raise TunelabError(
            f"{origin}: deepspeed names {value}, which does not exist (looked as given, beside "
            "the file and in the folders above it); give the config's path."
        )
    try:
        config = json.loads(found.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TunelabError(f"{found}: the DeepSpeed config is not JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise TunelabError(f"{found}: the DeepSpeed config is not a JSON object.")
    return config


def _model(keys: dict, out: Imported) -> None:
    _take(keys, out, "model_name_or_path", "model", "path")
    template = keys.pop("template", None)
    if template is None:
        return
    out.recipe["model"]["template"] = "auto"
    if str(template).endswith("_nothink"):
        out.recipe["model"]["template_args"] = {"enable_thinking": False}
        out.mapped.append(
            ("template", "model.template: auto, template_args.enable_thinking: false")
        )
    else:
        out.mapped.append(("template", "model.template: auto (the model's own chat template)"))


def _method(keys: dict, out: Imported, origin: str) -> None:
    kind = keys.pop("finetuning_type", "lora")
    if kind not in ("lora", "full", "freeze"):
        raise TunelabError(f"{origin}: finetuning_type `{kind}` is not lora, full or freeze.")
    method = out.recipe["method"]
    method["type"] = "dora" if kind == "lora" and keys.pop("use_dora", False) else kind
    out.mapped.append(("finetuning_type", f"method.type: {method['type']}"))
    _quantization(keys, out, origin)
    if kind == "lora":
        _take(keys, out, "lora_rank", "method", "r")
        method.setdefault("r", 8)
        method["alpha"] = keys.pop("lora_alpha", None) or 2 * method["r"]  # its default: 2 r
        method["dropout"] = keys.pop("lora_dropout", 0.0)  # its default: none
        out.mapped.append(("lora_alpha, lora_dropout", "method.alpha, method.dropout"))
        target = keys.pop("lora_target", "all")
        method["target"] = "all-linear" if target == "all" else _names(target)
        out.mapped.append(("lora_target", "method.target"))
    if kind == "freeze":
        _take(keys, out, "freeze_trainable_layers", "method", "layers")
        _take(keys, out, "freeze_trainable_modules", "method", "modules", _freeze_modules)


def _quantization(keys: dict, out: Imported, origin: str) -> None:
    bits = keys.pop("quantization_bit", None)
    how = keys.pop("quantization_method", "bnb")
    if bits is None:
        return
    if out.recipe["method"]["type"] != "lora" or bits != 4 or how != "bnb":
        raise TunelabError(
            f"{origin}: quantization_bit {bits} with {how} is not one tunelab trains; "
            "QLoRA is 4-bit bitsandbytes with finetuning_type lora."
        )
    out.recipe["method"]["type"] = "qlora"
    out.mapped.append(("quantization_bit, quantization_method", "method.type: qlora"))


def _data(keys: dict, out: Imported) -> None:
    data = out.recipe["data"]
    folder = keys.pop("dataset_dir", "data")
    data["registry"] = str(Path(folder) / "dataset_info.json")
    out.mapped.append(("dataset_dir", "data.registry"))
    limit = keys.pop("max_samples", None)
    for key, name in (("dataset", "train"), ("eval_dataset", "eval")):
        if key in keys:
            names = _names(keys.pop(key))
            data[name] = [{"path": n, "limit": limit} if limit else n for n in names]
            out.mapped.append(
                (key, f"data.{name}" + (" (with max_samples as limit)" if limit else ""))
            )
    _take(keys, out, "cutoff_len", "data", "max_length")
    _take(keys, out, "packing", "data", "packing")
    if isinstance(keys.get("val_size"), float) and 0 < keys["val_size"] < 1:
        _take(keys, out, "val_size", "data", "val_ratio")
    _take(keys, out, "default_system", "data", "system")


def _train(keys: dict, out: Imported, origin: str) -> None:
    for key, name in PLAIN_TRAIN.items():
        convert = float if name in ("lr", "epochs", "warmup_ratio", "weight_decay") else None
        _take(keys, out, key, "train", name, convert, origin)
    if isinstance(keys.get("max_steps"), int) and keys["max_steps"] > 0:  # -1: by epochs
        _take(keys, out, "max_steps", "train", "max_steps")
    if keys.get("lr_scheduler_type") in SCHEDULERS:
        _take(keys, out, "lr_scheduler_type", "train", "scheduler")
    train = out.recipe["train"]
    train["gradient_checkpointing"] = not keys.pop("disable_gradient_checkpointing", False)
    out.mapped.append(("disable_gradient_checkpointing", "train.gradient_checkpointing"))
    if "report_to" in keys:
        trackers = _names(keys.pop("report_to"))
        trackers = list(TRACKERS) if "all" in trackers else trackers
        train["tensorboard"] = "tensorboard" in trackers
        train["report_to"] = [name for name in TRACKERS[1:] if name in trackers]
        out.mapped.append(("report_to", "train.tensorboard, train.report_to"))
        for name in trackers:
            if name not in ("none", *TRACKERS):
                out.dropped.append(
                    ("report_to", f"{name}: tunelab reports to {', '.join(TRACKERS)}")
                )
    if "output_dir" in keys:
        out.recipe["output"] = keys.pop("output_dir")
        out.mapped.append(("output_dir", "output"))


def _names(value: object) -> list[str]:
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _freeze_modules(value: object) -> list[str] | None:
    names = _names(value)
    return None if names == ["all"] else names


def import_file(path: Path, out: Path) -> Imported:
    """Read a LLaMA-Factory training file, check the recipe it becomes, and write that recipe
    to `out` (never over an existing file)."""
    import yaml

    if not path.is_file():
        raise TunelabError(f"{path} does not exist; give a LLaMA-Factory training .yaml file.")
    if out.exists():
        raise TunelabError(f"--out {out} exists; give a new file name.")
    raw, _ = read_yaml(path)
    if not looks_like_llamafactory(raw):
        raise TunelabError(
            f"{path} does not look like a LLaMA-Factory training file (no model_name_or_path, "
            "finetuning_type, dataset, cutoff_len ...)."
        )
    imported = import_llamafactory(raw, str(path))
    try:  # the recipe it writes validates, or nothing is written
        load_recipe(imported.recipe)
    except TunelabError as exc:
        sources = {target.split(":")[0]: key for key, target in imported.mapped}
        named = next((f" (from {sources[t]})" for t in sources if f"`{t}`" in str(exc)), "")
        raise TunelabError(f"{path}: the recipe it imports as is refused{named}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# imported from the LLaMA-Factory file {path} by `tunelab recipe import`\n"
    body = yaml.safe_dump(imported.recipe, sort_keys=False, allow_unicode=True)
    out.write_text(header + body, encoding="utf-8")
    return imported


KNOWN = (*OTHER_KEYS, *PLAIN_TRAIN, *IGNORED)


def show_import(console, imported: Imported, out: Path) -> None:
    """What the import mapped and dropped (stdout), and how to train the recipe (stderr)."""
    from rich.markup import escape

    for key, target in imported.mapped:
        print(f"mapped   {key} -> {target}")
    for key, why in imported.dropped:
        print(f"dropped  {key}: {why}")
    console.print(
        f"wrote {escape(str(out))}; train it with `tunelab train {escape(str(out))}`",
        highlight=False,
    )
