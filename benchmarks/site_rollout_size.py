"""Bytes the attention rollout (view D's rollout map and per-layer contributions) adds to a site.

Each site is built twice from one synthetic bundle, with and without its ``rollout`` part, and
the files compared: the digits site (300 images, 6 x 4 heads, 8x8 grid + CLS, attention and
partial pruning for 32, one file) and a ViT-B/16-shaped site of 1,000 images (12 x 12 heads,
14x14 grid + CLS, 1,000 classes) in both layouts. The rollout's per-image arrays (the map,
``gh*gw`` float32, and ``L`` contributions) live in each image's record, so in a folder site
``index.html`` only gains the views and the means over images; a single-file site carries every
record inline. Attention and partial pruning are left out of the B/16 site: they do not change
what the rollout adds.

    python benchmarks/site_rollout_size.py
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np

from jaxvit_interp.site.document import build_site
from jaxvit_interp.site.synthetic import synthetic_bundle

DIGITS = dict(num_images=300, num_classes=10, num_layers=6, num_heads=4, grid=(8, 8),
              attention_images=32, partial_images=32)  # fmt: skip
B16 = dict(num_images=1000, num_classes=1000, num_layers=12, num_heads=12, grid=(14, 14),
           patch_size=16, channels=3, attention_images=0, partial_images=0)  # fmt: skip


def site_bytes(bundle, out: Path, layout: str) -> tuple[int, int]:
    """Bytes of ``index.html`` and of the records folder (0 for one file)."""
    index = build_site(bundle, out, layout=layout)
    records = sum(p.stat().st_size for p in out.glob("data-*/images/*.js"))
    return index.stat().st_size, records


def compare(name: str, shape: dict, layouts: tuple[str, ...], work: Path) -> None:
    bundle = synthetic_bundle(np.random.default_rng(0), **shape)
    without = copy.copy(bundle)
    without.parts = {k: v for k, v in bundle.parts.items() if k != "rollout"}
    for layout in layouts:
        a = site_bytes(bundle, work / f"{name}-{layout}-with", layout)
        b = site_bytes(without, work / f"{name}-{layout}-without", layout)
        print(
            f"{name} ({layout}): index.html {b[0]:,} -> {a[0]:,} bytes (+{a[0] - b[0]:,}); "
            f"records {b[1]:,} -> {a[1]:,} bytes (+{a[1] - b[1]:,})"
        )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        compare("digits", DIGITS, ("single",), work)
        compare("B/16, 1000 images", B16, ("folder", "single"), work)


if __name__ == "__main__":
    main()
