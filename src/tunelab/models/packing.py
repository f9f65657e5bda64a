"""Whether a model can train on packed rows without one sample reading another.

A packed row keeps its samples apart only where every layer that mixes tokens reads the
sample boundaries. Attention layers do (tunelab's packed attention, flash-attention, and
transformers' own masks built from restarting positions); the torch paths of state-space,
linear-attention and short-convolution layers (Mamba, gated delta rule, lightning attention,
LFM2's conv) do not: they carry their state from one sample into the next, or refuse. So:

- before anything loads, the config says which kinds of layers the model has
  (`config.layer_types`, which transformers fills for hybrids too) and whether its own
  attention can run on sdpa at all (soft-capping and attention sinks cannot);
- once the weights are loaded, `packed_rows_leak` runs one short packed row through the model
  twice, with the same last sample after two different first ones: where the samples are kept
  apart, the last sample's logits are the same both times. A model that fails (or refuses a
  packed row) trains on padded batches instead, with the measured reason in the run's notes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

ATTENTION_LAYERS = frozenset(
    {"full_attention", "sliding_attention", "chunked_attention", "attention", "global"}
)
# Kernels whose varlen paths take the sample boundaries of a packed row (CUDA only).
BOUNDARY_KERNELS = ("fla", "mamba_ssm")
# Differences below this fraction of the logits' scale are rounding, not a leak: float32 is
# exact to about 1e-7 here; in bf16/fp16 a mixture of experts groups B's tokens with different
# neighbours, and the matmuls round differently (a state-space leak moves logits by their scale).
LEAK_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-5}
HALF_TOLERANCE = 2e-2


@dataclass(frozen=True)
class PackingFit:
    """What the model's layers allow: packed rows or not (and why), and whether training runs
    on the model's own attention because sdpa cannot serve it."""

    packable: bool = True
    reason: str = ""
    own_attention: bool = False


def packing_fit(config, device: torch.device) -> PackingFit:
    """The fit of a model with `config` on `device`, from the config alone."""
    own = not _supports_sdpa(config)
    mixers = sorted(set(layer_types(config)) - ATTENTION_LAYERS)
    if mixers and not (device.type == "cuda" and any(map(_installed, BOUNDARY_KERNELS))):
        return PackingFit(
            False,
            f"the model's {'/'.join(mixers)} layers carry state from one sample of a packed row "
            "into the next without flash-linear-attention or mamba-ssm on a CUDA GPU",
            own,
        )
    if own:
        return PackingFit(
            False,
            "the model's attention runs only as its own implementation, soft-capping or sinks "
            "included, which would hold a packed row's whole square",
            True,
        )
    return PackingFit()


def layer_types(config) -> list[str]:
    """The kind of each decoder layer ("full_attention", "linear_attention", "conv", ...)."""
    try:
        kinds = getattr(config, "layer_types", None)
    except Exception:  # a per-layer config (Gemma 4) refuses some global attributes
        kinds = None
    return [str(kind) for kind in kinds or []]


def _supports_sdpa(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:  # a model folder's own code: its class is only known once loaded
        return True
    return bool(getattr(model_class, "_supports_sdpa", True))


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _cuda_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def packed_rows_leak(model) -> str | None:
    """Why packed rows of `model` do not keep samples apart (None when they do), measured on
    one short row: [A, B] and [A', B] must give B the same logits."""
    from transformers import DataCollatorWithFlattening

    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    last = torch.randint(vocab // 4, vocab // 2, (7,), generator=generator).tolist()
    rows = [
        [torch.randint(vocab // 2, vocab, (9,), generator=generator).tolist(), last]
        for _ in range(2)
    ]
    collate = DataCollatorWithFlattening(return_flash_attn_kwargs=True)
    device = next(model.parameters()).device
    # Dropout off (eval mode), except for 4-bit weights: bitsandbytes repacks them for
    # inference on a CPU in eval mode. On a copy of the random state the run goes on from.
    was_training = model.training
    model.train(bool(getattr(model, "is_loaded_in_4bit", False)))
    try:
        logits = []
        with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(device)):
            for row in rows:
                batch = collate([{"input_ids": ids} for ids in row])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                batch.pop("labels", None)
                output = model(**batch, use_cache=False)
                logits.append(output.logits[0, -len(last) :].float())
    except Exception as exc:  # e.g. a gated-delta layer without its varlen kernel
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"the model refuses a packed row ({first[:160]})"
    finally:
        model.train(was_training)
    scale = float(logits[0].abs().max()) or 1.0
    gap = float((logits[0] - logits[1]).abs().max())
    tolerance = LEAK_TOLERANCE.get(getattr(model, "dtype", None), HALF_TOLERANCE)
    if gap > tolerance * max(scale, 1.0):
        return (
            f"a packed row's later sample reads the ones before it (its logits moved by "
            f"{gap:.2g} on a scale of {scale:.2g} when an earlier sample changed)"
        )
    return None
