"""Fused kernels when they are installed and useful: liger-kernel and flash-attention (CUDA only).

Nothing here is needed on a CPU; a CPU run gets neither and says so only if they were asked for.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Kernels:
    liger: bool = False
    flash_attention: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def used(self) -> str:
        """The kernels in use, e.g. "liger, flash-attention", or "none"."""
        names = [
            n for n, on in (("liger", self.liger), ("flash-attention", self.flash_attention)) if on
        ]
        return ", ".join(names) or "none"

    def describe(self) -> str:
        return f"fused kernels: {self.used}"


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def choose_kernels(setting: bool | None, device: torch.device, dtype: torch.dtype) -> Kernels:
    """Which fused kernels to use: `setting` None means whatever is present on a CUDA GPU."""
    if setting is False:
        return Kernels()
    notes = []
    if device.type != "cuda":
        if setting:
            notes.append("train.fused_kernels needs a CUDA GPU; training with the standard kernels")
        return Kernels(notes=notes)
    liger = installed("liger_kernel")
    flash = installed("flash_attn") and dtype in (torch.float16, torch.bfloat16)
    if setting and not liger:
        notes.append("liger-kernel is not installed (pip install liger-kernel); not used")
    if setting and not flash:
        notes.append(
            "flash-attention needs the flash_attn package and bf16/fp16 weights; sdpa used"
        )
    return Kernels(liger=liger, flash_attention=flash, notes=notes)
