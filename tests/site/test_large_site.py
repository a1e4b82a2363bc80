"""A ViT-B/16-shaped site (12 x 12 heads, 197 tokens, 224 px images, 1,000 classes) published as
a folder and opened from ``file://``: records load when an image is chosen, the views show the
bundle's values, and a missing or damaged record is said where it is needed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sitepage import make_bundle

from jaxvit_interp.attention_codes import LINEAR, decode_stored
from jaxvit_interp.bundle import INDEX_FILE, load_bundle, save_bundle
from jaxvit_interp.site.document import build_site

pytestmark = pytest.mark.slow

# The page's own files, its modules (blob: URLs of the page's code) and data: URLs.
LOCAL = ("file://", "blob:", "data:")
B16 = dict(num_layers=12, num_heads=12, grid=(14, 14), patch_size=16, channels=3)


@pytest.fixture(scope="module")
def b16_bundle(site_seed):
    # Few images, as CI can afford, with B/16's shapes and every image's attention.
    return make_bundle(
        np.random.default_rng(site_seed),
        num_images=5,
        num_classes=1000,
        partial_images=2,
        attention_images=5,
        **B16,
    )


@pytest.fixture(scope="module")
def b16_site(b16_bundle, tmp_path_factory):
    return build_site(b16_bundle, tmp_path_factory.mktemp("b16"), layout="folder")


def _records_dir(site):
    (data,) = [p for p in site.parent.iterdir() if p.name.startswith("data-")]
    return data / "images"


def _attention(bundle, image: int, layer: int, head: int) -> np.ndarray:
    s = int(np.flatnonzero(bundle["attention"]["image_index"] == image)[0])
    return decode_stored(bundle["attention"], bundle.attention_code, (s, layer, head))


def _sig(v: float) -> str:
    """The page's three significant figures (js/update.js: sig): JavaScript's toExponential(1)
    below 0.01 and from 1000, else toPrecision(3), which keeps trailing zeros (5 -> "5.00")."""
    if v != 0 and (abs(v) >= 1000 or abs(v) < 0.01):
        return f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e+")
    return f"{v:#.3g}".rstrip(".")


def _choose(site, image: int) -> None:
    site.set_selected("images", [image])
    assert site.state()["image"] == image


def test_b16_folder_site_opens_from_disk_and_loads_records(b16_site, b16_bundle, open_page):
    site = open_page(b16_site)
    page_requests = list(site.page.site_requests)
    assert site.problems == []
    H, N = 12, 197
    records = _records_dir(b16_site)
    assert len(list(records.iterdir())) == 5
    # Nothing but the page's own files: no network, no server.
    assert all(url.startswith(LOCAL) for url in page_requests), page_requests
    # An image whose record is not loaded yet: choosing it loads it, and the views turn local.
    image, k = 3, 5 * H + 7
    lay, h = divmod(k, H)
    site.set_selected("heads", [k])
    _choose(site, image)
    loaded = [u for u in site.page.site_requests if u.endswith(".js")]
    assert [u.rsplit("/", 1)[1] for u in loaded] == ["000003.js"]
    np.testing.assert_allclose(
        site.data("heads")["value"], b16_bundle["importance"]["prob"][image].reshape(-1), rtol=1e-6
    )
    # Its attention came in base64 pieces (records.py), which the page joins.
    text = (records / "000003.js").read_text()
    assert len(json.loads(text[text.index(",") + 1 : -3])["attention"]) >= 2
    att = _attention(b16_bundle, image, lay, h)
    np.testing.assert_array_equal(site.data("patches")["heat"], att[0, 1:])
    matrix = np.asarray(site.data("matrix_view")["image"][0]).reshape(N, N)
    for q, t in ((0, 0), (0, 196), (57, 58), (196, 1)):
        assert matrix[q, t] == att[q, t]
    # D4: the rollout map and per-layer contributions of this image, from its record.
    np.testing.assert_array_equal(
        site.data("rollout_cells")["heat"], b16_bundle["rollout"]["map"][image].ravel()
    )
    np.testing.assert_array_equal(
        site.data("rollout_bars")["contribution"], b16_bundle["rollout"]["contribution"][image]
    )
    # D2 shows the image at the model's input resolution, from the record.
    thumb = site.data("thumb")
    assert np.asarray(thumb["image"][0]).size == 224 * 224
    # The stored attention's absolute and relative errors, as the bundle records them.
    note = site.text("attention_note")
    stored = b16_bundle["attention"]
    error, relative = stored["error"][image, lay, h], stored["relative_error"][image, lay, h]
    error_max, relative_max = stored["error_max"][lay, h], stored["relative_error_max"][lay, h]
    assert (
        f"Worst error in this matrix: {_sig(error)} absolute, {_sig(100 * float(relative))}% "
        f"relative (weights from 0.1/N = {_sig(0.1 / N)} up); for this head over all images: "
        f"{_sig(error_max)}, {_sig(100 * float(relative_max))}%." in note
    ), note
    # A patch as the query.
    r, c = 9, 4
    site.click("image_plot", c + 0.5, 14 - r - 0.5)
    assert site.state()["query"] == 1 + r * 14 + c
    np.testing.assert_array_equal(site.data("patches")["heat"], att[1 + r * 14 + c, 1:])
    # Another image, then back to the first: its record is read once.
    _choose(site, 1)
    np.testing.assert_array_equal(
        site.data("patches")["heat"], _attention(b16_bundle, 1, lay, h)[1 + r * 14 + c, 1:]
    )
    _choose(site, image)
    np.testing.assert_array_equal(site.data("patches")["heat"], att[1 + r * 14 + c, 1:])
    names = [u.rsplit("/", 1)[1] for u in site.page.site_requests if u.endswith(".js")]
    assert names == ["000003.js", "000001.js"]
    assert all(url.startswith(LOCAL) for url in site.page.site_requests), site.page.site_requests
    assert site.problems == []


@pytest.mark.parametrize(
    ("grid", "patch_size"),
    [((16, 16), 14), ((24, 24), 16)],
    ids=["257-tokens-224px-patch14", "577-tokens-384px-patch16"],
)
def test_larger_token_counts_show_the_right_matrix_overlay_and_photo(
    grid, patch_size, site_seed, tmp_path, open_page
):
    """The views of /14 and 384 px models: the N x N matrix, the patch grid overlay and the photo
    at the model's input size, drawn from the record of the chosen image."""
    L, H, g = 2, 3, grid[0]
    N = g * g + 1
    bundle = make_bundle(
        np.random.default_rng(site_seed),
        num_images=3,
        num_classes=7,
        partial_images=1,
        attention_images=3,
        num_layers=L,
        num_heads=H,
        grid=grid,
        patch_size=patch_size,
        channels=3,
    )
    site = open_page(build_site(bundle, tmp_path / "site", layout="folder"))
    assert site.problems == []
    rng = np.random.default_rng(site_seed)
    image, k = int(rng.integers(3)), int(rng.integers(L * H))
    site.set_selected("heads", [k])
    _choose(site, image)
    att = _attention(bundle, image, *divmod(k, H))
    matrix = np.asarray(site.data("matrix_view")["image"][0]).reshape(N, N)
    for q, t in ((0, 0), (0, N - 1), (N - 1, 0), (N - 1, N - 1), *rng.integers(N, size=(4, 2))):
        assert matrix[q, t] == att[q, t], (q, t)
    np.testing.assert_array_equal(site.data("patches")["heat"], att[0, 1:])
    assert len(site.data("patches")["heat"]) == g * g
    r, c = (int(v) for v in rng.integers(g, size=2))
    site.click("image_plot", c + 0.5, g - r - 0.5)
    assert site.state()["query"] == 1 + r * g + c
    np.testing.assert_array_equal(site.data("patches")["heat"], att[1 + r * g + c, 1:])
    side = g * patch_size
    assert np.asarray(site.data("thumb")["image"][0]).size == side * side
    assert site.problems == []


