"""What LLaMA-Factory needs to import next to the CPU build of torch (shared by its runners)."""

import importlib.machinery
import sys
import types


def allow_import() -> None:
    """LLaMA-Factory imports torchaudio at the top of its multimodal plugin; text fine-tuning
    never calls it, and no torchaudio build matches the CPU wheel of torch 2.13, so an empty
    module stands in for it (setup_peers.sh removes the mismatched torchvision/torchaudio)."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        stand_in = types.ModuleType("torchaudio")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stand_in
