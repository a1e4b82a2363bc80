"""The site's data preparation against plain loops over the bundle's arrays."""

from __future__ import annotations

import base64
import json
import os
import sys
import zlib

import numpy as np
import pytest

from jaxvit_interp.bundle import BundleError
from jaxvit_interp.quantities import METRIC_NAMES, SCHEMA
from jaxvit_interp.site.records import REGISTER
from jaxvit_interp.site.sources import pack_thumbnails, prepare_site_data

sys.path.insert(0, os.path.dirname(__file__))
from sitepage import make_bundle  # noqa: E402


@pytest.fixture
def bundle(rng):
    return make_bundle(
        rng,
        num_images=int(rng.integers(8, 20)),
        num_layers=int(rng.integers(1, 4)),
        num_heads=int(rng.integers(1, 4)),
        grid=(3, 4),
        partial_images=5,
        attention_images=4,
    )


def _offset(dims, sizes, coords) -> int:
    """Row-major position of ``coords`` by hand, one dimension at a time."""
    at = 0
    for dim in dims:
        at = at * sizes[dim] + coords[dim]
    return at


def test_every_bundle_array_is_looked_up_where_the_registry_says(bundle, rng):
    """Each array is one flat column, and the entry at random coordinates is where the
    registry's dimensions put it; the page's tables hold values, not recomputations."""
    data = prepare_site_data(bundle)
    sizes = data.info["sizes"]
    looked_up = 0
    for part, arrays in bundle.parts.items():
        for name, array in arrays.items():
            key = f"{part}/{name}"
            if data.info["tables"].get(key, "record") == "record":
                continue  # in each image's record, or re-encoded for display
            assert SCHEMA[part][name][0] not in ("I", "S_partial", "S_attention") or name in (
                "labels",
                "predictions",
                "overview",
            )
            dims = data.info["registry"]["schema"][part][name]
            assert tuple(dims) == SCHEMA[part][name]
            column = data.column(part, name)
            assert column.size == array.size
            for _ in range(5):
                coords = {d: int(rng.integers(sizes[d])) for d in dims}
                want = array[tuple(coords[d] for d in dims)]
                np.testing.assert_equal(column[_offset(dims, sizes, coords)], np.float32(want))
            looked_up += 1
    assert looked_up > 15
    # The over-images results the page shows are the bundle's own.
    for m in METRIC_NAMES:
        np.testing.assert_array_equal(
            data.tables["heads"][f"importance/{m}_mean"],
            bundle["importance"][f"{m}_mean"].reshape(-1),
        )


def _record(data, image: int) -> dict:
    """Image ``image``'s record as the page receives it (the registration call's argument)."""
    script = data.record(image)
    prefix = f"{REGISTER}({image},"
    assert script.startswith(prefix) and script.endswith(");\n")
    return json.loads(script[len(prefix) : -3])


def test_records_hold_each_images_arrays(bundle, rng):
    data = prepare_site_data(bundle)
    layout = data.info["records"]["arrays"]
    sizes = data.info["sizes"]
    for image in rng.choice(len(bundle.meta["image_ids"]), 3, replace=False):
        record = _record(data, int(image))
        rows = {"I": image, "S_partial": data.partial_row[image]}
        rows["S_attention"] = data.attention_row[image]
        for key, spec in layout.items():
            part, name = key.split("/")
            assert data.info["tables"][key] == "record"
            row = rows[SCHEMA[part][name][0]]
            if row < 0:
                assert key not in record["values"]
                continue
            values = np.frombuffer(base64.b64decode(record["values"][key]), spec["dtype"])
            want = bundle[part][name][row]
            assert values.size == np.prod([sizes[d] for d in spec["dims"]], dtype=int)
            np.testing.assert_array_equal(values, want.astype(spec["dtype"]).reshape(-1))
        assert record["pixels"].startswith("data:image/jpeg;base64,")


