"""Latents -> a 2-D map of heads, clusters, and a representative pattern per cluster (paper D1).

:func:`embed_patterns` is the entry point: it encodes patterns ``[image, layer, head, h, w]`` (any
leading axes) with a trained autoencoder, projects the latents to 2-D (UMAP from ``umap-learn``, or
t-SNE from scikit-learn), clusters them with k-means (scikit-learn), choosing ``k`` by the
silhouette score over a range unless it is given, and returns a :class:`PatternEmbedding`.

Clustering runs on the latents by default (``cluster_space="latent"``): the autoencoder's own
geometry, which a projection can tear (UMAP may split one group into islands or pull two
together). ``cluster_space="xy"`` clusters what the eye sees in the 2-D map instead.

Many patterns (ViT-B/16 on 1,000 images gives 144,000 of each kind) are handled through seeded
samples, each step's cost then fixed whatever the number of patterns: the projection is fitted
on :data:`PROJECTION_SAMPLE` of them and every other pattern is placed among its nearest fitted
neighbours (:func:`place_by_neighbours`, the start of UMAP's own ``transform``); ``k`` is chosen
on :data:`CLUSTER_SAMPLE` of them, and k-means, fitted there, is refined on all of them. Up to
those sizes, everything runs on all patterns as it is.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

from jaxvit_interp.errors import InputError
from jaxvit_interp.patterns.train import TrainedAutoencoder
from jaxvit_interp.quantities import DENSITY_BINS
from jaxvit_interp.summary import Summarized, listed, number

PROJECTIONS: tuple[str, ...] = ("umap", "tsne")
CLUSTER_SPACES: tuple[str, ...] = ("latent", "xy")
# Most points a projection is fitted on; UMAP's fit costs about a second per thousand points on
# a CPU core, and the places of the others come from their neighbours among these.
PROJECTION_SAMPLE = 5_000
# Most points k is chosen and k-means is started on: enough that clusters of a few percent of
# the patterns hold hundreds of points.
CLUSTER_SAMPLE = 20_000
# Query points per block of the neighbour search: a [block, sample] float64 distance matrix.
_PLACE_BLOCK = 2048


@dataclasses.dataclass(kw_only=True, repr=False)
class PatternEmbedding(Summarized):
    """Where each pattern lands, which cluster it joins, and what each cluster looks like.

    ``...`` below is the leading shape of the patterns given, typically ``[image, layer, head]``.

    Attributes:
      latents: ``[..., latent]`` autoencoder latents.
      xy: ``[..., 2]`` 2-D projection of the latents: each head's position on each image; None
        when no projection was asked for.
      labels: ``[...]`` cluster of each pattern, ``0 .. k-1``.
      k: number of clusters.
      silhouette: silhouette score for each ``k`` tried (empty when ``k`` was fixed).
      centres: ``[k, latent]`` mean latent of each cluster's members.
      centres_xy: ``[k, 2]`` mean position of each cluster's members (None without ``xy``).
      representative_index: ``[k, len(...)]`` index (into ``...``) of each cluster's member
        nearest its centre, in the space clustering used.
      representative: ``[k, h, w]`` that member's (normalised) pattern.
      decoded_centre: ``[k, h, w]`` the autoencoder's decoding of each cluster's latent centre.
      projection: ``"umap"``, ``"tsne"`` or None.
      cluster_space: ``"latent"`` or ``"xy"``.
    """

    latents: np.ndarray
    xy: np.ndarray | None
    labels: np.ndarray
    k: int
    silhouette: dict[int, float]
    centres: np.ndarray
    centres_xy: np.ndarray | None
    representative_index: np.ndarray
    representative: np.ndarray
    decoded_centre: np.ndarray
    projection: str | None
    cluster_space: str

    def _summary(self):
        rows = [
            ("latents", f"{self.latents.shape[-1]} a pattern"),
            (
                "projection",
                f"{self.projection or 'none'}; clustered in the {self.cluster_space} space",
            ),
            ("cluster sizes", listed(f"{n:,}" for n in self.cluster_sizes)),
        ]
        if self.silhouette:
            rows.append(
                ("silhouette", listed(f"k={k} {number(v)}" for k, v in self.silhouette.items()))
            )
        shape = " x ".join(str(n) for n in self.labels.shape)
        return f"{self.labels.size:,} patterns ({shape}) in {self.k} clusters", rows

    @property
    def mean_xy(self) -> np.ndarray | None:
        """``[...[1:], 2]``: each head's position averaged over the first (image) axis."""
        return None if self.xy is None else self.xy.mean(axis=0)

    @property
    def cluster_sizes(self) -> np.ndarray:
        """``[k]`` members per cluster."""
        return np.bincount(self.labels.ravel(), minlength=self.k)

    def majority_labels(self) -> np.ndarray:
        """``[...[1:]]``: each head's most frequent cluster over the first (image) axis."""
        return majority_cluster(self.labels, self.k)


