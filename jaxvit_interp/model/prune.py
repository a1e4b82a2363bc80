"""Remove heads physically: smaller query, key, value and output matrices, a lighter model.

Removing head ``h`` of block ``l`` deletes its ``head_dim`` columns of the query, key and value
projections and its rows of the output projection.  The block's output is the sum of its heads'
terms, so the smaller model computes exactly what the full one computes with those heads'
``head_mask`` at 0 (to float32 rounding: the sums run over fewer terms).  The output
projection's bias stays: it belongs to the block, not to a head.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig


def remove_heads(config: ViTConfig, params: Any, heads) -> tuple[ViTConfig, dict[str, Any]]:
    """``(config, params)`` of the model without ``heads``.

    Args:
      config, params: an unpruned model (``heads_per_layer`` None).
      heads: ``[(layer, head), ...]`` to remove, or a ``[layer, head]`` head mask (0 removes).

    Returns:
      The config with ``heads_per_layer`` set and a new parameter tree (NumPy arrays) whose
      attention matrices hold the kept heads in their original order.
    """
    if config.heads_per_layer is not None:
        raise InputError(
            f"this model already has heads removed (heads_per_layer={config.heads_per_layer}); "
            "remove heads from the unpruned model"
        )
    L, H = config.num_layers, config.num_heads
    keep = np.ones((L, H), bool)
    array = np.asarray(heads) if not isinstance(heads, list | tuple) else None
    if array is not None and array.shape == (L, H):
        keep = array.astype(bool)
    else:
        for item in heads:
            layer, head = (int(v) for v in item)
            if not (0 <= layer < L and 0 <= head < H):
                raise InputError(
                    f"head (layer={layer}, head={head}) is outside the model's {L} layers x "
                    f"{H} heads"
                )
            keep[layer, head] = False
    encoder = dict(params["Transformer"])
    for layer in range(L):
        name = f"encoderblock_{layer}"
        block = dict(encoder[name])
        attention = dict(block["MultiHeadDotProductAttention_1"])
        kept = np.flatnonzero(keep[layer])
        for proj in ("query", "key", "value"):
            p = {"kernel": np.asarray(attention[proj]["kernel"])[:, kept]}
            if "bias" in attention[proj]:
                p["bias"] = np.asarray(attention[proj]["bias"])[kept]
            attention[proj] = p
        out = {"kernel": np.asarray(attention["out"]["kernel"])[kept]}
        if "bias" in attention["out"]:
            out["bias"] = np.asarray(attention["out"]["bias"])
        attention["out"] = out
        block["MultiHeadDotProductAttention_1"] = attention
        encoder[name] = block
    pruned = {**params, "Transformer": encoder}
    counts = tuple(int(n) for n in keep.sum(axis=1))
    return config.replace(heads_per_layer=counts), pruned


def parameter_count(params: Any) -> int:
    """Number of parameters in a tree."""
    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params)))
