"""LLaMA-Factory's side of benchmarks/preprocess.py: its own loading and tokenizing of a file
(get_dataset, the sft stage, or dpo/kto for preference rows) into an empty datasets cache,
then again from that cache.

    python preprocess_llamafactory.py SETTINGS.json
    # model, data, columns, workers, workdir; optionally stage and entry (a registry entry)
"""

import json
import os
import sys
import time
from pathlib import Path

from llamafactory_env import allow_import

settings = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
os.environ["HF_DATASETS_CACHE"] = settings["workdir"] + "/datasets-cache"
allow_import()

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.hparams import get_train_args  # noqa: E402
from llamafactory.model import load_tokenizer  # noqa: E402

folder = settings["workdir"] + "/llamafactory-data"
os.makedirs(folder, exist_ok=True)
entry = {**(settings.get("entry") or {}), "file_name": os.path.abspath(settings["data"])}
STAGE = settings.get("stage") or "sft"
if settings.get("columns"):
    entry["columns"] = settings["columns"]
with open(folder + "/dataset_info.json", "w", encoding="utf-8") as handle:
    json.dump({"bench": entry}, handle)


def arguments(overwrite: bool) -> dict:
    return {
        "model_name_or_path": settings["model"],
        "stage": STAGE,
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": "bench",
        "dataset_dir": folder,
        "template": "smollm2",
        "cutoff_len": 4096,
        "overwrite_cache": overwrite,
        "preprocessing_num_workers": settings["workers"],
        "output_dir": settings["workdir"] + "/llamafactory-run",
        "overwrite_output_dir": True,
        "report_to": "none",
        "use_cpu": True,
    }


model_args, data_args, training_args, _, _ = get_train_args(arguments(True))
tokenizer_module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
seconds = {}
for kind, overwrite in (("cold", True), ("cached", False)):
    model_args, data_args, training_args, _, _ = get_train_args(arguments(overwrite))
    start = time.perf_counter()
    stage = "rm" if STAGE == "dpo" else STAGE  # LLaMA-Factory's DPO reads pairs as rm does
    module = get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module)
    seconds[kind] = time.perf_counter() - start
samples = len(module["train_dataset"])
print(json.dumps({"samples": samples, **{f"{k}_seconds": v for k, v in seconds.items()}}))
