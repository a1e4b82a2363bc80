"""Seeded subsets of a run's images: which get partial pruning, keep their attention, go into
the head-set, Shapley or explanations stage or make a mean ablation's reference, each drawn from
its own random stream so the subsets are independent; and the seeded pairing of a resample
ablation."""

from __future__ import annotations

import numpy as np

# The random stream of each subset drawn with the run's seed.
PARTIAL_STREAM = 0
ATTENTION_STREAM = 1
HEAD_SETS_STREAM = 2
REFERENCE_STREAM = 3
RESAMPLE_STREAM = 4
SHAPLEY_STREAM = 5
EXPLAIN_STREAM = 6


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


def derangement(num_images: int, seed: int, stream: int = RESAMPLE_STREAM) -> np.ndarray:
    """``[num_images]`` a seeded pairing of the images with each other that pairs none with
    itself (``partner[i] != i``; at least 2 images): a random order of the images, each paired
    with the next in it, the last with the first (one cycle through every image)."""
    if num_images < 2:
        raise ValueError(f"a derangement needs at least 2 images, got {num_images}")
    order = np.random.default_rng([seed, stream]).permutation(num_images)
    partner = np.empty(num_images, np.int64)
    partner[order] = np.roll(order, -1)
    return partner