def test_a_version_3_bundles_site_draws_its_linear_codes(site_seed, tmp_path, open_page):
    """A bundle written before the power code (version 3: linear codes of every weight, no
    relative error) opens, and its site draws each matrix by the linear rule."""
    L, H, g = 2, 3, 6
    N = g * g + 1
    rng = np.random.default_rng(site_seed)
    bundle = make_bundle(
        rng, num_images=4, num_classes=7, partial_images=1, attention_images=4, num_layers=L,
        num_heads=H, grid=(g, g), patch_size=4, channels=3, attention_code=LINEAR,
    )  # fmt: skip
    directory = save_bundle(bundle, tmp_path / "v3")
    index = json.loads((directory / INDEX_FILE).read_text())
    del index["attention_code"]
    (directory / INDEX_FILE).write_text(json.dumps({**index, "version": 3}))
    old = load_bundle(directory)
    site = open_page(build_site(old, tmp_path / "site", layout="folder"))
    assert site.problems == []
    image, k = int(rng.integers(4)), int(rng.integers(L * H))
    site.set_selected("heads", [k])
    _choose(site, image)
    s = int(np.flatnonzero(old["attention"]["image_index"] == image)[0])
    codes = np.asarray(old["attention"]["codes"][(s, *divmod(k, H))], np.float32)
    steps = np.asarray(old["attention"]["steps"][(s, *divmod(k, H))], np.float32)
    want = codes * steps[:, None]
    matrix = np.asarray(site.data("matrix_view")["image"][0]).reshape(N, N)
    np.testing.assert_array_equal(matrix, want)
    np.testing.assert_array_equal(site.data("patches")["heat"], want[0, 1:])
    note = site.text("attention_note")
    error = old["attention"]["error"][(s, *divmod(k, H))]
    assert f"8-bit codes with a step per row: worst absolute error {_sig(error)}" in note, note
    assert "relative" not in note
    assert site.problems == []


