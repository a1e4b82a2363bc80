"""The site's data preparation against plain loops over the bundle's arrays."""

from __future__ import annotations

import math
import os
import sys
from collections import Counter

import numpy as np
import pytest

from jaxvit_interp.bundle import IMPORTANCE_METRICS, BundleError
from jaxvit_interp.site.sources import (
    ATTENTION_SCALE,
    _most_common,
    density_image,
    pack_thumbnails,
    prepare_site_data,
    quantize_attention,
)

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


def test_rows_of_per_image_tables_follow_the_documented_layout(bundle, rng):
    data = prepare_site_data(bundle)
    d = bundle.dims()
    n_img, L, H, K = d["I"], d["L"], d["H"], d["K"]
    ih, hops = data.tables["image_heads"], data.tables["hops"]
    for _ in range(20):
        i, lay, h = int(rng.integers(n_img)), int(rng.integers(L)), int(rng.integers(H))
        row = i * L * H + lay * H + h
        for m in IMPORTANCE_METRICS:
            assert ih[m][row] == bundle["importance"][m][i, lay, h]
        assert ih["head_entropy"][row] == bundle["strength"]["head_entropy"][i, lay, h]
        for kind in ("cls", "patch"):
            pos = bundle["patterns"][f"{kind}_positions"][i, lay, h]
            assert (ih[f"{kind}_x"][row], ih[f"{kind}_y"][row]) == (pos[0], pos[1])
            assert ih[f"{kind}_cluster"][row] == bundle["patterns"][f"{kind}_clusters"][i, lay, h]
        for hop in range(K):
            assert hops["strength"][row * K + hop] == bundle["strength"]["strength"][i, lay, h, hop]
            assert hops["mass"][row * K + hop] == bundle["strength"]["mass"][i, lay, h, hop]


def test_global_values_are_means_over_images_ignoring_nan(bundle, rng):
    kl = bundle["importance"]["kl"]
    kl[rng.random(kl.shape) < 0.2] = np.nan  # e.g. images a metric could not be computed for
    kl[:, 0, 0] = np.nan  # a head with no value at all stays NaN
    data = prepare_site_data(bundle)
    d = bundle.dims()
    n_img, L, H, K = d["I"], d["L"], d["H"], d["K"]
    heads, head_hops = data.tables["heads"], data.tables["head_hops"]
    for lay in range(L):
        for h in range(H):
            k = lay * H + h
            assert (heads["layer"][k], heads["head"][k]) == (lay, h)
            assert heads["name"][k] == f"layer {lay}, head {h}"
            for m in IMPORTANCE_METRICS:
                values = [float(bundle["importance"][m][i, lay, h]) for i in range(n_img)]
                values = [v for v in values if not math.isnan(v)]
                want = sum(values) / len(values) if values else math.nan
                assert heads[f"global_{m}"][k] == pytest.approx(want, rel=1e-5, nan_ok=True)
            flips = [bundle["importance"]["flip"][i, lay, h] > 0.5 for i in range(n_img)]
            assert heads["flip_fraction"][k] == pytest.approx(sum(flips) / n_img, rel=1e-5)
            entropies = [bundle["strength"]["head_entropy"][i, lay, h] for i in range(n_img)]
            assert heads["global_head_entropy"][k] == pytest.approx(np.mean(entropies), rel=1e-5)
            for hop in range(K):
                mean = (
                    sum(bundle["strength"]["strength"][i, lay, h, hop] for i in range(n_img))
                    / n_img
                )
                assert head_hops["strength"][k * K + hop] == pytest.approx(mean, rel=1e-5)
            for kind in ("cls", "patch"):
                pos = bundle["patterns"][f"{kind}_positions"][:, lay, h]
                assert heads[f"global_{kind}_x"][k] == pytest.approx(pos[:, 0].mean(), rel=1e-5)
                counts = Counter(bundle["patterns"][f"{kind}_clusters"][:, lay, h].tolist())
                top = max(counts.values())
                assert heads[f"global_{kind}_cluster"][k] == min(
                    c for c, n in counts.items() if n == top
                )
    assert math.isnan(heads["global_kl"][0])


