"""The manual's screenshots: each view of the demo's site, as a reader sees it at 1,920 px.

Runs the demo's spec on its first 48 images with the explanations stage on 16 of them (so view F
is drawn too) into a temporary folder (or takes ``--run``, a run folder of such a spec), chooses an image and the head the importance view opens on (the most
important by ``prob_drop``), and writes ``docs/images/view-<letter>.png`` through
:func:`jaxvit_interp.export_figures` (headless Chromium). The pages link those files; rerun this
after a change to a view.

Run:  python docs/make_screenshots.py                   (about 5 minutes on a 2-core CPU)
      python docs/make_screenshots.py --run demo/run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import jaxvit_interp as jvi

IMAGES = Path(__file__).resolve().parent / "images"


def first_image_with_everything(bundle) -> int:
    """The first image that every per-image subset of the run holds (partial pruning, kept
    attention, explanations: whichever the run has), so each view shows all it can."""
    rows = set(range(len(bundle.meta["image_ids"])))
    for part in ("partial", "attention", "explanations"):
        if part in bundle.parts:
            rows &= {int(i) for i in bundle[part]["image_index"]}
    return min(rows) if rows else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run folder of the demo's spec")
    parser.add_argument(
        "--image",
        type=int,
        help="row of the image shown (default: the first with partial pruning and explanations)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            spec = Path(tmp) / "digits.toml"
            demo = (Path(jvi.__file__).parent / "data" / "builtin" / "digits.toml").read_text()
            spec.write_text(demo.replace("[analysis]\n", "[analysis]\nexplain_images = 16\n", 1))
            build = [sys.executable, "-m", "jaxvit_interp.cli", "site", "build", str(spec)]
            subprocess.run([*build, "--max-images", "48", "--out", tmp, "--quiet"], check=True)
            run = Path(tmp) / "run"
        bundle = jvi.load_bundle(run)
        image = args.image if args.image is not None else first_image_with_everything(bundle)
        drop = np.asarray(bundle["importance"]["prob_drop"]).mean(axis=0)
        layer, head = np.unravel_index(int(np.argmax(drop)), drop.shape)
        written = jvi.export_figures(
            bundle,
            tmp,
            image,
            int(layer),
            int(head),
            ("png",),
            scale=1,
            default_metric="prob_drop",
        )
        IMAGES.mkdir(exist_ok=True)
        for path in written:  # A_overview_<image>_l0h1.png -> view-A.png
            target = IMAGES / f"view-{path.name[0]}.png"
            target.write_bytes(path.read_bytes())
            print(target)


if __name__ == "__main__":
    main()
