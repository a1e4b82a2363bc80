"""Learned attention patterns of the shipped digits ViT: reconstruction error, clusters, pictures.

    python benchmarks/patterns_digits.py [--split test] [--workdir DIR] [--k K]

For each pattern kind (CLS and patch) of every head on every image of the split: the autoencoder
is trained (or reused from ``--workdir`` when patterns and settings are unchanged), its held-out
reconstruction error is printed next to that of predicting the mean training pattern, the latents
are projected with UMAP and clustered with k-means (k by silhouette unless ``--k``), and each
head's most frequent cluster is printed as a layer x head table. The picture
``benchmarks/results/patterns_digits.png`` shows, per kind, each cluster's representative pattern
(a real member nearest the centre, top) and its decoded centre (bottom), and the UMAP map coloured
by cluster.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from jaxvit_interp.data.digits import load_digits, load_digits_model
from jaxvit_interp.execution import Execution
from jaxvit_interp.patterns import (
    AutoencoderSettings,
    collect_patterns,
    embed_patterns,
    normalize_patterns,
    train_autoencoder,
)

RESULTS = pathlib.Path(__file__).parent / "results"
# Viridis at five stops, interpolated: dark blue (0) to yellow (1).
VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64
)
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (0, 0, 128),
    (128, 128, 0),
]


def colorize(pattern: np.ndarray, scale: int) -> Image.Image:
    """A ``[h, w]`` map in [0, 1] as a viridis RGB image, each cell ``scale`` pixels square."""
    t = np.clip(pattern, 0, 1) * (len(VIRIDIS) - 1)
    lo = np.floor(t).astype(int).clip(0, len(VIRIDIS) - 2)
    frac = (t - lo)[..., None]
    rgb = VIRIDIS[lo] * (1 - frac) + VIRIDIS[lo + 1] * frac
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    return img.resize((pattern.shape[1] * scale, pattern.shape[0] * scale), Image.NEAREST)


def panel(kind: str, emb, cell: int = 96) -> Image.Image:
    """One kind's row of the picture: representatives over decoded centres, then the UMAP map."""
    k = emb.k
    h, w = emb.representative.shape[1:]
    scale = max(1, cell // max(h, w))
    tile_w, tile_h = w * scale, h * scale
    gap, top = 6, 18
    width = k * (tile_w + gap) + gap + 2 * tile_h + 3 * gap
    height = top + 2 * (tile_h + gap) + 14
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text(
        (gap, 2), f"{kind} patterns: representative (top), decoded centre (bottom)", fill="black"
    )
    sizes = emb.cluster_sizes
    for c in range(k):
        x = gap + c * (tile_w + gap)
        img.paste(colorize(emb.representative[c], scale), (x, top))
        img.paste(colorize(emb.decoded_centre[c], scale), (x, top + tile_h + gap))
        draw.rectangle([x, top - 4, x + 10, top - 1], fill=PALETTE[c % len(PALETTE)])
        draw.text((x, top + 2 * (tile_h + gap)), f"{c}: {sizes[c]}", fill="black")
    # UMAP map: one dot per (image, layer, head), coloured by cluster.
    side = 2 * tile_h + gap
    x0 = gap + k * (tile_w + gap) + gap
    xy = emb.xy.reshape(-1, 2)
    lo, hi = xy.min(0), xy.max(0)
    pix = ((xy - lo) / np.maximum(hi - lo, 1e-9) * (side - 3)).astype(int)
    for (px, py), c in zip(pix, emb.labels.ravel(), strict=True):
        draw.point((x0 + 1 + px, top + 1 + py), fill=PALETTE[c % len(PALETTE)])
    draw.rectangle([x0, top, x0 + side, top + side], outline="gray")
    return img


def majority_table(emb) -> str:
    """Each head's most frequent cluster over images, as a layer x head table."""
    major = emb.majority_labels()
    share = np.zeros(major.shape)
    for idx in np.ndindex(*major.shape):
        share[idx] = (emb.labels[(slice(None), *idx)] == major[idx]).mean()
    lines = ["layer | " + " ".join(f"head{h:<6d}" for h in range(major.shape[1]))]
    for layer in range(major.shape[0]):
        cells = " ".join(
            f"c{major[layer, h]} {share[layer, h]:4.0%} " for h in range(major.shape[1])
        )
        lines.append(f"{layer:5d} | {cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=pathlib.Path(tempfile.gettempdir()) / "jaxvit_interp_patterns_digits",
    )
    parser.add_argument("--k", type=int, default=None, help="fix the number of clusters")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "patterns_digits.png")
    args = parser.parse_args()

    config, params = load_digits_model()
    images, _ = load_digits(split=args.split)
    start = time.perf_counter()
    raw = collect_patterns(
        config, params, images, execution=Execution(batch_size=128, progress=False)
    )
    seconds = time.perf_counter() - start
    print(
        f"{len(images)} {args.split} images, {config.num_layers} layers x "
        f"{config.num_heads} heads, grid {config.grid}: patterns collected in {seconds:.1f} s"
    )
    settings = AutoencoderSettings(latent_dim=12, batch_size=128, max_epochs=200, patience=10)
    panels = []
    for kind, patterns in raw.items():
        x = np.asarray(normalize_patterns(patterns, config.num_patches))
        start = time.perf_counter()
        model = train_autoencoder(x, settings, workdir=args.workdir / kind, progress=False)
        trained_s = time.perf_counter() - start
        flat = x.reshape(-1, *x.shape[-2:])
        held = np.zeros(len(flat), bool)
        held[model.heldout_index] = True
        baseline = float(((flat[held] - flat[~held].mean(0)) ** 2).mean())
        error = float(model.reconstruction_error(flat[held]).mean())
        print(f"\n## {kind} patterns {tuple(x.shape)} (maps {x.shape[-2]}x{x.shape[-1]})")
        print(
            f"autoencoder: {'reused' if model.reused else 'trained'} in {trained_s:.1f} s, "
            f"{len(model.train_loss)} epochs, best {model.best_epoch}; held-out MSE {error:.2e} "
            f"vs {baseline:.2e} for the mean pattern ({error / baseline:.1%}), "
            f"{held.sum()} held out of {len(flat)}"
        )
        start = time.perf_counter()
        emb = embed_patterns(model, x, projection="umap", k=args.k)
        print(
            f"embedding: UMAP + k-means in {time.perf_counter() - start:.1f} s; k = {emb.k}; "
            f"cluster sizes {emb.cluster_sizes.tolist()}"
        )
        if emb.silhouette:
            print("silhouette: " + ", ".join(f"{k}: {s:.3f}" for k, s in emb.silhouette.items()))
        print("each head's most frequent cluster (share of images):")
        print(majority_table(emb))
        panels.append(panel(kind, emb))
    width = max(p.width for p in panels)
    picture = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        picture.paste(p, (0, y))
        y += p.height
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(f"\npicture: {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
