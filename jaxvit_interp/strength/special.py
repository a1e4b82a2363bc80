"""Attention mass to and from the special tokens (CLS, distillation, registers), per head.

The special tokens are not on the patch grid, so hop strength and the patterns leave them out;
how much attention they draw and give is a quantity of its own.  For one head's attention ``A``
``[N, N]`` whose first ``T`` tokens are special and the remaining ``P`` are patches:

- ``to_token[t] = mean_i A[i, t]`` over query patches ``i``: the attention a patch pays special
  token ``t`` (for CLS, :class:`~.kernels.HopStrength`'s ``patch_to_cls``).
- ``from_token[t] = sum_j A[t, j]`` over key patches ``j``: the attention token ``t`` pays all
  patches together (for CLS, ``cls_to_patch``).
- ``between[s, t] = A[s, t]``: what special token ``s`` pays special token ``t``.

A register that collects attention from every patch and gives little back (DINOv2's registers,
the "high-norm" tokens of Darcet et al. 2024) shows as a large ``to_token`` and a small
``from_token``.

Axis names: ``image layer head special``.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxvit_interp.errors import InputError

Array = jax.Array


@flax.struct.dataclass
class SpecialTokenMass:
    """Attention to and from each special token; ``...`` is the attention's leading axes.

    Attributes:
      to_token: ``[..., special]`` mean over query patches of the attention paid to each token.
      from_token: ``[..., special]`` attention each token pays all key patches together.
      between: ``[..., special, special]`` attention special tokens (rows) pay each other.
    """

    to_token: Array
    from_token: Array
    between: Array


@functools.partial(jax.jit, static_argnames=("num_special",))
def special_token_mass_kernel(attention: Array, num_special: int) -> SpecialTokenMass:
    """:class:`SpecialTokenMass` of attention ``[..., N, N]`` whose first ``num_special`` tokens
    are special; no input checks (see :func:`special_token_mass`)."""
    attention = jnp.asarray(attention)
    attention = attention.astype(jnp.promote_types(attention.dtype, jnp.float32))
    t = num_special
    return SpecialTokenMass(
        to_token=attention[..., t:, :t].mean(axis=-2),
        from_token=attention[..., :t, t:].sum(axis=-1),
        between=attention[..., :t, :t],
    )


def special_token_names(config) -> tuple[str, ...]:
    """Names of a model's special tokens in token order: ``cls``, ``distillation``,
    ``register_0``, ... (a :class:`~jaxvit_interp.model.config.ViTConfig`)."""
    names = ["cls"] if config.has_cls_token else []
    names += ["distillation"] if config.distillation_token else []
    names += [f"register_{i}" for i in range(config.num_register_tokens)]
    return tuple(names)


def special_token_mass(attention, num_special: int) -> SpecialTokenMass:
    """Attention mass to and from each of the first ``num_special`` tokens.

    Args:
      attention: ``[..., N, N]`` attention probabilities (rows queries, columns keys), the special
        tokens first (``config.num_prefix_tokens`` of them, named by
        :func:`special_token_names`), then at least one patch.
      num_special: how many leading tokens are special; 0 gives empty arrays.

    Returns:
      :class:`SpecialTokenMass` with leading axes ``...``.

    Raises:
      InputError: the attention is not ``[..., N, N]`` with more than ``num_special`` tokens.
    """
    shape = tuple(np.shape(attention))
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise InputError(f"attention has shape {shape}; expected [..., N, N] (query, key)")
    if isinstance(num_special, bool) or not 0 <= int(num_special) < shape[-1]:
        raise InputError(
            f"num_special={num_special!r}: attention over {shape[-1]} tokens needs between 0 and "
            f"{shape[-1] - 1} special tokens (at least one patch)"
        )
    return special_token_mass_kernel(attention, int(num_special))
