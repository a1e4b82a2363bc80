"""A comparison site of five ViT-B/16-sized runs of 1,000 images each: its build time, the size of
its comparison page and of each model's own site, and how fast the comparison page opens.

The runs are synthetic bundles (:func:`~jaxvit_interp.site.synthetic.synthetic_bundle`) written to
disk, shaped like the families a comparison would hold: 12 layers x 12 heads each, 1,000 classes,
the same 1,000 image ids (so every image is matched across the runs):

- ``vit-b16``: patch 16 at 224 px, CLS (supervised ViT);
- ``deit-b16``: patch 16, CLS and a distillation token;
- ``dinov2-b14-reg``: patch 14 at 224 px (16 x 16 patches), CLS and 4 registers;
- ``siglip-b16``: patch 16, no CLS (a pooled readout);
- ``clip-b16``: patch 16, CLS.

Each run stores the attention of ``--attention-images`` images (the source of the shared pattern
space and of each model site's D views), the explanation maps of ``--explain-images`` and the
head-set stage of ``--set-images``. The site is written with ``layout="folder"`` (each model's
records beside its page), through :func:`~jaxvit_interp.site.comparison.build_comparison_site`
with its defaults (the shared pattern space included).

Open time is ``performance.now()`` two animation frames after BokehJS reports the document idle
with the comparison layout present, in a fresh page of headless Chromium (the median of
``--repeats`` after one warm-up page), for each of the comparison's pages: ``index.html`` (the
summaries), ``images.html`` (per image, side by side) and ``patterns.html`` (the shared pattern
space). One model's own site is opened the same way for reference.

    python benchmarks/compare_site_large.py                      # five runs of 1,000 images
    python benchmarks/compare_site_large.py --images 100 --runs 2   # a quicker look
    python benchmarks/compare_site_large.py --keep /tmp/cmp5     # keep runs and site
    python benchmarks/compare_site_large.py --site /tmp/cmp5/site/index.html   # only time it

Targets (issue 27): the comparison's pages open within 3 s, and each model's site stays within
the single-model site's limits (a folder site's page at most 10 MB, 3 s to open).
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

from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.site.browser import DRAWN_JS, NEXT_FRAMES_JS, chromium
from jaxvit_interp.site.comparison import (
    IMAGES_FILE,
    MODELS_DIR,
    PATTERNS_FILE,
    build_comparison_site,
)
from jaxvit_interp.site.synthetic import synthetic_bundle

B16 = dict(num_layers=12, num_heads=12, grid=(14, 14), patch_size=16, channels=3)
RUNS = {
    "vit-b16": B16,
    "deit-b16": dict(B16, distillation_token=True),
    "dinov2-b14-reg": dict(B16, grid=(16, 16), patch_size=14, num_registers=4),
    "siglip-b16": dict(B16, has_cls=False),
    "clip-b16": B16,
}
MB = 1e6
TARGETS = {"open": 3.0, "model_index": 10 * MB}
# The comparison page is drawn once BokehJS is idle with its root layout in the document.
COMPARISON_DRAWN_JS = """() => {
  const doc = window.Bokeh && Bokeh.documents[0];
  return !!(doc && doc.is_idle && doc.get_model_by_name("comparison"));
}"""


def write_runs(folder: Path, images: int, count: int, args) -> list[Path]:
    """The synthetic runs, written under ``folder`` (one sub-folder each)."""
    ids = [f"img_{i:05d}.jpg" for i in range(images)]
    paths = []
    for seed, (name, shape) in enumerate(list(RUNS.items())[:count]):
        start = time.perf_counter()
        path = folder / name
        synthetic_bundle(
            np.random.default_rng(seed),
            num_images=images,
            num_classes=1000,
            partial_images=min(64, images),
            attention_images=min(args.attention_images, images),
            explain_images=min(args.explain_images, images),
            set_images=min(args.set_images, images),
            image_ids=ids,
            directory=path,
            **shape,
        )
        print(f"  run {name}: written in {time.perf_counter() - start:.0f} s", flush=True)
        paths.append(path)
    return paths


def page_open_time(browser, path: Path, drawn_js: str) -> float:
    """Seconds from navigation until the page's opening state is drawn, in a fresh page."""
    page = browser.new_page(viewport={"width": 1500, "height": 1250})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.wait_for_function(drawn_js, polling=10, timeout=300_000)
    seconds = page.evaluate(NEXT_FRAMES_JS) / 1000
    page.close()
    if errors:
        print(f"  page problems in {path}: {errors[:3]}")
    return seconds


