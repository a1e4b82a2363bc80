"""The whole pattern stage at ViT-B/16 scale: 1,000 images x 144 heads = 144,000 patterns.

    python benchmarks/pattern_stage.py                       # 144,000 patterns, default training
    python benchmarks/pattern_stage.py --max-epochs 5        # training capped (a slow machine)
    python benchmarks/pattern_stage.py --latents-only        # projection and clustering only

Patch patterns of a 14x14 grid (27x27 offset maps, as ViT-B/16 gives) are synthesised with
planted kinds, then timed stage by stage as ``analyze`` runs them for one pattern kind: training
the autoencoder on ``--samples`` of them (the ``pattern_samples`` setting) over every device JAX
sees, encoding all of them, the UMAP projection (fitted on a sample, the rest placed among their
nearest fitted neighbours), k chosen by silhouette over 2..12 and k-means (started on a sample,
refined on all), and the representatives. The adjusted Rand index of the clusters against the
planted kinds shows that the timed work is the real work.

``--latents-only`` times the steps after encoding (projection, choosing k, k-means) on 144,000
seeded 12-d latents in as many blobs as there are planted kinds, skipping the synthesis of
attention maps, which is slower than the stage itself on a small CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import numpy as np
from sklearn.metrics import adjusted_rand_score

from jaxvit_interp.parallel import all_devices_mesh
from jaxvit_interp.patterns import (
    PLANTED_KINDS,
    AutoencoderSettings,
    choose_k,
    extract_patterns,
    kmeans,
    nearest_members,
    normalize_patterns,
    planted_attention,
    project,
    train_autoencoder,
)
from jaxvit_interp.pipeline.settings import AnalysisSettings

GRID = (14, 14)


def planted_patterns(count: int, seed: int, chunk: int = 256):
    """``(labels [count], normalised patch patterns [count, 27, 27])``, chunk by chunk."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(PLANTED_KINDS), count)
    out = []
    for i, start in enumerate(range(0, count, chunk)):
        attention = planted_attention(seed + i, labels[start : start + chunk], GRID)
        raw = extract_patterns(attention, GRID, True, "patch", check=False)
        out.append(np.asarray(normalize_patterns(raw, GRID[0] * GRID[1]), np.float32))
    return labels, np.concatenate(out)


def embed_only(count: int) -> None:
    from sklearn.datasets import make_blobs

    latents, labels = make_blobs(
        count, n_features=12, centers=len(PLANTED_KINDS), cluster_std=1.0, random_state=0
    )
    latents = latents.astype(np.float32)
    stages = {}
    start = time.perf_counter()
    xy = project(latents, "umap", seed=0)
    stages["project (UMAP fitted on a sample, the rest placed)"] = time.perf_counter() - start
    t = time.perf_counter()
    k, _ = choose_k(latents, (2, 12), seed=0)
    clusters, _ = kmeans(latents, k, seed=0)
    stages["choose k (silhouette, k = 2..12) + k-means"] = time.perf_counter() - t
    total = time.perf_counter() - start
    for name, seconds in stages.items():
        print(f"{name}: {seconds:.1f} s")
    print(
        f"total: {total:.1f} s for {count:,} latents; k = {k}; "
        f"ARI vs blobs = {adjusted_rand_score(labels, clusters):.3f}; "
        f"ARI of k-means on the 2-D map = "
        f"{adjusted_rand_score(labels, kmeans(xy, len(PLANTED_KINDS), seed=0)[0]):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patterns", type=int, default=144_000)
    parser.add_argument("--samples", type=int, default=AnalysisSettings().pattern_samples)
    parser.add_argument("--max-epochs", type=int, default=AutoencoderSettings().max_epochs)
    parser.add_argument("--latents-only", action="store_true")
    args = parser.parse_args()
    if args.latents_only:
        embed_only(args.patterns)
        return
    print(
        f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} CPU cores"
    )
    t = time.perf_counter()
    labels, patterns = planted_patterns(args.patterns, seed=0)
    print(f"synthesised {patterns.shape} in {time.perf_counter() - t:.1f} s (not timed below)")
    settings = dataclasses.replace(AutoencoderSettings(), max_epochs=args.max_epochs)
    pick = np.sort(np.random.default_rng(0).choice(len(patterns), args.samples, replace=False))
    stages = {}
    start = time.perf_counter()
    model = train_autoencoder(patterns[pick], settings, mesh=all_devices_mesh(), progress=False)
    stages[f"train ({len(model.train_loss)} epochs of {args.samples} patterns)"] = (
        time.perf_counter() - start
    )
    t = time.perf_counter()
    latents = model.encode(patterns)
    stages["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    xy = project(latents, "umap", seed=0)
    stages["project (UMAP fitted on a sample, the rest placed)"] = time.perf_counter() - t
    t = time.perf_counter()
    k, _ = choose_k(latents, (2, 12), seed=0)
    clusters, centres = kmeans(latents, k, seed=0)
    stages["choose k (silhouette, k = 2..12) + k-means"] = time.perf_counter() - t
    t = time.perf_counter()
    nearest = nearest_members(latents, clusters, centres)
    model.decode(centres)
    stages["representatives + decoded centres"] = time.perf_counter() - t
    total = time.perf_counter() - start
    for name, seconds in stages.items():
        print(f"{name}: {seconds:.1f} s")
    print(
        f"total: {total:.1f} s for {len(patterns):,} patterns; k = {k}; "
        f"ARI vs planted = {adjusted_rand_score(labels, clusters):.3f}; "
        f"ARI of k-means on the 2-D map = "
        f"{adjusted_rand_score(labels, kmeans(xy, len(PLANTED_KINDS), seed=0)[0]):.3f}; "
        f"{len(nearest)} representatives"
    )


if __name__ == "__main__":
    main()
