"""Size and open time of the published site, and how its size grows with images.

The reference case is the digits site: 300 images, a ViT with 6 layers x 4 heads on an 8x8 patch
grid with CLS (N = 65 tokens, 8 hops), 10 classes, attention and partial pruning kept for 32
images. Targets (issue: the published site): under 15 MB, and all views drawn in under 3 s in
headless Chromium. Bundles are synthetic (random arrays of the schema's shapes), which has no
effect on size or speed: the page stores and draws the same arrays either way.

Open time is ``performance.now()`` in the page when BokehJS reports the document idle (every
view built and drawn, the first state computed by the page's code), median over fresh pages.

    python benchmarks/site_size.py            # reference case + growth tables
    python benchmarks/site_size.py --quick    # reference case only
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxvit_interp.site.browser import DRAWN_JS, BrowserUnavailable, chromium
from jaxvit_interp.site.document import build_site
from jaxvit_interp.site.synthetic import synthetic_bundle

DIGITS = dict(num_classes=10, num_layers=6, num_heads=4, grid=(8, 8))
SIZE_TARGET_MB = 15.0
OPEN_TARGET_S = 3.0


def build(num_images: int, attention: int, partial: int, out: Path, **shape) -> tuple[Path, float]:
    bundle = synthetic_bundle(
        np.random.default_rng(0),
        num_images=num_images,
        attention_images=attention,
        partial_images=partial,
        **{**DIGITS, **shape},
    )
    start = time.perf_counter()
    path = build_site(bundle, out)
    return path, time.perf_counter() - start


def open_times(browser, path: Path, repeats: int, busy: list | None = None) -> list[float]:
    """Seconds from navigation start to all views drawn, one fresh page per repeat.

    ``busy`` collects the page's main-thread busy time (Chrome's TaskDuration), which depends
    less on other processes than wall time does.
    """
    times = []
    for _ in range(repeats):
        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        page.goto(path.resolve().as_uri(), wait_until="load")
        page.wait_for_function(DRAWN_JS, polling=10, timeout=120_000)
        times.append(page.evaluate("() => performance.now()") / 1000)
        if busy is not None:
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            busy.append(metrics["TaskDuration"])
        page.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reference case only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start")
    if load > (os.cpu_count() or 1):
        print("  (other processes are using the CPUs: wall times are inflated)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, seconds = build(300, 32, 32, tmp / "ref")
        size = path.stat().st_size / 1e6
        print("\nreference: 300 images, L=6 H=4, 8x8 grid, attention + partial for 32 images")
        print(f"  file size   {size:6.2f} MB   (target < {SIZE_TARGET_MB} MB)")
        print(f"  build time  {seconds:6.2f} s")
        try:
            with chromium() as browser:
                open_times(browser, path, 1)  # warm the browser's caches once
                busy: list[float] = []
                times = open_times(browser, path, args.repeats, busy)
                print(
                    f"  open time   {statistics.median(times):6.2f} s median of {len(times)} "
                    f"(min {min(times):.2f}, max {max(times):.2f}; target < {OPEN_TARGET_S} s)"
                )
                print(f"  main thread {statistics.median(busy):6.2f} s busy (median)")
                if not args.quick:
                    print("\nopen time vs images (attention for 32):")
                    for n in (100, 1000):
                        p, _ = build(n, 32, 32, tmp / f"open{n}")
                        t = open_times(browser, p, 3)
                        print(f"  {n:5d} images: {statistics.median(t):5.2f} s")
        except BrowserUnavailable as err:
            print(f"  open time   not measured: {err}")
        if args.quick:
            return
        print("\nsize vs images (attention and partial pruning for 32):")
        base = None
        for n in (32, 100, 300, 1000, 3000):
            p, _ = build(n, 32, 32, tmp / f"n{n}")
            mb = p.stat().st_size / 1e6
            base = base if base is not None else (n, mb)
            print(f"  {n:5d} images: {mb:6.2f} MB")
        print("\nsize vs images with stored attention (300 images, partial for 32):")
        sizes = {}
        for a in (0, 8, 32, 64, 128):
            p, _ = build(300, a, 32, tmp / f"a{a}")
            sizes[a] = p.stat().st_size / 1e6
            print(f"  {a:4d} attention images: {sizes[a]:6.2f} MB")
        per_attention = (sizes[128] - sizes[0]) / 128
        print(
            f"  => {per_attention * 1e3:.1f} kB per attention image "
            f"(L*H*N*N*2 bytes = {6 * 4 * 65 * 65 * 2 / 1e3:.1f} kB raw, base64 x 4/3)"
        )


if __name__ == "__main__":
    main()
