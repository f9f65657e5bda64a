"""Reading a model config's sizes, per-layer configs included.

Some configs hold a size per layer (Gemma 4: `config.head_dim` raises, the value lives in
`config.per_layer_config[i]`); the estimate wants one number, and takes the largest.
"""

from __future__ import annotations


def config_value(config, name: str, default=None):
    """`config.<name>`, the largest per-layer value where the config keeps one per layer, or
    `default` where it has none (or None)."""
    try:
        value = getattr(config, name, None)
    except Exception:  # a per-layer attribute read globally
        values = [getattr(layer, name, None) for layer in getattr(config, "per_layer_config", [])]
        values = [v for v in values if v is not None]
        value = max(values) if values else None
    return default if value is None else value
