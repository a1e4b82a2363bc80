"""Seeded subsets of a run's images: which get partial pruning, keep their attention, or go into
the head-set stage, each drawn from its own random stream so the subsets are independent."""

from __future__ import annotations

import numpy as np

# The random stream of each subset drawn with the run's seed.
PARTIAL_STREAM = 0
ATTENTION_STREAM = 1
HEAD_SETS_STREAM = 2


def subset(num_images: int, size: int, seed: int, stream: int = 0) -> np.ndarray:
    """Sorted image indices of a seeded random subset of ``size`` (all images when fewer).

    ``stream`` tells apart subsets drawn with the same seed, so that they are independent.
    """
    if size >= num_images:
        return np.arange(num_images)
    rng = np.random.default_rng([seed, stream] if stream else seed)
    return np.sort(rng.choice(num_images, size, replace=False))


def local_indices(indices: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The members of ``indices`` inside ``[start, stop)``, counted from ``start``."""
    return indices[(indices >= start) & (indices < stop)] - start
