"""The whole pattern stage at ViT-B/16 scale: 1,000 images x 144 heads = 144,000 patterns.

    python benchmarks/pattern_stage.py                       # 144,000 patterns, default training
    python benchmarks/pattern_stage.py --max-epochs 5        # training capped (a slow machine)
    python benchmarks/pattern_stage.py --latents-only        # projection and clustering only
    python benchmarks/pattern_stage.py --kinds patch cls --cache /tmp/planted   # both kinds

Patch patterns of a 14x14 grid (27x27 offset maps, as ViT-B/16 gives) are synthesised with
planted kinds, then timed stage by stage as ``analyze`` runs them for one pattern kind: training
the autoencoder on ``--samples`` of them (the ``pattern_samples`` setting) over every device JAX
sees, encoding all of them, the UMAP projection (fitted on a sample, the rest placed among their
nearest fitted neighbours), k chosen by silhouette over 2..12 and k-means (started on a sample,
refined on all), and the representatives. The adjusted Rand index of the clusters against the
planted kinds shows that the timed work is the real work.

Each step's time is printed as soon as it ends. ``--kinds patch cls`` runs the stage for both
pattern kinds of a ViT-B/16 run (27x27 patch offset maps and 14x14 CLS maps), as ``analyze``
does, and reports their sum. Synthesising the maps takes longer than the stage itself on a small
CPU; ``--cache DIR`` keeps them there for the next run.

``--latents-only`` times the steps after encoding (projection, choosing k, k-means) on 144,000
seeded 12-d latents in as many blobs as there are planted kinds, skipping the synthesis of
attention maps, which is slower than the stage itself on a small CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

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


# The planted kinds' logit boost, raised by ln(197 / 65) over planted_attention's default (made
# for an 8x8 grid and 65 tokens), so that a planted key holds the same share of its row among
# ViT-B/16's 197 tokens; at the default strength a third of the weakest single-key maps are lost
# in the noise (k-means on 12 principal components of the raw maps: ARI 0.64 against the kinds).
STRENGTH = tuple(s + float(np.log(197 / 65)) for s in (4.0, 7.0))


def planted_patterns(count: int, seed: int, chunk: int = 256):
    """``(labels [count], {kind: normalised patterns [count, h, w]})`` for both kinds."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(PLANTED_KINDS), count)
    out = {"patch": [], "cls": []}
    for i, start in enumerate(range(0, count, chunk)):
        attention = planted_attention(
            seed + i, labels[start : start + chunk], GRID, strength=STRENGTH
        )
        for kind, pieces in out.items():
            raw = extract_patterns(attention, GRID, True, kind, check=False)
            pieces.append(np.asarray(normalize_patterns(raw, GRID[0] * GRID[1]), np.float32))
    return labels, {kind: np.concatenate(pieces) for kind, pieces in out.items()}


def cached_patterns(count: int, cache: Path | None):
    """:func:`planted_patterns`, read from ``cache`` when it holds them (written there if not)."""
    path = None if cache is None else cache / f"planted-{count}.npz"
    if path is not None and path.exists():
        with np.load(path) as held:
            return held["labels"], {kind: held[kind] for kind in ("patch", "cls")}
    t = time.perf_counter()
    labels, patterns = planted_patterns(count, seed=0)
    print(f"synthesised {count:,} maps in {time.perf_counter() - t:.1f} s (not timed)", flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, labels=labels, **patterns)
    return labels, patterns


class Steps:
    """Times the steps of one kind's stage, printing each as soon as it ends."""

    def __init__(self, kind: str):
        self.kind, self.seconds, self.at = kind, {}, time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.at
        print(f"  {self.kind}: {name}: {self.seconds[name]:.1f} s", flush=True)
        self.at = time.perf_counter()

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def stage(kind: str, labels, patterns, args, settings) -> float:
    """The pattern stage of one kind, as ``analyze`` runs it; returns its seconds."""
    steps = Steps(kind)
    pick = np.sort(np.random.default_rng(0).choice(len(patterns), args.samples, replace=False))
    model = train_autoencoder(patterns[pick], settings, mesh=all_devices_mesh(), progress=False)
    steps.done(
        f"train ({len(model.train_loss)} epochs of {args.samples} patterns, best "
        f"{model.best_epoch}, held-out MSE {model.heldout_loss[model.best_epoch]:.3g})"
    )
    latents = model.encode(patterns)
    steps.done("encode")
    xy = project(latents, "umap", seed=0)
    steps.done("project (UMAP fitted on a sample, the rest placed)")
    k, _ = choose_k(latents, (2, 12), seed=0)
    clusters, centres = kmeans(latents, k, seed=0)
    steps.done("choose k (silhouette, k = 2..12) + k-means")
    nearest = nearest_members(latents, clusters, centres)
    model.decode(centres)
    steps.done("representatives + decoded centres")
    # The planted kinds are kinds of patch pattern; the CLS row carries noise only.
    quality = (
        f"ARI vs planted = {adjusted_rand_score(labels, clusters):.3f}; ARI of k-means on the "
        f"2-D map = {adjusted_rand_score(labels, kmeans(xy, len(PLANTED_KINDS), seed=0)[0]):.3f}"
        if kind == "patch"
        else "(no planted structure in CLS maps)"
    )
    print(
        f"  {kind}: total {steps.total:.1f} s for {len(patterns):,} patterns; k = {k}; "
        f"{quality}; {len(nearest)} representatives",
        flush=True,
    )
    return steps.total


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
    parser.add_argument("--kinds", nargs="+", default=["patch"], choices=["patch", "cls"])
    parser.add_argument("--cache", type=Path, help="keep the synthesised maps in this folder")
    parser.add_argument("--max-epochs", type=int, default=AutoencoderSettings().max_epochs)
    parser.add_argument("--max-steps", type=int, default=AutoencoderSettings().max_steps)
    parser.add_argument("--latents-only", action="store_true")
    args = parser.parse_args()
    if args.latents_only:
        embed_only(args.patterns)
        return
    print(
        f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    settings = dataclasses.replace(
        AutoencoderSettings(), max_epochs=args.max_epochs, max_steps=args.max_steps
    )
    labels, patterns = cached_patterns(args.patterns, args.cache)
    total = 0.0
    for kind in args.kinds:
        total += stage(kind, labels, patterns[kind], args, settings)
    print(
        f"whole pattern stage ({' + '.join(args.kinds)}): {total:.1f} s; load average "
        f"{os.getloadavg()[0]:.1f} at the end"
    )


if __name__ == "__main__":
    main()