def median_open(browser, path: Path, drawn_js: str, repeats: int) -> list[float]:
    page_open_time(browser, path, drawn_js)  # warm the browser's caches once
    return [page_open_time(browser, path, drawn_js) for _ in range(repeats)]


def report_sizes(index: Path) -> dict:
    site = index.parent
    sizes = {"models": {}}
    for page in (index, site / IMAGES_FILE, site / PATTERNS_FILE):
        if page.exists():
            sizes[page.name] = page.stat().st_size
            print(f"  comparison {page.name:13s} {sizes[page.name] / MB:8.2f} MB")
    for model in sorted((site / MODELS_DIR).iterdir()):
        page = model / "index.html"
        records = sum(p.stat().st_size for p in model.rglob("*") if p.is_file()) - (
            page.stat().st_size
        )
        sizes["models"][model.name] = {"index": page.stat().st_size, "records": records}
        print(
            f"  models/{model.name + '/index.html':28s} {page.stat().st_size / MB:8.2f} MB "
            f"(target <= {TARGETS['model_index'] / MB:.0f} MB), records {records / MB:.1f} MB"
        )
    total = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    print(f"  whole folder           {total / 1e9:8.2f} GB", flush=True)
    sizes["total"] = total
    return sizes


def time_pages(index: Path, repeats: int) -> dict:
    result = {}
    with chromium() as browser:
        for page in (index, index.parent / IMAGES_FILE, index.parent / PATTERNS_FILE):
            if not page.exists():
                continue
            times = median_open(browser, page, COMPARISON_DRAWN_JS, repeats)
            result[f"{page.name}_open_s"] = times
            print(
                f"  {page.name:13s} open time {statistics.median(times):6.2f} s median of "
                f"{len(times)} (min {min(times):.2f}, max {max(times):.2f}; target <= "
                f"{TARGETS['open']} s)",
                flush=True,
            )
        first = sorted((index.parent / MODELS_DIR).iterdir())[0] / "index.html"
        model = median_open(browser, first, DRAWN_JS, repeats)
        print(
            f"  {first.parent.name} site open time {statistics.median(model):6.2f} s median of "
            f"{len(model)} (min {min(model):.2f}, max {max(model):.2f})",
            flush=True,
        )
    return {**result, "model_open_s": model, "model_timed": first.parent.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=len(RUNS), choices=range(2, len(RUNS) + 1))
    parser.add_argument("--attention-images", type=int, default=16)
    parser.add_argument("--explain-images", type=int, default=16)
    parser.add_argument("--set-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write runs and site here")
    parser.add_argument("--site", type=Path, metavar="INDEX", help="only time this built site")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.site:
        result["sizes"] = report_sizes(args.site)
        result.update(time_pages(args.site, args.repeats))
    else:
        tmp = args.keep or Path(tempfile.mkdtemp(prefix="compare_site_large."))
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            print(f"\n{args.runs} ViT-B/16-sized runs of {args.images} images:", flush=True)
            start = time.perf_counter()
            paths = write_runs(tmp / "runs", args.images, args.runs, args)
            result["write_s"] = time.perf_counter() - start
            start = time.perf_counter()
            bundles = [load_bundle(p) for p in paths]
            index = build_comparison_site(
                bundles, tmp / "site", names=[p.name for p in paths], layout="folder"
            )
            result["build_s"] = time.perf_counter() - start
            print(f"  comparison site built in {result['build_s']:.0f} s", flush=True)
            result["sizes"] = report_sizes(index)
            result.update(time_pages(index, args.repeats))
        finally:
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
    result["load_end"] = os.getloadavg()[0]
    print(f"load average {result['load_end']:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
