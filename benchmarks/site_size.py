"""Size and open time of the published site, and how its size grows with images.

The reference case is the digits site: 300 images, a ViT with 6 layers x 4 heads on an 8x8 patch
grid with CLS (N = 65 tokens, 8 hops), 10 classes, attention and partial pruning kept for 32
images. Targets (issue: the published site): under 15 MB, and all views drawn in under 3 s in
headless Chromium. Bundles are synthetic (random arrays of the schema's shapes), which has no
effect on size or speed: the page stores and draws the same arrays either way.

Open time is ``performance.now()`` in the page once its opening state is on screen: BokehJS
reports the document idle (every view built and drawn), the page's code has computed the state
(which it does when the document is ready) and two animation frames have passed for the redraw;
median over fresh pages.

    python benchmarks/site_size.py            # reference case + growth tables
    python benchmarks/site_size.py --quick    # reference case only
    python benchmarks/site_size.py --quick --against ../main   # and another checkout's, in turn
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxvit_interp.site.browser import BrowserUnavailable, chromium
from jaxvit_interp.site.document import build_site
from jaxvit_interp.site.synthetic import synthetic_bundle

DIGITS = dict(num_classes=10, num_layers=6, num_heads=4, grid=(8, 8))
SIZE_TARGET_MB = 15.0
OPEN_TARGET_S = 3.0
REFERENCE = dict(num_images=300, attention=32, partial=32)


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


def open_times(browser, path: Path, repeats: int, cpu: list | None = None) -> list[float]:
    """Seconds from navigation start to the opening state drawn, one fresh page per repeat.

    ``cpu`` collects the CPU time of the page's main thread until then (Chrome's ThreadTime),
    which other processes on the machine change far less than the wall time.
    """
    # Imported here: --build-only runs this script with another checkout's package, which may
    # not have these.
    from jaxvit_interp.site.browser import DRAWN_JS, NEXT_FRAMES_JS

    times = []
    for _ in range(repeats):
        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable", {"timeDomain": "threadTicks"})
        page.goto(path.resolve().as_uri(), wait_until="load")
        page.wait_for_function(DRAWN_JS, polling=10, timeout=120_000)
        times.append(page.evaluate(NEXT_FRAMES_JS) / 1000)
        if cpu is not None:
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            cpu.append(metrics["ThreadTime"])
        page.close()
    return times


def open_in_turn(browser, paths: dict[str, Path], repeats: int) -> dict[str, tuple[list, list]]:
    """Open times and main-thread CPU of each site, one page of each in turn per repeat, so that
    other processes weigh on them alike."""
    results = {name: ([], []) for name in paths}
    for _ in range(repeats):
        for name, path in paths.items():
            times, cpu = results[name]
            times += open_times(browser, path, 1, cpu)
    return results


def build_against(checkout: Path, out: Path) -> Path:
    """The reference site as the package in ``checkout`` builds it."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    command = [sys.executable, str(Path(__file__).resolve()), "--build-only", str(out)]
    subprocess.run(command, env=env, check=True)
    return out / "index.html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reference case only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        help="also open the reference site built by the package in CHECKOUT (another checkout "
        "of this repository), a page of each in turn",
    )
    parser.add_argument("--build-only", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        build(**REFERENCE, out=args.build_only)
        return
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start")
    if load > (os.cpu_count() or 1):
        print("  (other processes are using the CPUs: wall times are inflated)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, seconds = build(**REFERENCE, out=tmp / "ref")
        size = path.stat().st_size / 1e6
        print("\nreference: 300 images, L=6 H=4, 8x8 grid, attention + partial for 32 images")
        print(f"  file size   {size:6.2f} MB   (target < {SIZE_TARGET_MB} MB)")
        print(f"  build time  {seconds:6.2f} s")
        sites = {"this checkout": path}
        if args.against:
            sites[str(args.against)] = build_against(args.against, tmp / "against")
        try:
            with chromium() as browser:
                for site in sites.values():
                    open_times(browser, site, 1)  # warm the browser's caches once
                results = open_in_turn(browser, sites, args.repeats)
                times, cpu = results.pop("this checkout")
                print(
                    f"  open time   {statistics.median(times):6.2f} s median of {len(times)} "
                    f"(min {min(times):.2f}, max {max(times):.2f}; target < {OPEN_TARGET_S} s)"
                )
                print(f"  main thread {statistics.median(cpu):6.2f} s CPU (median)")
                for name, (times, cpu) in results.items():
                    print(
                        f"  {name}, opened in turn: {sites[name].stat().st_size / 1e6:.2f} MB, "
                        f"open time {statistics.median(times):.2f} s median (min "
                        f"{min(times):.2f}, max {max(times):.2f}), main thread "
                        f"{statistics.median(cpu):.2f} s CPU"
                    )
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
