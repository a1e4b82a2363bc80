"""Paper figures: each view as PNG and SVG, in the state asked for."""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from jaxvit_interp.site.export import export_figures

sys.path.insert(0, os.path.dirname(__file__))
from sitepage import EVIL_ID  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}svg"


def test_arguments_are_checked(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="unknown figure format"):
        export_figures(tiny_bundle, tmp_path, 0, 0, 0, formats=("pdf",))
    with pytest.raises(ValueError, match="image_index 99 is outside 0..29"):
        export_figures(tiny_bundle, tmp_path, 99, 0, 0)
    with pytest.raises(ValueError, match=r"\(layer 3, head 0\) is outside 3 layers x 2 heads"):
        export_figures(tiny_bundle, tmp_path, 0, 3, 0)
    with pytest.raises(ValueError, match="unknown view"):
        export_figures(tiny_bundle, tmp_path, 0, 0, 0, views=("G",))


@pytest.mark.slow
def test_views_as_png_and_svg(tiny_bundle, tmp_path, browser):
    image = 0  # the image whose id is hostile: file names must stay plain
    files = export_figures(
        tiny_bundle, tmp_path, image, 2, 1, views=("B", "D"), scale=2, browser=browser
    )
    names = sorted(p.name for p in files)
    # A view asked for by name must be on the page: this bundle has no explanations.
    assert "explanations" not in tiny_bundle.parts
    with pytest.raises(ValueError, match=r"view F \(view_F\) is not on this bundle's page"):
        export_figures(tiny_bundle, tmp_path / "f", image, 2, 1, views=("F",), browser=browser)
    assert names == [
        "B_importance_img_src_x_onerror_window_xss_1_l2h1.png",
        "B_importance_img_src_x_onerror_window_xss_1_l2h1.svg",
        "D_pattern_img_src_x_onerror_window_xss_1_l2h1.png",
        "D_pattern_img_src_x_onerror_window_xss_1_l2h1.svg",
    ]
    for path in files:
        if path.suffix == ".png":
            with Image.open(path) as im:
                assert im.format == "PNG"
                # A screenshot at 2 device pixels per CSS pixel of a view several plots wide.
                assert im.width > 1000 and im.height > 400
                pixels = np.asarray(im.convert("RGB"))
                assert pixels.std() > 10  # drawn, not blank
        else:
            root = ET.parse(path).getroot()
            assert root.tag == SVG
            plots = root.findall(SVG)
            # D: embedding, image, rollout map and its layer bars, matrix, histogram, clusters,
            # in one row, as a 1,920 px window shows it.
            assert len(plots) == (3 if path.name.startswith("B") else 7)
            if path.name.startswith("D"):
                assert float(root.get("width")) > 2.5 * float(root.get("height"))
            text = "".join(root.itertext())
            assert "L2 H1" in text and EVIL_ID in text  # escaped, then parsed back
            if path.name.startswith("B"):  # the plots were drawn in the state asked for
                assert "p(label) after partial pruning: L2 H1" in text
            else:
                assert "rollout (image" in text
