"""Sites of ViT-B/16 runs: bytes per image of stored attention, and a 1,000-image folder site's
size, opening time and the time from choosing an image to its attention on screen.

Attention bytes per image are those of a record's attention (``site.records.attention_record``:
deflated, base64), with each code of :mod:`jaxvit_interp.attention_codes` (``linear``, version
3's, and ``power``), beside each code's worst absolute error and worst relative error over the
weights of at least 0.1/N, measured on four kinds of attention:

- synthetic ViT-B/16 attention with realistic structure: softmax of random logits at a random
  temperature per head (uniform in [0.1, 8], as ``hop_strength.py`` draws them), peaked and flat
  heads mixed;
- a random-weight ViT-B/16 (Flax's initialisation) on photos: crops of the two photos that
  scikit-learn ships, at 224 px;
- the trained digits model on held-out digits (``jaxvit-interp demo``'s model);
- a random-weight DINOv2-S/14 with 4 registers at 518 px (1,374 tokens) on a photo crop.

The 1,000-image site is built from a synthetic B/16-shaped bundle written to disk (attention for
every image, generated a few images at a time), in the folder layout. Open time is
``performance.now()`` once the opening state is drawn (as ``site_size.py`` measures it); the
choice time runs from setting the chosen image until its record is loaded, decoded and drawn in
D2-D5 (two animation frames after), for images whose record was not loaded before.

    python benchmarks/site_large.py                 # 1,000 images
    python benchmarks/site_large.py --images 200    # a quicker look
    python benchmarks/site_large.py --digits-run demo-site/run   # and that run's single file
    python benchmarks/site_large.py --b16-run 4     # and a real random-weight B/16 run's site
    python benchmarks/site_large.py --skip-attention --shape s14-518 --images 3   # 1,370 tokens

Building the 1,000-image site takes tens of minutes on a small CPU and its timings want a quiet
machine, so the two can be split: ``--keep DIR`` builds the site into ``DIR`` (and times it), and
``--site DIR/site/index.html`` times a site built before without building anything.

``--b16-run N`` runs the real ``analyze`` on a random-weight ViT-B/16 (Flax's initialisation) over
``N`` photo crops (attention for every image, partial pruning for all of them), builds its site
with ``layout="auto"``, and reports its size, bytes per record, open time and choice time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jaxvit_interp.attention_codes import ATTENTION_CODES, encode_attention
from jaxvit_interp.site.browser import DRAWN_JS, NEXT_FRAMES_JS, chromium, open_site
from jaxvit_interp.site.document import build_site
from jaxvit_interp.site.records import attention_record
from jaxvit_interp.site.synthetic import synthetic_bundle

B16 = dict(num_layers=12, num_heads=12, grid=(14, 14), patch_size=16, channels=3)
# The shapes of the large site (--shape): ViT-B/16, or DINOv2-S/14 at 518 px (the synthetic
# bundle has CLS and no registers: 37 x 37 patches + CLS = 1,370 tokens).
SHAPES = {
    "b16": ("ViT-B/16", B16),
    "s14-518": ("DINOv2-S/14", dict(B16, num_heads=6, grid=(37, 37), patch_size=14)),
}
MB = 1e6
TARGETS = {"index": 10 * MB, "per_image": 3 * MB, "open": 3.0, "choose": 1.0}


def record_attention_bytes(
    attention: np.ndarray, num_special: int, code: str
) -> tuple[int, float, float]:
    """Bytes a record spends on one image's attention ``[L, H, N, N]`` in ``code``, and its worst
    absolute and relative errors."""
    encoded = encode_attention(attention, num_special, code)
    return (
        sum(map(len, attention_record(encoded, code))),
        float(encoded["error"].max()),
        float(encoded["relative_error"].max()),
    )


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def synthetic_attention(rng, images: int):
    for _ in range(images):
        temperature = rng.uniform(0.1, 8.0, (12, 12, 1, 1)).astype(np.float32)
        yield _softmax(rng.normal(0, 1, (12, 12, 197, 197)).astype(np.float32) * temperature)


def photo_crops(count: int, config) -> np.ndarray:
    """``count`` 224 px crops of scikit-learn's two sample photos, preprocessed for ``config``."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from jaxvit_interp.data.preprocess import preprocess_image

    crops = []
    for k in range(count):
        photo = load_sample_images().images[k % 2]
        h, w = photo.shape[:2]
        side = min(h, w) - 40 * (k // 2)
        top, left = (h - side) // 2, (w - side) * (k // 2 % 3) // 2
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crops.append(preprocess_image(crop, config))
    return np.stack(crops).astype(np.float32)


def random_b16_attention(count: int) -> np.ndarray:
    import jax

    from jaxvit_interp.execution import Execution
    from jaxvit_interp.model import VisionTransformer, ViTConfig
    from jaxvit_interp.model.run import attention_over_images

    config = ViTConfig.from_variant("B/16", image_size=224)
    images = photo_crops(count, config)
    params = VisionTransformer(config).init(jax.random.PRNGKey(0), images[:1])["params"]
    return attention_over_images(
        config, params, images, execution=Execution(batch_size=2, progress=False)
    )


def digits_attention(count: int) -> np.ndarray:
    from jaxvit_interp.data.digits import load_digits, load_digits_model
    from jaxvit_interp.execution import Execution
    from jaxvit_interp.model.run import attention_over_images

    config, params = load_digits_model()
    images, _ = load_digits("test")
    return attention_over_images(
        config, params, images[:count], execution=Execution(batch_size=32, progress=False)
    )


def registers_518_attention(count: int):
    """A random-weight DINOv2-S/14 with 4 registers at 518 px (1,374 tokens, Flax's
    initialisation) on ``count`` photo crops, one image at a time (272 MB of float16 each)."""
    import jaxvit_interp
    from jaxvit_interp.model import ViTConfig
    from jaxvit_interp.model.run import attention_over_images

    config = ViTConfig.from_variant(
        "S/14", image_size=518, num_register_tokens=4, num_classes=0, layer_scale=True
    )
    params = jaxvit_interp.init_params(config, 0)
    images = photo_crops(count, config)
    for k in range(count):
        yield attention_over_images(config, params, images[k : k + 1], batch_size=1)[0]


def attention_table(args) -> None:
    print("\nattention bytes per image in a record (deflated, base64) by code, worst errors:")
    print(
        f"  {'attention':58s} {'images':>6s} {'code':>6s} {'mean':>9s} {'max':>9s} "
        f"{'absolute':>9s} {'relative':>9s}"
    )
    rng = np.random.default_rng(0)
    cases = [
        (
            "synthetic B/16, T ~ U(0.1, 8) per head",
            1,
            synthetic_attention(rng, args.attention_images),
        ),
        ("random-weight B/16 (Flax init), sklearn photo crops", 1, random_b16_attention(4)),
        ("trained digits ViT (6x4 heads, 65 tokens), held-out digits", 1, digits_attention(32)),
        (
            "random-weight DINOv2-S/14 + 4 registers, 518 px (1,374 tokens)",
            5,
            registers_518_attention(args.registers_images),
        ),
    ]
    for name, num_special, attention in cases:
        measured = {code: [] for code in ATTENTION_CODES}
        for a in attention:
            for code in ATTENTION_CODES:
                measured[code].append(record_attention_bytes(a, num_special, code))
        for code, rows in measured.items():
            sizes, errors, relative = zip(*rows, strict=True)
            print(
                f"  {name:58s} {len(sizes):6d} {code:>6s} {np.mean(sizes) / MB:8.3f}M "
                f"{max(sizes) / MB:8.3f}M {max(errors):9.2e} {max(relative):9.3f}",
                flush=True,
            )


def open_time(browser, path: Path) -> tuple[float, float]:
    """Seconds until the opening state is drawn, and until the document was parsed (the
    navigation's ``domInteractive``: reading the file; the rest is BokehJS and the page)."""
    page = browser.new_page(viewport={"width": 1500, "height": 1250})
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.wait_for_function(DRAWN_JS, polling=10, timeout=300_000)
    seconds = page.evaluate(NEXT_FRAMES_JS) / 1000
    parsed = page.evaluate("() => performance.getEntriesByType('navigation')[0].domInteractive")
    page.close()
    return seconds, parsed / 1000


def choice_times(browser, path: Path, images: list[int]) -> list[float]:
    """Seconds from choosing each image to its attention drawn (records not loaded before)."""
    page = open_site(browser, path, timeout_ms=300_000)
    times = []
    for i in images:
        start = page.evaluate(
            """(i) => { const t = performance.now();
                 Bokeh.documents[0].get_model_by_name("images").selected.indices = [i];
                 return t; }""",
            i,
        )
        page.wait_for_function(DRAWN_JS, polling=5, timeout=60_000)
        end = page.evaluate(NEXT_FRAMES_JS)
        shown = page.evaluate(
            "() => Bokeh.documents[0].get_model_by_name('matrix_view').data.image.length"
        )
        assert shown == 1, "the attention matrix was not drawn"
        times.append((end - start) / 1000)
    if page.site_errors or page.site_warnings:
        print(f"  page problems: {page.site_errors + page.site_warnings}")
    page.close()
    return times


def folder_bytes(folder: Path) -> tuple[int, list[int]]:
    records = [p.stat().st_size for p in folder.glob("data-*/images/*.js")]
    return sum(records), records


def time_site(index: Path, repeats: int, choices: int, images: int) -> None:
    """Open time (median of ``repeats`` fresh pages) and choice times of ``choices`` images."""
    with chromium() as browser:
        open_time(browser, index)  # warm the browser's caches once
        times, parsed = zip(*(open_time(browser, index) for _ in range(repeats)), strict=True)
        print(
            f"  open time         {statistics.median(times):8.2f} s median of {len(times)} (min "
            f"{min(times):.2f}, max {max(times):.2f}; target <= {TARGETS['open']} s), of which "
            f"{statistics.median(parsed):.2f} s until the document was parsed",
            flush=True,
        )
        chosen = list(np.random.default_rng(1).choice(images, min(choices, images), replace=False))
        times = choice_times(browser, index, [int(i) for i in chosen])
        print(
            f"  choose -> D2-D5   {statistics.median(times):8.2f} s median of {len(times)} images "
            f"(min {min(times):.2f}, max {max(times):.2f}; target <= {TARGETS['choose']} s)",
            flush=True,
        )


def site_sizes(index: Path) -> None:
    total, records = folder_bytes(index.parent)
    size = index.stat().st_size
    # The 10 MB target is a folder site's page; a one-file site holds its records inline.
    target = f"target <= {TARGETS['index'] / MB:.0f} MB" if records else "one file, records inline"
    print(f"  index.html        {size / MB:8.2f} MB  ({target})")
    if records:
        print(
            f"  records           {total / MB:8.1f} MB in {len(records)} files: mean "
            f"{np.mean(records) / MB:.2f} MB, max {max(records) / MB:.2f} MB an image (target <= "
            f"{TARGETS['per_image'] / MB:.0f} MB)"
        )
    print(f"  whole folder      {(total + size) / 1e9:8.2f} GB", flush=True)


def b16_run_site(count: int, tmp: Path, repeats: int, choices: int) -> None:
    """The site of a real ``analyze`` run: random-weight ViT-B/16 on ``count`` photo crops."""
    import jaxvit_interp
    from jaxvit_interp.model import ViTConfig

    config = ViTConfig.from_variant("B/16", image_size=224)
    images = photo_crops(count, config)
    params = jaxvit_interp.init_params(config, 0)
    print(f"\nrandom-weight ViT-B/16 analyze run, {count} photo crops, attention for all:")
    start = time.perf_counter()
    settings = jaxvit_interp.AnalysisSettings(partial_images=count)
    bundle = jaxvit_interp.analyze(config, params, images, tmp / "b16-run", settings=settings,
                                   progress=False)  # fmt: skip
    print(f"  analysed in {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    index = build_site(bundle, tmp / "b16-site", layout="auto")
    kind = "folder" if list(index.parent.glob("data-*")) else "one file"
    print(f"  site built in {time.perf_counter() - start:.0f} s, layout auto: {kind}")
    site_sizes(index)
    time_site(index, repeats, choices, count)


def large_site(args, tmp: Path) -> None:
    n = args.images
    name, shape = SHAPES[args.shape]
    print(f"\n{name}-shaped site, {n} images, attention for all, 1,000 classes, folder layout:")
    start = time.perf_counter()
    bundle = synthetic_bundle(
        np.random.default_rng(0),
        num_images=n,
        num_classes=1000,
        partial_images=64,
        attention_images=n,
        directory=tmp / "bundle",
        **shape,
    )
    print(f"  synthetic bundle written in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    index = build_site(bundle, tmp / "site", layout="folder")
    print(f"  site built in {time.perf_counter() - start:.0f} s", flush=True)
    site_sizes(index)
    time_site(index, args.repeats, args.choices, n)


def digits_site(run: Path, tmp: Path, repeats: int) -> None:
    from jaxvit_interp.bundle import load_bundle

    bundle = load_bundle(run)
    print(f"\ndigits run {run}: {len(bundle.meta['image_ids'])} images, attention for "
          f"{len(bundle['attention']['image_index'])}")  # fmt: skip
    index = build_site(bundle, tmp / "digits", layout="auto")
    kind = "one file" if not list(index.parent.glob("data-*")) else "folder"
    print(f"  layout auto: {kind}, index.html {index.stat().st_size / MB:.2f} MB (target <= 15 MB)")
    with chromium() as browser:
        open_time(browser, index)
        times = [open_time(browser, index)[0] for _ in range(repeats)]
        print(f"  open time {statistics.median(times):.2f} s median of {len(times)} (min "
              f"{min(times):.2f}, max {max(times):.2f}; target <= 3 s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--attention-images", type=int, default=8, help="synthetic B/16 images")
    parser.add_argument(
        "--registers-images", type=int, default=1, help="1,374-token DINOv2 images (40 s each)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--choices", type=int, default=5)
    parser.add_argument("--digits-run", type=Path, help="a finished digits run folder")
    parser.add_argument("--skip-attention", action="store_true")
    parser.add_argument("--b16-run", type=int, metavar="N", help="also a real B/16 run's site")
    parser.add_argument("--skip-large", action="store_true", help="no 1,000-image site")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="b16", help="the large site's")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="build the sites here, keep them")
    parser.add_argument(
        "--site",
        type=Path,
        metavar="INDEX",
        help="only time this built site (one file: --images N)",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start", flush=True)
    if args.site:
        images = len(list(args.site.parent.glob("data-*/images/*.js"))) or args.images
        print(f"\nthe site {args.site} ({images} image records):")
        site_sizes(args.site)
        time_site(args.site, args.repeats, args.choices, images)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return
    if not args.skip_attention:
        attention_table(args)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="site_large."))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if args.digits_run:
            digits_site(args.digits_run, tmp, args.repeats)
        if args.b16_run:
            b16_run_site(args.b16_run, tmp, args.repeats, args.choices)
        if not args.skip_large:
            large_site(args, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