def test_the_overview_lists_the_most_common_of_many_classes(b16_site, b16_bundle, open_page):
    site = open_page(b16_site)
    items = site.page.evaluate(
        """() => Bokeh.documents[0].get_model_by_name("overview_plot").below
              .filter((m) => m.items).map((m) => [m.title, m.items.length])"""
    )
    assert items == [["most common of 1000 classes (search finds any)", 5]] or (
        items[0][0].startswith("most common of 1000") and items[0][1] <= 12
    )
    assert site.problems == []


def _damage(records, image: int, how: str) -> str:
    path = records / f"{image:06d}.js"
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_text(path.read_text()[:500])
    else:  # valid script, attention that does not inflate
        text = path.read_text()
        record = json.loads(text[text.index(",") + 1 : -3])
        record["attention"][0] = "AAAA" + record["attention"][0][4:]
        path.write_text(f"jaxvitRecord({image},{json.dumps(record)});\n")
    return path.name


def test_missing_or_damaged_records_are_said_where_needed(b16_bundle, tmp_path, open_page):
    site_path = build_site(b16_bundle, tmp_path / "site", layout="folder")
    records = _records_dir(site_path)
    missing = _damage(records, 0, "missing")
    truncated = _damage(records, 1, "truncated")
    _damage(records, 2, "garbled")
    site = open_page(site_path)
    means = b16_bundle["importance"]["prob"].mean(0).reshape(-1)
    _choose(site, 0)
    info = site.text("image_info")
    assert f"images/{missing} is missing" in info, info
    assert "is missing" in site.text("attention_note")
    np.testing.assert_allclose(site.data("heads")["value"], means, rtol=1e-5)
    assert site.data("matrix_view")["image"] == []
    _choose(site, 1)
    assert f"images/{truncated} is damaged" in site.text("image_info")
    assert "is damaged" in site.text("attention_note")
    np.testing.assert_allclose(site.data("heads")["value"], means, rtol=1e-5)
    # A record whose values read but whose attention does not: B and C are local, D says why.
    _choose(site, 2)
    np.testing.assert_allclose(
        site.data("heads")["value"], b16_bundle["importance"]["prob"][2].reshape(-1), rtol=1e-6
    )
    assert "is damaged" in site.text("attention_note")
    # An intact record still works.
    _choose(site, 4)
    k = site.state()["head"]
    att = _attention(b16_bundle, 4, *divmod(k, 12))
    np.testing.assert_array_equal(site.data("patches")["heat"], att[0, 1:])
    # The only complaints are the browser's own about the two broken files.
    unexpected = [
        p
        for p in site.problems
        if not re.search(r"ERR_FILE_NOT_FOUND|SyntaxError|Invalid|Unexpected", p)
    ]
    assert unexpected == [], site.problems
