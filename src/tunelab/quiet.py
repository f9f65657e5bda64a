"""Keep library chatter (loading bars, advice) out of the user's terminal."""

from __future__ import annotations

import logging
import os
import warnings

# bitsandbytes warns on import that an optional CPU kernel package is absent; it works without.
NOISY_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def quiet_imports() -> None:
    """Silence import-time chatter of optional dependencies (cheap: imports nothing)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """Silence transformers' progress bars and info logs; errors still surface."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_imports()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # Raised from peft's call site, so it is not attributed to transformers' module.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    # TRL's ORPO and CPO trainers (tunelab's orpo and simpo objectives) live in trl.experimental,
    # which warns on import; tunelab pins the TRL version they are tested with.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.getLogger("trl").setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # DeepSpeed (zero2/zero3) warns when it falls back to the CPU; here that is known already.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", category=FutureWarning, message="`torch.distributed.")