def test_partial_and_attention_subsets(bundle):
    data = prepare_site_data(bundle, max_attention_images=3)
    d = bundle.dims()
    L, H, N = d["L"], d["H"], d["N"]
    images = data.tables["images"]
    for s, i in enumerate(bundle["partial"]["image_index"]):
        assert images["partial_row"][i] == s
    assert (images["partial_row"] >= 0).sum() == len(bundle["partial"]["image_index"])
    kept = bundle["attention"]["image_index"][:3]
    assert sorted(np.flatnonzero(images["attention_row"] >= 0)) == sorted(kept)
    assert data.info["num_attention"] == 3
    assert "attention" not in data.tables
    X = d["X"]
    # steps float32 | exponents uint8 | special float16 | codes uint8 (records.py)
    layout = [("steps", "<f4", (L, H, N)), ("exponents", np.uint8, (L, H, N)),
              ("special", "<f2", (L, H, N, X)), ("codes", np.uint8, (L, H, N, N))]  # fmt: skip
    for s, image in enumerate(kept):
        pieces = _record(data, int(image))["attention"]
        blob = zlib.decompress(b"".join(base64.b64decode(p) for p in pieces))
        at = 0
        for name, dtype, shape in layout:
            count = int(np.prod(shape)) * np.dtype(dtype).itemsize
            got = np.frombuffer(blob[at : at + count], dtype).reshape(shape)
            np.testing.assert_array_equal(got, bundle["attention"][name][s], err_msg=name)
            at += count
        assert at == len(blob)
    left_out = int(np.flatnonzero(images["attention_row"] < 0)[0])
    assert "attention" not in _record(data, left_out)


def _pack_slow(rgba_uint8: np.ndarray) -> np.ndarray:
    """Pixel by pixel: R + G * 2^8 + B * 2^16 + A * 2^24."""
    n, h, w, _ = rgba_uint8.shape
    out = np.zeros((n, h, w), np.uint32)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                r, g, b, a = (int(v) for v in rgba_uint8[i, y, x])
                out[i, y, x] = r + (g << 8) + (b << 16) + (a << 24)
    return out


def test_thumbnails_are_packed_rgba(rng):
    gray = rng.integers(0, 256, (3, 5, 4, 1), dtype=np.uint8)
    rgba = np.concatenate([np.repeat(gray, 3, -1), np.full((3, 5, 4, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(pack_thumbnails(gray), _pack_slow(rgba))
    rgb01 = rng.uniform(0, 1, (2, 3, 3, 3))
    want = np.concatenate(
        [np.round(rgb01 * 255).astype(np.uint8), np.full((2, 3, 3, 1), 255, np.uint8)], -1
    )
    np.testing.assert_array_equal(pack_thumbnails(rgb01), _pack_slow(want))
    # Preprocessed pixels in [-1, 1] are scaled per image to the full range.
    signed = rng.uniform(-1, 1, (2, 4, 4, 1))
    packed = pack_thumbnails(signed)
    red = packed & 0xFF
    assert red.min(axis=(1, 2)).tolist() == [0, 0] and red.max(axis=(1, 2)).tolist() == [255, 255]
    with_alpha = rng.integers(0, 256, (1, 2, 2, 4), dtype=np.uint8)
    np.testing.assert_array_equal(pack_thumbnails(with_alpha), _pack_slow(with_alpha))
    big = rng.integers(0, 256, (2, 200, 100, 3), dtype=np.uint8)
    assert pack_thumbnails(big, max_size=64).shape == (2, 64, 32)
    with pytest.raises(BundleError, match="thumbnails"):
        pack_thumbnails(np.zeros((2, 4, 4, 2)))


def test_bundles_the_site_cannot_show(bundle):
    del bundle.parts["strength"]
    with pytest.raises(BundleError, match="'strength' part"):
        prepare_site_data(bundle)


def test_out_of_range_labels_are_named(bundle):
    bundle["images"]["labels"][2] = 99
    with pytest.raises(BundleError, match="images/labels has class 99 at image 2"):
        prepare_site_data(bundle)
