"""The image overview (paper view A): images placed in 2-D by what pruning each head does to them.

Each image is the vector of its per-head importance (``[layer * head]``, by default ``prob_drop``),
so images that depend on the same heads land near each other.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["image_layout", "layout_metric"]

# Below this many images UMAP's neighbourhood graph is too small to mean much: PCA instead.
_MIN_UMAP_IMAGES = 16


def layout_metric(num_classes: int) -> str:
    """The metric whose per-head vectors place the images: the probability drop, or for a
    backbone without a classifier (``num_classes == 0``) the representation change."""
    return "prob_drop" if num_classes else "repr"


def image_layout(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D positions ``[image, 2]`` of images from their importance vectors ``[image, ...]``.

    UMAP (seeded) for 16 images or more, PCA for fewer, the vectors' first two coordinates for
    fewer than three images.
    """
    x = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
    if len(x) < _MIN_UMAP_IMAGES:
        from sklearn.decomposition import PCA

        if len(x) < 3:
            return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1])))).astype(np.float32)
        return PCA(2, random_state=seed).fit_transform(x).astype(np.float32)
    import umap

    reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1))
    with warnings.catch_warnings():
        # A fixed random_state makes UMAP single-threaded; that is the point, not news.
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return reducer.fit_transform(x).astype(np.float32)
