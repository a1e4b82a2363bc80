"""Attention strength (paper §5.3): where each head looks on the patch grid, near or far.

- :func:`hop_strength`: strength per Chebyshev hop, hop masses, CLS masses, mean attention
  distance and head entropy of attention arrays ``[..., N, N]`` in memory.
- :func:`strength_over_images` / :func:`model_strength_over_images`: the same streamed over many
  images batch by batch (sharded over a device mesh), with per-image ("local") results and
  :func:`summarize`'s over-images ("global") ones: mean strength, mass, distance, CLS masses and
  entropy per head, and each head's entropy histogram on fixed bins.
- :mod:`.hops` the ring geometry, :mod:`.kernels` the pure jitted kernels and exact definitions,
  :mod:`.reference` a plain double loop used to test them.
"""

from jaxvit_interp.strength.aggregate import (
    StrengthResults,
    model_strength_over_images,
    strength_over_images,
    summarize,
)
from jaxvit_interp.strength.hops import HopRings, hop_matrix, hop_rings, num_hops, ring_counts
from jaxvit_interp.strength.kernels import (
    HopStrength,
    StrengthSummary,
    hop_mass_per_query,
    hop_strength_kernel,
    summarize_kernel,
)
from jaxvit_interp.strength.measure import hop_strength

__all__ = [
    "HopRings",
    "HopStrength",
    "StrengthResults",
    "StrengthSummary",
    "hop_mass_per_query",
    "hop_matrix",
    "hop_rings",
    "hop_strength",
    "hop_strength_kernel",
    "model_strength_over_images",
    "num_hops",
    "ring_counts",
    "strength_over_images",
    "summarize",
    "summarize_kernel",
]
