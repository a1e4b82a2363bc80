"""What ablating a head does to its output: a value the ablation engines take and consult.

A head's output before the output projection, its mixed values ``m_h = A_h V_h`` ``[token,
head_dim]``, is what an ablation changes.  Whatever takes its place, the block output changes by
one low-rank term, ``O_l - O'_l = (m_h - r_h) W_out,h`` with ``r_h`` the replacement, so both
engines stay exact and batched for any kind:

- the single-head engine takes that term off the unpruned block output
  (:func:`~jaxvit_interp.importance.engine.ablation_sweep`): :meth:`Ablation.removed` gives
  ``m_h - r_h``;
- the set engine runs every block with a head mask
  (:func:`~jaxvit_interp.importance.kernels.masked_block`): :meth:`Ablation.masked` gives the
  heads' mixed values with the masked ones ablated.

The two agree: ``masked(m, keep, r) == m - (1 - keep) * removed(m, r)``.

Kinds (:data:`ABLATION_KINDS`):

- ``"zero"``, the paper's: ``r_h = 0`` (the head's output times 0); it reads no other image.
- ``"mean"``: ``r_h`` is the head's output per token position averaged over reference images
  (by default the analysed images themselves), each from a clean forward pass: one
  ``[layer, head, token, head_dim]`` table shared by every image.
- ``"resample"``: image ``i``'s ``r_h`` is the same head's output on reference image ``i`` (its
  clean forward pass): a table per image, computed batch by batch beside the images.

The kind is hashable and static (compiled programs are cached on it); the replacement ``r`` is
data that travels with each batch (:mod:`jaxvit_interp.importance.replacement`), so a new
reference set compiles nothing new.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxvit_interp.errors import InputError
from jaxvit_interp.quantities import ABLATION_KINDS

__all__ = ["ABLATION_KINDS", "ZERO", "Ablation", "as_ablation"]

Array = jax.Array


# Where each kind's replacement comes from (see Ablation.replacement).
_REPLACEMENTS = {"zero": None, "mean": "shared", "resample": "per_image"}


@dataclasses.dataclass(frozen=True)
class Ablation:
    """How a head is ablated (see the module docstring); frozen, so compiled programs are cached
    on its value.

    Attributes:
      kind: one of :data:`ABLATION_KINDS`.
    """

    kind: str = "zero"

    def __post_init__(self):
        if self.kind not in ABLATION_KINDS:
            raise InputError(
                f"unknown ablation {self.kind!r}; expected one of {', '.join(ABLATION_KINDS)}"
            )

    @property
    def replacement(self) -> str | None:
        """What the replacement ``r`` is, as data: None (zero: nothing), ``"shared"`` (mean:
        one table for every image) or ``"per_image"`` (resample: a table per image)."""
        return _REPLACEMENTS.get(self.kind)

    def removed(self, mixed: Array, replacement: Array | None = None) -> Array:
        """What ablating takes away from each ablated head's mixed values ``m_h - r_h``:
        ``mixed`` ``[..., token, head_dim]`` and ``replacement`` ``r`` (broadcast to it; None
        for zero) -> ``mixed``'s shape.  Zero: all of it."""
        return mixed if replacement is None else mixed - replacement

    def masked(self, mixed: Array, keep: Array, replacement: Array | None = None) -> Array:
        """The heads' mixed values with those where ``keep`` is 0 ablated: ``mixed``
        ``[..., head, ...]``, ``keep`` (the head mask) and ``replacement`` (None for zero), both
        broadcast to ``mixed`` -> ``mixed``'s shape.  Zero: ``mixed * keep``; otherwise
        ``mixed * keep + replacement * (1 - keep)``."""
        if replacement is None:
            return mixed * keep
        return mixed * keep + replacement * (1 - keep)


ZERO = Ablation()


def as_ablation(ablation: str | Ablation) -> Ablation:
    """An :class:`Ablation` from its kind's name (or itself); anything else refused by name."""
    if isinstance(ablation, Ablation):
        return ablation
    if isinstance(ablation, str):
        return Ablation(ablation)
    raise InputError(
        f"ablation must be the name of a kind ({', '.join(ABLATION_KINDS)}) or an Ablation, got "
        f"{ablation!r}"
    )
