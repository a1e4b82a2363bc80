"""One model's site of ViT-B/16 size with every view: how long it takes to open, and what each of
views E (heads together and per class) and F (explanation maps) adds.

One synthetic B/16-shaped bundle (:func:`~jaxvit_interp.site.synthetic.synthetic_bundle`: 12 x 12
heads, 1,000 classes, ``--images`` images, the attention of ``--attention-images``, the head-set
stage of ``--set-images`` and the explanation maps of ``--explain-images``) is written to disk
once; four folder sites are built from it: with every part, without the ``head_sets`` part (no
E1 curves and interactions; E keeps its class map), without the ``explanations`` part (no F),
and without both. Each is opened in a fresh page of headless Chromium (the median of
``--repeats`` after one warm-up page) and two times are read on the page's own clock
(``performance.now()`` from navigation):

- ``open``: the opening state drawn (views A-D with the first image and head; the page answers a
  click), as every site benchmark measures it (:data:`~jaxvit_interp.site.browser.OPENED_JS`);
- ``complete``: every view drawn, E and F included (:data:`~jaxvit_interp.site.browser.DRAWN_JS`).

    python benchmarks/site_views.py                   # 1,000 images
    python benchmarks/site_views.py --images 200      # a quicker look
    PYTHONPATH=OLD_CHECKOUT python benchmarks/site_views.py   # an older package, for comparison

Target: the site opens within 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxvit_interp.bundle import ResultsBundle, load_bundle
from jaxvit_interp.site.browser import DRAWN_JS, NEXT_FRAMES_JS, chromium

try:
    from jaxvit_interp.site.browser import OPENED_JS
except ImportError:  # a package from before E and F were deferred: open and complete are one
    OPENED_JS = DRAWN_JS
from jaxvit_interp.site.document import build_site
from jaxvit_interp.site.synthetic import synthetic_bundle

B16 = dict(num_layers=12, num_heads=12, grid=(14, 14), patch_size=16, channels=3)
TARGET_OPEN_S = 3.0
# Each site: the bundle's parts it leaves out.
VARIANTS = {
    "every view": (),
    "without head_sets (E1)": ("head_sets",),
    "without explanations (F)": ("explanations",),
    "without both": ("head_sets", "explanations"),
}


def open_times(browser, index: Path) -> tuple[float, float]:
    """Seconds from navigation until the opening state is drawn, and until every view is."""
    page = browser.new_page(viewport={"width": 1500, "height": 1250})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.resolve().as_uri(), wait_until="load")
    page.wait_for_function(OPENED_JS, polling=10, timeout=300_000)
    opened = page.evaluate(NEXT_FRAMES_JS) / 1000
    page.wait_for_function(DRAWN_JS, polling=10, timeout=300_000)
    complete = page.evaluate(NEXT_FRAMES_JS) / 1000
    page.close()
    if errors:
        print(f"  page problems in {index}: {errors[:3]}")
    return opened, complete


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--attention-images", type=int, default=16)
    parser.add_argument("--explain-images", type=int, default=16)
    parser.add_argument("--set-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "sites": {}}
    tmp = Path(tempfile.mkdtemp(prefix="site_views."))
    try:
        start = time.perf_counter()
        synthetic_bundle(
            np.random.default_rng(0),
            num_images=args.images,
            num_classes=1000,
            partial_images=min(64, args.images),
            attention_images=min(args.attention_images, args.images),
            explain_images=min(args.explain_images, args.images),
            set_images=min(args.set_images, args.images),
            directory=tmp / "run",
            **B16,
        )
        print(f"bundle of {args.images} images written in {time.perf_counter() - start:.0f} s")
        bundle = load_bundle(tmp / "run")
        sites = {}
        for name, left_out in VARIANTS.items():
            parts = {k: v for k, v in bundle.parts.items() if k not in left_out}
            index = build_site(
                ResultsBundle(bundle.meta, parts), tmp / f"site-{len(sites)}", layout="folder"
            )
            sites[name] = index
        with chromium() as browser:
            for name, index in sites.items():
                open_times(browser, index)  # warm the browser's caches once
                times = [open_times(browser, index) for _ in range(args.repeats)]
                opened = statistics.median(t[0] for t in times)
                complete = statistics.median(t[1] for t in times)
                size = index.stat().st_size
                result["sites"][name] = {"page_bytes": size, "open_s": times}
                print(
                    f"  {name:26s} page {size / 1e6:5.2f} MB  open {opened:5.2f} s  "
                    f"complete {complete:5.2f} s  (medians of {len(times)}; target open <= "
                    f"{TARGET_OPEN_S} s)",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_end"] = os.getloadavg()[0]
    print(f"load average {result['load_end']:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
