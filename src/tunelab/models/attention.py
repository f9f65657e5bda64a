"""Attention for packed rows without flash-attention: each sample attends only within itself.

transformers' sdpa path turns a packed row into one block-diagonal mask over the whole row, so
its cost grows with the square of the row's length although most of the blocks are masked out.
Here the packed row is cut at the sample boundaries that the flattening collator passes along
(`cu_seq_lens_q`), and each sample runs its own causal sdpa: the work is the sum of the squares of
the sample lengths, as with flash-attention's varlen kernel on a GPU. Anything that is not a
packed training row (generation, padded batches, a KV cache) goes to transformers' own sdpa.
"""

from __future__ import annotations

import torch

NAME = "tunelab_packed_sdpa"


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
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if (
        bounds is None
        or query.shape[0] != 1
        or query.shape[2] != key.shape[2]
        or kwargs.get("past_key_values") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    edges = bounds.tolist() if isinstance(bounds, torch.Tensor) else list(bounds)
    parts = []
    for start, end in zip(edges[:-1], edges[1:]):
        parts.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout,
                scale=scaling,
                is_causal=True,
                enable_gqa=groups > 1,
            )
        )
    output = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    return output.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make the packed attention loadable by name (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