def test_partial_and_attention_subsets(bundle):
    data = prepare_site_data(bundle, max_attention_images=3)
    d = bundle.dims()
    L, H, M, N = d["L"], d["H"], d["M"], d["N"]
    images = data.tables["images"]
    part, top5 = data.tables["partial"], data.tables["top5"]
    for s, i in enumerate(bundle["partial"]["image_index"]):
        assert images["partial_row"][i] == s
        for lay in range(L):
            for h in range(H):
                for m in range(M):
                    row = (s * L * H + lay * H + h) * M + m
                    assert part["prob"][row] == bundle["partial"]["prob"][s, lay, h, m]
                    top_k = bundle["partial"]["top5_classes"].shape[-1]
                    for t in range(top_k):
                        r5 = row * top_k + t
                        assert (
                            top5["class_index"][r5]
                            == bundle["partial"]["top5_classes"][s, lay, h, m, t]
                        )
    assert (images["partial_row"] >= 0).sum() == len(bundle["partial"]["image_index"])
    kept = bundle["attention"]["image_index"][:3]
    assert sorted(np.flatnonzero(images["attention_row"] >= 0)) == sorted(kept)
    assert data.info["num_attention"] == 3
    value = data.tables["attention"]["value"]
    assert value.dtype == np.uint16 and value.size == 3 * L * H * N * N
    for s in range(3):
        for lay in range(L):
            for h in range(H):
                block = value[
                    ((s * L * H + lay * H + h) * N * N) : ((s * L * H + lay * H + h + 1) * N * N)
                ]
                np.testing.assert_allclose(
                    block.reshape(N, N) / ATTENTION_SCALE,
                    bundle["attention"]["attention"][s, lay, h],
                    atol=0.5 / ATTENTION_SCALE + 1e-9,
                )


def test_quantized_attention_error_is_half_a_step(rng):
    a = rng.dirichlet(np.ones(50), size=200)
    q = quantize_attention(a)
    assert q.dtype == np.uint16
    err = np.abs(q / ATTENTION_SCALE - a).max()
    assert err <= 0.5 / ATTENTION_SCALE + 1e-12
    assert quantize_attention(np.array([0.0, 1.0, 1.5, -0.1, np.nan])).tolist() == [
        0,
        65535,
        65535,
        0,
        0,
    ]


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


def test_density_image_counts_points_per_bin(rng):
    points = rng.normal(0, 1, (500, 2))
    extent = (-3.0, 3.0, -2.0, 2.5)
    bins = 12
    img = density_image(points, extent, bins=bins)
    counts = np.zeros((bins, bins))
    for x, y in points:
        c = math.floor((x - extent[0]) / (extent[1] - extent[0]) * bins)
        r = math.floor((y - extent[2]) / (extent[3] - extent[2]) * bins)
        if 0 <= c < bins and 0 <= r < bins:  # histogram2d also counts the right edge; none here
            counts[r, c] += 1
    want = np.log1p(counts) / np.log1p(counts).max()
    np.testing.assert_allclose(img, want, rtol=1e-6)


def test_most_common_cluster(rng):
    assignments = rng.integers(0, 4, (15, 2, 3))
    got = _most_common(assignments)
    for k, (lay, h) in enumerate(np.ndindex(2, 3)):
        counts = Counter(assignments[:, lay, h].tolist())
        top = max(counts.values())
        assert got[k] == min(c for c, n in counts.items() if n == top)


def test_bundles_the_site_cannot_show(bundle):
    del bundle.parts["strength"]
    with pytest.raises(BundleError, match="'strength' part"):
        prepare_site_data(bundle)


def test_out_of_range_labels_are_named(bundle):
    bundle["images"]["labels"][2] = 99
    with pytest.raises(BundleError, match="images/labels has class 99 at image 2"):
        prepare_site_data(bundle)
