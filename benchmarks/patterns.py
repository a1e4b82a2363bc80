"""Pattern autoencoder throughput, and the time to embed and cluster many patterns.

    python benchmarks/patterns.py                  # full: 4,096 training patterns, 50,000 embedded
    python benchmarks/patterns.py --train 1024 --embed 5000   # quicker

1. Training throughput, patterns/s: training patterns x epochs / wall time of
   ``train_autoencoder`` (each epoch includes its held-out evaluation), after a first call has
   compiled the steps, for patch patterns of an 8x8 grid (15x15 maps) and a 14x14 grid (27x27
   maps, ViT-B/16).
2. Embedding: ``embed_patterns`` on ``--embed`` patch patterns of an 8x8 grid, timed by stage:
   encoding, UMAP to 2-D, k-means with k chosen by silhouette over 2..12, representatives and
   decoded centres. Patterns are synthesised with planted kinds, so the adjusted Rand index of
   the clusters against them is printed as a check that the timed work is the real work.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
from sklearn.metrics import adjusted_rand_score

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


def planted_patterns(count: int, grid: tuple[int, int], seed: int, chunk: int = 512):
    """``(labels [count], normalised patch patterns [count, 2Gh-1, 2Gw-1])``, made chunk by chunk
    so the ``[count, N, N]`` attention never exists at once."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(PLANTED_KINDS), count)
    out = []
    for i, start in enumerate(range(0, count, chunk)):
        attention = planted_attention(seed + i, labels[start : start + chunk], grid)
        raw = extract_patterns(attention, grid, True, "patch", check=False)
        out.append(np.asarray(normalize_patterns(raw, grid[0] * grid[1])))
    return labels, np.concatenate(out)


def bench_training(count: int, epochs: int, settings: AutoencoderSettings) -> None:
    print(
        f"## Training throughput ({count} patterns, {epochs} epochs, batch {settings.batch_size})"
    )
    for grid in [(8, 8), (14, 14)]:
        _, patterns = planted_patterns(count, grid, seed=0)
        warm = dataclasses.replace(settings, max_epochs=1)
        train_autoencoder(patterns, warm, progress=False)  # compiles the steps
        timed = dataclasses.replace(settings, max_epochs=epochs, patience=epochs)
        start = time.perf_counter()
        model = train_autoencoder(patterns, timed, progress=False)
        seconds = time.perf_counter() - start
        n_train = count - len(model.heldout_index)
        rate = n_train * len(model.train_loss) / seconds
        print(
            f"grid {grid[0]}x{grid[1]} (maps {patterns.shape[1]}x{patterns.shape[2]}): "
            f"{rate:,.0f} patterns/s ({seconds:.1f} s for {len(model.train_loss)} epochs of "
            f"{n_train}); held-out MSE {model.heldout_loss[model.best_epoch]:.2e}"
        )


def bench_embedding(count: int, settings: AutoencoderSettings) -> None:
    print(f"## Embed and cluster {count:,} patterns (8x8 grid, 15x15 maps)")
    labels, patterns = planted_patterns(count, (8, 8), seed=1)
    model = train_autoencoder(patterns[:4096], settings, progress=False)
    stages = {}
    start = time.perf_counter()
    latents = model.encode(patterns)
    stages["encode"] = time.perf_counter() - start
    t = time.perf_counter()
    xy = project(latents, "umap", seed=0)
    stages["umap"] = time.perf_counter() - t
    t = time.perf_counter()
    k, _ = choose_k(latents, (2, 12), seed=0)
    clusters, centres = kmeans(latents, k, seed=0)
    stages["k-means + silhouette k=2..12"] = time.perf_counter() - t
    t = time.perf_counter()
    nearest = nearest_members(latents, clusters, centres)
    decoded = model.decode(centres)
    stages["representatives"] = time.perf_counter() - t
    total = time.perf_counter() - start
    for name, seconds in stages.items():
        print(f"{name}: {seconds:.1f} s")
    print(
        f"total: {total:.1f} s ({count / total:,.0f} patterns/s); k = {k}; "
        f"ARI vs planted = {adjusted_rand_score(labels, clusters):.3f}; "
        f"xy {xy.shape}, representatives {nearest.shape}, decoded {decoded.shape}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=4096, help="patterns for training throughput")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs")
    parser.add_argument("--embed", type=int, default=50_000, help="patterns to embed and cluster")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    settings = AutoencoderSettings(latent_dim=12, batch_size=128, max_epochs=30)
    bench_training(args.train, args.epochs, settings)
    bench_embedding(args.embed, settings)


if __name__ == "__main__":
    main()
