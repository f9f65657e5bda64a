"""Keep library chatter (loading bars, advice) out of the user's terminal."""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Silence transformers' progress bars and info logs; errors still surface."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
