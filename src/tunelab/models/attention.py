"""Attention for packed rows: each sample attends only within itself, with the kernel the
device does best.

transformers' sdpa path turns a packed row into one block-diagonal mask over the whole row, so
its cost grows with the square of the row's length although most of the blocks are masked out.
The flattening collator passes each row's sample boundaries (`cu_seq_lens_q`, `max_length_q`),
and the packed attention keeps every sample to itself with them:

- on a CUDA GPU in bf16/fp16, torch's own variable-length attention (`varlen_attn`): one kernel
  call per layer for all the samples, no host sync, grouped-query heads as they are;
- elsewhere (a CPU, fp32 weights), one causal sdpa call per sample: the work is the sum of the
  squares of the sample lengths (measured faster on a CPU than one masked call over the row).

A sliding-window layer (Gemma, Mistral, Qwen2 with `use_sliding_window`) keeps its window inside
each sample, as when the sample runs alone.

With `flash_attn` installed, a GPU run loads transformers' flash_attention_2 instead (its varlen
kernel, on the same boundaries). Anything that is not a packed training row (generation, padded
batches, a KV cache) goes to transformers' own sdpa. The mask transformers would build for a
packed row (one row by one row, never read here) is not built.
"""

from __future__ import annotations

import functools
import inspect

import torch

NAME = "tunelab_packed_sdpa"
VARLEN = "varlen (torch)"
PER_SAMPLE = "per-sample sdpa"
FLASH = "flash-attention varlen"
HALF = (torch.bfloat16, torch.float16)


@functools.cache
def varlen_function():
    """torch's varlen attention and whether it takes `enable_gqa`, or None (torch < 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, "enable_gqa" in inspect.signature(varlen_attn).parameters


def packed_backend(device: torch.device, dtype: torch.dtype, flash_attn: bool = False) -> str:
    """The kernel a packed row's attention runs on for this device and weight dtype."""
    if device.type != "cuda" or dtype not in HALF:
        return PER_SAMPLE
    if flash_attn:
        return FLASH
    return VARLEN if varlen_function() else PER_SAMPLE


def packed_sdpa_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    bounds = kwargs.get("cu_seq_lens_q")
    if (
        bounds is None
        or query.shape[0] != 1
        or query.shape[2] != key.shape[2]
        or kwargs.get("past_key_values") is not None
    ):
        return _plain_sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    window = kwargs.get("sliding_window") or None
    if query.is_cuda and query.dtype in HALF and not dropout and varlen_function():
        longest = kwargs.get("max_length_q")
        return _varlen(query, key, value, bounds, longest, scaling, groups, window), None
    return _per_sample(query, key, value, bounds, dropout, scaling, groups, window), None


def _plain_sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _varlen(query, key, value, bounds, longest, scaling, groups: int, window=None) -> torch.Tensor:
    """All samples of the row in one kernel call: (1, heads, L, dim) in, (1, L, heads, dim) out.
    A sliding-window layer sees its `window` tokens (itself included), as in transformers."""
    varlen_attn, takes_gqa = varlen_function()
    if longest is None:  # the collator gives it as a number; computing it syncs with the host
        longest = int((bounds[1:] - bounds[:-1]).max())
    bounds = bounds.to(device=query.device, dtype=torch.int32)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (L, heads, dim)
    extra = {"enable_gqa": True} if takes_gqa and groups > 1 else {}
    reach = (window - 1, 0) if window else (-1, 0)
    output = varlen_attn(
        q, k, v, bounds, bounds, longest, longest, scale=scaling, window_size=reach, **extra
    )
    return output.unsqueeze(0)


def _per_sample(
    query, key, value, bounds, dropout, scaling, groups: int, window=None
) -> torch.Tensor:
    """One causal sdpa call per sample of the row; a sample longer than a sliding-window
    layer's window gets the band of its last `window` tokens."""
    edges = bounds.tolist() if isinstance(bounds, torch.Tensor) else list(bounds)
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            attn_mask=_band(end - start, window, query.device),
            dropout_p=dropout,
            scale=scaling,
            is_causal=not (window and end - start > window),
            enable_gqa=groups > 1,
        )
        for start, end in zip(edges[:-1], edges[1:])
    ]
    output = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return output.transpose(1, 2).contiguous()


def _band(length: int, window: int | None, device) -> torch.Tensor | None:
    """The causal sliding-window mask of one sample (True: attended), or None where the
    window covers the whole sample and plain causal attention is the same."""
    if not window or length <= window:
        return None
    position = torch.arange(length, device=device)
    distance = position[:, None] - position[None, :]
    return (distance >= 0) & (distance < window)


def packed_row_mask(*args, **kwargs):
    """transformers' sdpa mask, except for a packed training row (a mask made from restarting
    positions: no padding mask, no cache, no custom mask function): None, since its attention
    reads the sample boundaries, and a row-by-row mask costs the square of the row's length."""
    from transformers.masking_utils import sdpa_mask

    packed = (
        kwargs.get("attention_mask") is None
        and not kwargs.get("allow_is_causal_skip", True)
        and not kwargs.get("use_vmap", False)
        and not kwargs.get("q_offset", 0)
        and not kwargs.get("kv_offset", 0)
        and kwargs.get("q_length") == kwargs.get("kv_length")
    )
    return None if packed else sdpa_mask(*args, **kwargs)


def register() -> str:
    """Make the packed attention loadable by name (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, packed_row_mask)
    return NAME
