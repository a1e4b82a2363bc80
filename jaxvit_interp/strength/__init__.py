"""Attention strength (paper §5.3): where each head looks on the patch grid, near or far.

- :func:`hop_strength`: strength per Chebyshev hop, hop masses, CLS masses, mean attention
  distance and head entropy of attention arrays ``[..., N, N]`` in memory.
- :func:`strength_over_images` / :func:`model_strength_over_images`: the same streamed over many
  images batch by batch (sharded over a device mesh), with per-image ("local") results and
  :func:`summarize`'s over-images ("global") ones: mean strength, mass, distance, CLS masses and
  entropy per head, and each head's entropy histogram on fixed bins.
- :func:`special_token_mass` / :func:`model_special_mass_over_images`: attention to and from
  each special token (CLS, distillation, registers), which are not on the grid.
- :mod:`.hops` the ring geometry, :mod:`.kernels` and :mod:`.special` the pure jitted kernels and
  exact definitions, :mod:`.reference` plain loops used to test them.
"""

from jaxvit_interp.strength.aggregate import (
    StrengthResults,
    model_special_mass_over_images,
    model_strength_over_images,
    strength_over_images,
    summarize,
)
from jaxvit_interp.strength.hops import (
    HopRings,
    hop_matrix,
    hop_rings,
    num_hops,
    ring_counts,
    rings_for,
)
from jaxvit_interp.strength.kernels import (
    HopStrength,
    StrengthSummary,
    hop_mass_per_query,
    hop_strength_kernel,
    summarize_kernel,
)
from jaxvit_interp.strength.measure import hop_strength
from jaxvit_interp.strength.special import (
    SpecialTokenMass,
    special_token_mass,
    special_token_mass_kernel,
    special_token_names,
)

__all__ = [
    "HopRings",
    "HopStrength",
    "SpecialTokenMass",
    "StrengthResults",
    "StrengthSummary",
    "hop_mass_per_query",
    "hop_matrix",
    "hop_rings",
    "hop_strength",
    "hop_strength_kernel",
    "model_special_mass_over_images",
    "model_strength_over_images",
    "num_hops",
    "ring_counts",
    "rings_for",
    "special_token_mass",
    "special_token_mass_kernel",
    "special_token_names",
    "strength_over_images",
    "summarize",
    "summarize_kernel",
]
