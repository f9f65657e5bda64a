"""Where tunelab keeps what is not part of a run: converted models, the data cache, crash logs."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """The user cache folder of tunelab (TUNELAB_CACHE overrides it)."""
    return Path(os.environ.get("TUNELAB_CACHE") or platformdirs.user_cache_dir("tunelab"))