def majority_cluster(labels: np.ndarray, k: int) -> np.ndarray:
    """``[image, ...]`` cluster ids -> ``[...]`` each head's most frequent one (ties: the lowest)."""
    flat = np.asarray(labels).reshape(len(labels), -1)
    counts = np.apply_along_axis(np.bincount, 0, flat, minlength=k)  # [k, heads]
    return counts.argmax(0).reshape(np.shape(labels)[1:])


def sample_index(count: int, size: int, seed: int, stream: int) -> np.ndarray:
    """Sorted indices of a seeded random sample of ``size`` of ``count`` points (all when fewer).

    ``stream`` tells apart samples drawn with the same seed for different purposes.
    """
    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng([seed, stream]).choice(count, size, replace=False))


def place_by_neighbours(
    reference: np.ndarray, positions: np.ndarray, queries: np.ndarray, k: int = 15
) -> np.ndarray:
    """Positions ``[M, 2]`` of ``queries`` ``[M, d]``: the inverse-distance weighted mean of the
    ``positions`` ``[R, 2]`` of their ``k`` nearest ``reference`` points ``[R, d]``.

    This is how UMAP's ``transform`` starts placing new points, without its optimisation
    epochs: a query lands among the fitted points it resembles. Exact nearest neighbours, by
    blocks of queries (BLAS matrix products, every core). The neighbours are found on float32
    distances, several times faster than float64 (seconds of the pattern stage for 139,000 queries), whose
    rounding can only reorder near ties; their weights come from float64 distances.
    """
    ref64 = np.asarray(reference, np.float64)
    ref = ref64.astype(np.float32)
    pos = np.asarray(positions, np.float64)
    k = min(k, len(ref))
    ref_sq = np.einsum("rd,rd->r", ref, ref)
    out = np.empty((len(queries), 2), np.float32)
    for start in range(0, len(queries), _PLACE_BLOCK):
        q = np.asarray(queries[start : start + _PLACE_BLOCK], np.float32)
        d2 = np.einsum("qd,qd->q", q, q)[:, None] - 2 * q @ ref.T + ref_sq[None]
        near = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(ref) else None
        if near is None:
            near = np.broadcast_to(np.arange(len(ref)), d2.shape)
        diff = np.asarray(queries[start : start + len(q)], np.float64)[:, None] - ref64[near]
        dist = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
        # A query on top of a reference point takes its place (weights of 1 / 1e-12).
        weight = 1.0 / np.maximum(dist, 1e-12)
        placed = np.einsum("qk,qkc->qc", weight, pos[near]) / weight.sum(axis=1, keepdims=True)
        out[start : start + len(q)] = placed
    return out


def _fit_projection(x, method, *, seed, n_neighbors, min_dist, perplexity) -> np.ndarray:
    if method == "umap":
        import umap  # imported here: it compiles with numba on first import, seconds of start-up
        from sklearn.neighbors import NearestNeighbors

        n_neighbors = min(n_neighbors, len(x) - 1)
        # The exact neighbours, given to UMAP: for the few thousand points it is fitted on they
        # take a fraction of a second, and UMAP then never compiles its approximate search
        # (pynndescent), most of the time its first fit in a process took on 2 cores.
        # Each point's own index comes first, as UMAP's own search gives it.
        distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(x).kneighbors(x)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            random_state=seed,
            n_jobs=1,  # a fixed random_state runs single-threaded anyway; saying so silences it
            precomputed_knn=(indices, distances.astype(np.float32), None),
        )
        with warnings.catch_warnings():
            # Small inputs make UMAP fall back to exact kNN and its spectral init warn; harmless.
            warnings.simplefilter("ignore", UserWarning)
            return reducer.fit_transform(x).astype(np.float32)
    from sklearn.manifold import TSNE

    tsne = TSNE(
        2,
        perplexity=min(perplexity, (len(x) - 1) / 3),
        init="pca",
        random_state=seed,
        # Exact gradients are quadratic in M but, for a few hundred points, several times
        # faster than Barnes-Hut's tree building.
        method="exact" if len(x) <= 500 else "barnes_hut",
    )
    return tsne.fit_transform(x).astype(np.float32)


