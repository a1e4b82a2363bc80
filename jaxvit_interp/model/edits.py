"""Attention edits: zeroing chosen entries of chosen heads' attention (the paper's partial pruning).

An edit multiplies softmax probabilities by a keep factor and does not renormalise, so zeroing
entries removes their contribution to the head's output exactly as in Li et al. 2023, panel B2.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError

Array = jax.Array

# The partial-pruning modes of the paper's B2 panel, in its order.
PRUNING_MODES: tuple[str, ...] = (
    "none",  # keep the head as it is
    "head",  # zero every entry: the whole head pruned
    "cls",  # all entries touching CLS: its row and its column
    "patch_to_patch",  # the patch -> patch block only
    "cls_patch",  # CLS -> patch and patch -> CLS, keeping CLS -> CLS
    "cls_to_cls",  # the single CLS -> CLS entry
)
# Modes that need a CLS token; a model with classifier="gap" has only the other three.
CLS_MODES = frozenset({"cls", "cls_patch", "cls_to_cls"})


def keep_mask(
    mode: str, num_tokens: int, has_cls_token: bool = True, num_prefix_tokens: int | None = None
) -> np.ndarray:
    """Keep factors ``[query, key]`` (1 keep, 0 zero) for one partial-pruning ``mode``.

    ``num_prefix_tokens``: special tokens before the patches (CLS first when ``has_cls_token``,
    then distillation and register tokens; ``config.num_prefix_tokens``), by default just the CLS
    token.  The modes name CLS and the patches only: entries of the other special tokens are
    kept, except that ``head`` zeroes everything and ``cls`` CLS's whole row and column.
    """
    if mode not in PRUNING_MODES:
        raise InputError(
            f"unknown pruning mode {mode!r}; expected one of {', '.join(PRUNING_MODES)}"
        )
    if mode in CLS_MODES and not has_cls_token:
        raise InputError(f"pruning mode {mode!r} needs a CLS token, and this model has none")
    first_patch = int(has_cls_token) if num_prefix_tokens is None else num_prefix_tokens
    if not int(has_cls_token) <= first_patch <= num_tokens:
        raise InputError(
            f"num_prefix_tokens {num_prefix_tokens} does not fit {num_tokens} tokens"
            + (" with a CLS token" if has_cls_token else "")
        )
    keep = np.ones((num_tokens, num_tokens), np.float32)
    if mode == "head":
        keep[:] = 0
    elif mode == "cls":
        keep[0, :] = 0
        keep[:, 0] = 0
    elif mode == "patch_to_patch":
        keep[first_patch:, first_patch:] = 0
    elif mode == "cls_patch":
        keep[0, first_patch:] = 0
        keep[first_patch:, 0] = 0
    elif mode == "cls_to_cls":
        keep[0, 0] = 0
    return keep


@flax.struct.dataclass
class AttentionEdit:
    """Which heads to edit and what to keep of their attention.

    Attributes:
      heads: ``[layer, head]``, 1 where the head is edited, 0 where it is left alone.
      keep: ``[query, key]`` keep factors applied to every edited head, or
        ``[layer, head, query, key]`` for a different pattern per head.

    A pytree, so a batch of edits can be ``jax.vmap``-ed over.
    """

    heads: Array
    keep: Array

    def keep_for_layer(self, layer: int) -> Array:
        """Effective keep factors ``[head, query, key]`` of one layer (1 on unedited heads)."""
        keep = self.keep if self.keep.ndim == 2 else self.keep[layer]
        edited = self.heads[layer][:, None, None]
        return 1.0 - edited * (1.0 - keep)

    @classmethod
    def partial_pruning(cls, config, mode: str, layer: int, head: int) -> AttentionEdit:
        """The edit that applies ``mode`` to head ``head`` of layer ``layer`` of ``config``'s model."""
        if not (0 <= layer < config.num_layers and 0 <= head < config.num_heads):
            raise InputError(
                f"head (layer={layer}, head={head}) is outside the model's "
                f"{config.num_layers} layers x {config.num_heads} heads"
            )
        heads = np.zeros((config.num_layers, config.num_heads), np.float32)
        heads[layer, head] = 1
        keep = keep_mask(mode, config.num_tokens, config.has_cls_token, config.num_prefix_tokens)
        return cls(heads=jnp.asarray(heads), keep=jnp.asarray(keep))