def project(
    latents: np.ndarray,
    method: str = "umap",
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    perplexity: float = 30.0,
    fit_size: int = PROJECTION_SAMPLE,
) -> np.ndarray:
    """2-D projection ``[M, 2]`` of ``latents`` ``[M, d]`` by UMAP or t-SNE, seeded by ``seed``.

    Fitted on a seeded sample of ``fit_size`` points when there are more; the others are placed
    by :func:`place_by_neighbours` among the ``n_neighbors`` nearest fitted points.
    """
    x = np.asarray(latents, np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise InputError(f"latents have shape {tuple(x.shape)}; project needs [M >= 3, d]")
    if method not in PROJECTIONS:
        raise InputError(f"unknown projection {method!r}; expected one of {', '.join(PROJECTIONS)}")
    fit = sample_index(len(x), max(fit_size, 3), seed, stream=1)
    options = dict(seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, perplexity=perplexity)
    fitted = _fit_projection(x[fit], method, **options)
    if len(fit) == len(x):
        return fitted
    rest = np.ones(len(x), bool)
    rest[fit] = False
    xy = np.empty((len(x), 2), np.float32)
    xy[fit] = fitted
    xy[rest] = place_by_neighbours(x[fit], fitted, x[rest], n_neighbors)
    return xy


def kmeans(
    x: np.ndarray, k: int, *, seed: int = 0, fit_size: int = CLUSTER_SAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of ``x`` ``[M, d]``: ``(labels [M], centres [k, d])``.

    With more than ``fit_size`` points, the best of four starts is found on a seeded sample of
    that size, then Lloyd's iterations from its centres run on all points.
    """
    # scikit-learn is imported where it is used: it takes seconds to import, and a command
    # that fails or only inspects a checkpoint should not wait for it.
    from sklearn.cluster import KMeans

    x = np.asarray(x, np.float64)
    fit = sample_index(len(x), fit_size, seed, stream=2)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x[fit])
    if len(fit) < len(x):
        km = KMeans(n_clusters=k, init=km.cluster_centers_, n_init=1, random_state=seed).fit(x)
    return km.labels_.astype(np.int32), km.cluster_centers_.astype(np.float32)


def choose_k(
    x: np.ndarray,
    k_range: tuple[int, int] = (2, 12),
    *,
    seed: int = 0,
    sample_size: int = 5000,
    fit_size: int = CLUSTER_SAMPLE,
) -> tuple[int, dict[int, float]]:
    """The ``k`` in ``k_range`` (inclusive) whose k-means clusters of ``x`` have the top silhouette.

    The clusters are found on a seeded sample of at most ``fit_size`` points, and the silhouette
    is computed on at most ``sample_size`` of those (it is quadratic in the number of points).
    Returns ``(k, {k: score})``.
    """
    from sklearn.metrics import silhouette_score

    x = np.asarray(x, np.float64)
    lo, hi = k_range
    hi = min(hi, len(x) - 1)
    if lo < 2 or hi < lo:
        raise InputError(
            f"k_range {k_range} is empty for {len(x)} points; need 2 <= low <= high <= points - 1"
        )
    x = x[sample_index(len(x), fit_size, seed, stream=2)]
    scores = {}
    for k in range(lo, hi + 1):
        labels, _ = kmeans(x, k, seed=seed, fit_size=fit_size)
        if len(np.unique(labels)) < 2:
            scores[k] = -1.0  # identical points: k-means found one cluster only
            continue
        scores[k] = float(
            silhouette_score(x, labels, sample_size=min(sample_size, len(x)), random_state=seed)
        )
    return max(scores, key=scores.get), scores


def nearest_members(x: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``[k]``: for each cluster, the index of its member in ``x`` ``[M, d]`` nearest its centre."""
    out = np.empty(len(centres), np.int64)
    for c, centre in enumerate(centres):
        members = np.flatnonzero(labels == c)
        if members.size == 0:
            raise AssertionError(f"cluster {c} has no members")
        out[c] = members[np.argmin(((x[members] - centre) ** 2).sum(-1))]
    return out


def embed_patterns(
    model: TrainedAutoencoder,
    patterns,
    *,
    projection: str | None = "umap",
    k: int | None = None,
    k_range: tuple[int, int] = (2, 12),
    cluster_space: str = "latent",
    seed: int = 0,
) -> PatternEmbedding:
    """Encode, project and cluster normalised ``patterns`` ``[..., h, w]``.

    Args:
      model: the trained autoencoder (see :func:`~jaxvit_interp.patterns.train.train_autoencoder`).
      patterns: normalised patterns with any leading axes, typically ``[image, layer, head]``.
      projection: ``"umap"``, ``"tsne"``, or None for no 2-D map (clusters only).
      k: number of clusters; None chooses it in ``k_range`` by silhouette (:func:`choose_k`).
      k_range: inclusive range of ``k`` tried when ``k`` is None.
      cluster_space: ``"latent"`` (default) or ``"xy"`` (the 2-D projection).
      seed: seeds the projection and k-means.
    """
    x = np.asarray(patterns, np.float32)
    flat = x.reshape(-1, *x.shape[-2:])
    latents = model.encode(flat).reshape(*x.shape[:-2], -1)
    return embed_latents(
        model,
        latents,
        lambda index: flat[index],
        projection=projection,
        k=k,
        k_range=k_range,
        cluster_space=cluster_space,
        seed=seed,
    )


def embed_latents(
    model: TrainedAutoencoder,
    latents: np.ndarray,
    pattern_at: Callable[[np.ndarray], np.ndarray],
    *,
    projection: str | None = "umap",
    k: int | None = None,
    k_range: tuple[int, int] = (2, 12),
    cluster_space: str = "latent",
    seed: int = 0,
) -> PatternEmbedding:
    """:func:`embed_patterns` from latents ``[..., latent]`` already encoded.

    ``pattern_at(index)`` returns the patterns ``[n, h, w]`` at flat indices ``index`` ``[n]``
    (into the leading axes), so that only the representatives are read, not every pattern.
    """
    if cluster_space not in CLUSTER_SPACES:
        raise InputError(
            f"unknown cluster_space {cluster_space!r}; expected one of {', '.join(CLUSTER_SPACES)}"
        )
    if cluster_space == "xy" and projection is None:
        raise InputError(
            "cluster_space='xy' clusters the 2-D projection, so projection cannot be None"
        )
    z = np.asarray(latents, np.float32)
    lead = z.shape[:-1]
    flat = z.reshape(-1, z.shape[-1])
    xy = None if projection is None else project(flat, projection, seed=seed)
    space = flat if cluster_space == "latent" else xy
    if k is None:
        k, scores = choose_k(space, k_range, seed=seed)
    else:
        if not 1 <= k <= len(space):
            raise InputError(f"k={k} clusters is impossible for {len(space)} patterns")
        scores = {}
    labels, _ = kmeans(space, k, seed=seed)
    # k-means can leave a cluster empty only with duplicate points; relabel to 0..k'-1 then.
    present, labels = np.unique(labels, return_inverse=True)
    k = len(present)
    centres = np.stack([flat[labels == c].mean(0) for c in range(k)])
    centres_xy = None if xy is None else np.stack([xy[labels == c].mean(0) for c in range(k)])
    space_centres = centres if cluster_space == "latent" else centres_xy
    nearest = nearest_members(space, labels, space_centres)
    return PatternEmbedding(
        latents=z,
        xy=None if xy is None else xy.reshape(*lead, 2),
        labels=labels.reshape(lead).astype(np.int32),
        k=k,
        silhouette=scores,
        centres=centres,
        centres_xy=centres_xy,
        representative_index=np.stack(np.unravel_index(nearest, lead), axis=-1),
        representative=np.asarray(pattern_at(nearest), np.float32),
        decoded_centre=model.decode(centres),
        projection=projection,
        cluster_space=cluster_space,
    )


def density_map(points: np.ndarray, bins: int = DENSITY_BINS, pad: float = 0.06):
    """Where the points of a 2-D embedding crowd: ``(image [bins, bins], extent [4])``.

    ``extent`` is ``(x0, x1, y0, y1)``, the points' range widened by ``pad`` of its span on each
    side. Row ``r`` of the image counts the points with ``y`` in the ``r``-th bin from the bottom;
    counts are ``log1p``-compressed and scaled to a maximum of 1, so sparse regions stay visible.
    Non-finite points are left out.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    points = points[np.isfinite(points).all(axis=1)]
    if not len(points):
        return np.zeros((bins, bins), np.float32), np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    counts, _, _ = np.histogram2d(
        points[:, 1], points[:, 0], bins=bins, range=[[lo[1], hi[1]], [lo[0], hi[0]]]
    )
    counts = np.log1p(counts)
    image = (counts / max(counts.max(), 1e-12)).astype(np.float32)
    return image, np.array([lo[0], hi[0], lo[1], hi[1]], np.float32)


def embedding_summary(
    positions: np.ndarray, clusters: np.ndarray, num_clusters: int
) -> dict[str, np.ndarray]:
    """Each head's view, over the images, of its patterns' places in the embedding.

    Args:
      positions: ``[image, layer, head, 2]`` 2-D position of each pattern.
      clusters: ``[image, layer, head]`` its cluster.
      num_clusters: ``k``.

    Returns ``positions_mean`` ``[layer, head, 2]`` (mean 2-D position), ``head_cluster``
    ``[layer, head]`` (the most frequent cluster, ties to the lowest), ``cluster_sizes`` ``[k]``,
    and the ``density`` image with its ``extent`` (:func:`density_map` of every position).
    """
    density, extent = density_map(positions)
    return {
        "positions_mean": np.asarray(positions, np.float64).mean(axis=0).astype(np.float32),
        "head_cluster": majority_cluster(clusters, num_clusters).astype(np.int32),
        "cluster_sizes": np.bincount(np.ravel(clusters), minlength=num_clusters).astype(np.int64),
        "density": density,
        "extent": extent,
    }
