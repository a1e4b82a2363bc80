"""The site as a reader uses it, in headless Chromium: every check reads what the page shows.

Expected values come straight from the bundle's arrays with numpy, independently of the Python
preparation and of the page's JavaScript that computed what is shown.
"""

from __future__ import annotations

import numpy as np
import pytest
from sitepage import DEEP_TEXT_JS, EVIL_ID, make_bundle

from jaxvit_interp.attention_codes import decode_stored
from jaxvit_interp.quantities import ENTROPY_BINS
from jaxvit_interp.site.browser import FIND_VIEW_JS
from jaxvit_interp.site.document import build_site
from jaxvit_interp.site.sources import ID_CHARS, METRIC_INFO, short_name
from jaxvit_interp.site.synthetic import synthetic_bundle

pytestmark = pytest.mark.slow

# <img> elements anywhere, through every shadow root.
DEEP_IMG_JS = """() => {
  let n = 0;
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.shadowRoot) walk(el.shadowRoot);
      if (el.nodeName === "IMG") n += 1;
    }
  };
  walk(document);
  return n;
}"""
# The page decodes the stored codes as NumPy does, to the same float32 values.
ATT_TOL = 1e-9


def _attention(bundle, s: int, layer: int, head: int) -> np.ndarray:
    """Head ``(layer, head)``'s attention of row ``s`` of the attention subset, as stored."""
    return decode_stored(bundle["attention"], bundle.attention_code, (s, layer, head))


def _dims(bundle):
    d = bundle.dims()
    return d["L"], d["H"], d["K"], d["N"]


def _images_of_kind(
    bundle, *, attention: bool | None = None, partial: bool | None = None, not_index: tuple = ()
) -> list[int]:
    att = set(bundle["attention"]["image_index"].tolist())
    par = set(bundle["partial"]["image_index"].tolist())
    kind = [
        i
        for i in range(len(bundle.meta["image_ids"]))
        if i not in not_index
        and (attention is None or (i in att) == attention)
        and (partial is None or (i in par) == partial)
    ]
    if not kind:
        pytest.skip("the random subsets left no image of the kind this test needs")
    return kind


def _pick_image(bundle, **kind) -> int:
    return _images_of_kind(bundle, **kind)[0]


def _most_isolated(images, candidates: list[int]) -> int:
    """The candidate whose overview point lies farthest from every other point (axes scaled to
    the same range), so that a click on it cannot land on a neighbour."""
    xy = np.stack([np.asarray(images["x"]), np.asarray(images["y"])], 1)
    xy = xy / np.maximum(np.ptp(xy, axis=0), 1e-12)
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    return max(candidates, key=lambda i: dist[i].min())


def test_page_loads_without_errors_and_shows_global_values(tiny_site, tiny_bundle, open_page):
    site = open_page(tiny_site)
    assert site.problems == []
    L, H, K, _ = _dims(tiny_bundle)
    state = site.state()
    assert state["image"] == -1 and state["metric"] == "prob"
    # Every view was drawn: each figure has a view with a laid-out canvas.
    for plot in (
        "overview_plot",
        "importance_grid",
        "partial_plot",
        "top5_plot",
        "entropy_plot",
        "hop_plot",
        "entropy_hist_plot",
        "special_plot",
        "embedding_plot",
        "image_plot",
        "matrix_plot",
        "value_hist_plot",
        "reps_plot",
    ):
        size = site.page.evaluate(
            f"(n) => {{ const v = ({FIND_VIEW_JS})(n); return v ? [v.bbox.width, v.bbox.height]"
            " : null; }",
            plot,
        )
        assert size is not None and min(size) > 50, (plot, size)
    heads = site.data("heads")
    prob = tiny_bundle["importance"]["prob"]
    np.testing.assert_allclose(heads["value"], prob.mean(0).reshape(L * H), rtol=1e-5, atol=1e-7)
    entropy = tiny_bundle["strength"]["head_entropy"]
    np.testing.assert_allclose(heads["entropy"], entropy.mean(0).reshape(-1), rtol=1e-5)
    # The flip fraction the tooltips show is the fraction of images whose top-1 class flips.
    flip = tiny_bundle["importance"]["flip"]
    np.testing.assert_allclose(
        heads["importance/flip_mean"], (flip > 0.5).mean(0).reshape(-1), rtol=1e-5
    )
    # C2 of the initially chosen head is its hop strength averaged over images.
    k = state["head"]
    np.testing.assert_allclose(
        site.data("hop_bars")["strength"],
        tiny_bundle["strength"]["strength"].mean(0).reshape(L * H, K)[k],
        rtol=1e-5,
    )
    # C4: the CLS token's masses, the same as the CLS masses of hop strength.
    bars = site.data("special_bars")
    assert bars["token"] == ["cls"]
    np.testing.assert_allclose(
        bars["to"],
        tiny_bundle["strength"]["patch_to_cls"].mean(0).reshape(-1)[k : k + 1],
        rtol=1e-5,
    )
    assert "All 30 images" in site.text("image_info")


def test_clicking_an_image_makes_b_and_c_local(tiny_site, tiny_bundle, open_page):
    site = open_page(tiny_site)
    L, H, K, _ = _dims(tiny_bundle)
    images = site.data("images")
    i = _most_isolated(images, _images_of_kind(tiny_bundle, partial=True, not_index=(0,)))
    before = site.data("heads")["value"]
    site.click("overview_plot", images["x"][i], images["y"][i])
    assert site.selected("images") == [i]
    state = site.state()
    assert state["image"] == i
    k = state["head"]
    lay, h = divmod(k, H)
    heads = site.data("heads")
    np.testing.assert_allclose(
        heads["value"], tiny_bundle["importance"]["prob"][i].reshape(-1), rtol=1e-6
    )
    assert not np.allclose(heads["value"], before)
    np.testing.assert_allclose(
        heads["entropy"], tiny_bundle["strength"]["head_entropy"][i].reshape(-1), rtol=1e-6
    )
    np.testing.assert_allclose(
        site.data("hop_bars")["strength"], tiny_bundle["strength"]["strength"][i, lay, h], rtol=1e-6
    )
    s = int(np.flatnonzero(tiny_bundle["partial"]["image_index"] == i)[0])
    np.testing.assert_allclose(
        site.data("partial_bars")["prob"], tiny_bundle["partial"]["prob"][s, lay, h], rtol=1e-6
    )
    mode = state["mode"]
    names = tiny_bundle.meta["class_names"]
    top5 = site.data("top5_view")
    expected = [names[c] for c in tiny_bundle["partial"]["top5_classes"][s, lay, h, mode]]
    # Each class named in full for the hover, and on the canvas up to its 20th character.
    assert top5["name"] == expected
    assert [t.rsplit(": ", 1)[0] for t in top5["text"]] == [short_name(n) for n in expected]
    np.testing.assert_allclose(
        top5["prob"], tiny_bundle["partial"]["top5_probs"][s, lay, h, mode], rtol=1e-6
    )
    # C3 marks this image's entropy in the head's distribution.
    assert site.prop("entropy_span", "visible")
    np.testing.assert_allclose(
        site.prop("entropy_span", "location"),
        tiny_bundle["strength"]["head_entropy"][i, lay, h],
        rtol=1e-6,
    )
    assert tiny_bundle.meta["image_ids"][i] in site.text("image_info")
    # Clicking empty space returns to the global view.
    xs, ys = np.asarray(images["x"]), np.asarray(images["y"])
    site.click("overview_plot", xs.max() + 0.02 * np.ptp(xs), ys.max() + 0.02 * np.ptp(ys))
    assert site.state()["image"] == -1
    np.testing.assert_allclose(
        site.data("heads")["value"],
        tiny_bundle["importance"]["prob"].mean(0).reshape(-1),
        rtol=1e-5,
    )
    assert site.problems == []


def _red_pixels(rgb: np.ndarray) -> int:
    """Pixels of the selection outline colour (#d62728), allowing for antialiasing."""
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    return int(((r > 170) & (g < 90) & (b < 90)).sum())


def test_choosing_a_head_in_b_highlights_it_in_c_and_d(tiny_site, tiny_bundle, open_page):
    site = open_page(tiny_site)
    L, H, K, _ = _dims(tiny_bundle)
    i = _pick_image(tiny_bundle, attention=True)
    site.set_selected("images", [i])
    first = site.state()["head"]
    heads = site.data("heads")
    # The head farthest from the current one in C1, so the two highlights cannot overlap.
    xy = np.stack([heads["entropy_x"], heads["entropy"]], 1)
    k = int(
        np.argmax(
            np.linalg.norm(xy - xy[first], axis=1) * np.array([j != first for j in range(L * H)])
        )
    )
    lay, h = divmod(k, H)
    heads = site.data("heads")
    spots = {  # where head k and the first head are drawn in C1 and D1
        (plot, j): (heads[x][j], heads[y][j])
        for plot, x, y in (
            ("entropy_plot", "entropy_x", "entropy"),
            ("embedding_plot", "pos_x", "pos_y"),
        )
        for j in (k, first)
    }
    before = {key: _red_pixels(site.pixels_near(key[0], *xy_)) for key, xy_ in spots.items()}
    site.click("importance_grid", h, lay)
    assert site.selected("heads") == [k]
    assert site.state()["head"] == k
    # C and D draw the shared heads source, whose selection they outline in red: the outline
    # appears around head k and leaves the first head.
    for renderer in ("entropy_points", "embedding_heads", "importance_cells"):
        assert (
            site.page.evaluate(
                "(n) => Bokeh.documents[0].get_model_by_name(n).data_source.name", renderer
            )
            == "heads"
        )
    after = {key: _red_pixels(site.pixels_near(key[0], *xy_)) for key, xy_ in spots.items()}
    for plot in ("entropy_plot", "embedding_plot"):
        assert after[plot, k] - before[plot, k] > 10, (plot, before, after)
        far = np.hypot(
            *np.subtract(
                site.screen_xy(plot, *spots[plot, first]), site.screen_xy(plot, *spots[plot, k])
            )
        )
        if far > 40:  # the two spots do not overlap
            assert before[plot, first] - after[plot, first] > 10, (plot, before, after)
    # Their contents follow the head: C2 hop strength and D's attention.
    np.testing.assert_allclose(
        site.data("hop_bars")["strength"], tiny_bundle["strength"]["strength"][i, lay, h], rtol=1e-6
    )
    s = int(np.flatnonzero(tiny_bundle["attention"]["image_index"] == i)[0])
    att = _attention(tiny_bundle, s, lay, h)
    np.testing.assert_allclose(site.data("patches")["heat"], att[0, 1:], atol=ATT_TOL)
    for title in (
        "partial_title",
        "hop_title",
        "entropy_hist_title",
        "embedding_title",
        "image_title",
        "matrix_title",
    ):
        assert f"L{lay} H{h}" in site.prop(title, "text"), title
    assert site.problems == []


def test_clicking_a_patch_moves_the_overlay(tiny_site, tiny_bundle, open_page, site_seed):
    site = open_page(tiny_site)
    L, H, K, N = _dims(tiny_bundle)
    gh, gw = tiny_bundle.dims()["gh"], tiny_bundle.dims()["gw"]
    i = _pick_image(tiny_bundle, attention=True)
    site.set_selected("images", [i])
    k = site.state()["head"]
    lay, h = divmod(k, H)
    s = int(np.flatnonzero(tiny_bundle["attention"]["image_index"] == i)[0])
    att = _attention(tiny_bundle, s, lay, h)
    # With no patch chosen the query is the CLS token.
    np.testing.assert_allclose(site.data("patches")["heat"], att[0, 1:], atol=ATT_TOL)
    rng = np.random.default_rng(site_seed)
    p1, p2 = rng.choice(gh * gw, 2, replace=False)
    for p in (p1, p2):
        r, c = divmod(int(p), gw)
        site.click("image_plot", c + 0.5, gh - r - 0.5)
        assert site.selected("patches") == [int(p)]
        assert site.state()["query"] == 1 + p
        np.testing.assert_allclose(site.data("patches")["heat"], att[1 + p, 1:], atol=ATT_TOL)
        marker = site.data("query_marker")
        assert (marker["x"], marker["y"]) == ([c + 0.5], [gh - r - 0.5])
        assert site.prop("query_band", "top") == 1 + p
        assert f"query: patch (row {r}, col {c})" in site.prop("image_title", "text")
    # The matrix shows the whole head, the histogram counts all its N*N values.
    matrix = np.asarray(site.data("matrix_view")["image"][0]).reshape(N, N)
    np.testing.assert_allclose(matrix, att, atol=ATT_TOL)
    assert sum(site.data("value_hist")["count"]) == N * N
    site.page.locator("button", has_text="CLS token as query").click()
    site.page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('state').data.query[0] === 0"
    )
    np.testing.assert_allclose(site.data("patches")["heat"], att[0, 1:], atol=ATT_TOL)
    assert site.problems == []


def test_rollout_map_beside_the_attention_shows_the_chosen_image(
    tiny_site, tiny_bundle, open_page, site_seed
):
    site = open_page(tiny_site)
    rollout = tiny_bundle["rollout"]
    L, _, _, _ = _dims(tiny_bundle)
    size = site.page.evaluate(
        f"() => {{ const v = ({FIND_VIEW_JS})('rollout_plot'); return [v.bbox.width, "
        "v.bbox.height]; }"
    )
    assert min(size) > 50
    # No image chosen: the mean over all images.
    np.testing.assert_allclose(
        site.data("rollout_cells")["heat"], rollout["map_mean"].ravel(), rtol=1e-7
    )
    np.testing.assert_allclose(
        site.data("rollout_bars")["contribution"], rollout["contribution_mean"], rtol=1e-7
    )
    assert "mean over all images" in site.prop("rollout_title", "text")
    # Images with and without stored attention: the rollout covers every image.
    rng = np.random.default_rng(site_seed)
    # Image 0 has the long hostile id; another at random.
    other = int(rng.integers(1, len(tiny_bundle.meta["image_ids"])))
    for i in (0, other):
        site.set_selected("images", [i])
        cells = site.data("rollout_cells")
        want = rollout["map"][i].ravel()
        np.testing.assert_array_equal(cells["heat"], want)
        # D2's overlay style: the hottest patch most opaque.
        np.testing.assert_allclose(cells["alpha"], 0.1 + 0.75 * want / want.max(), rtol=1e-6)
        assert site.prop("rollout_mapper", "high") == pytest.approx(float(want.max()))
        bars = site.data("rollout_bars")
        assert bars["layer"] == list(range(L))
        np.testing.assert_array_equal(bars["contribution"], rollout["contribution"][i])
        # A long id is shown by its end (the page's shortId, tested in test_js.py).
        image_id = tiny_bundle.meta["image_ids"][i]
        if len(image_id) > ID_CHARS:
            image_id = "…" + image_id[-(ID_CHARS - 1) :]
        assert f"image {image_id}" in site.prop("rollout_title", "text")
        # The same pixels as D2, at the model's input resolution.
        assert len(site.data("thumb")["image"]) == 1
    assert "the CLS row" in site.text("rollout_note")
    assert site.problems == []


@pytest.mark.parametrize("metric", ["kl", "taylor"])
def test_metric_menu_switches_metrics(tiny_site, tiny_bundle, open_page, metric):
    site = open_page(tiny_site)
    before = site.data("heads")["value"]
    site.page.locator("select").select_option(label=f"{metric}: {METRIC_INFO[metric]['title']}")
    site.page.wait_for_function(
        "(m) => Bokeh.documents[0].get_model_by_name('state').data.metric[0] === m", arg=metric
    )
    heads = site.data("heads")
    values = tiny_bundle["importance"][metric].mean(0).reshape(-1)
    np.testing.assert_allclose(heads["value"], values, rtol=1e-5)
    assert not np.allclose(before, heads["value"])
    assert set(heads["metric"]) == {metric}
    assert site.prop("value_colorbar", "title") == metric
    assert site.prop("value_mapper", "low") == pytest.approx(values.min(), rel=1e-5)
    assert site.prop("value_mapper", "high") == pytest.approx(values.max(), rel=1e-5)
    assert site.problems == []


def test_search_finds_an_image_by_id_and_by_label(tiny_site, tiny_bundle, open_page):
    site = open_page(tiny_site)
    ids = tiny_bundle.meta["image_ids"]
    site.search(ids[7], chosen=7)
    assert site.selected("images") == [7]
    assert "Found image img-007" in site.text("search_status")
    # By label: the most confident image of that class is chosen, all of them outlined.
    labels = tiny_bundle["images"]["labels"]
    c = int(labels[3])
    name = tiny_bundle.meta["class_names"][c]
    members = np.flatnonzero(labels == c)
    p_y = tiny_bundle["images"]["probs"][members, c]
    best = int(members[np.argmax(p_y)])
    # Case-insensitive, and a part of a label.
    site.search(name.upper() if c else "script", chosen=best)
    outline = np.asarray(site.data("images")["outline"])
    assert set(np.flatnonzero(outline == 3)) >= set(members)
    assert f"{len(members)} image(s) match" in site.text("search_status")
    site.search("no-such-image-anywhere")
    assert site.state()["image"] == best  # a failed search leaves the choice alone
    site.page.locator("button", has_text="All images").click()
    site.page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('state').data.image[0] === -1"
    )
    assert site.problems == []


def test_labels_and_ids_show_as_text(tiny_site, tiny_bundle, open_page):
    site = open_page(tiny_site)
    dialogs = []
    site.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    # Image 0 has the hostile id; find it with the search box, as a reader would.
    site.search(EVIL_ID, chosen=0)
    label = tiny_bundle.meta["class_names"][int(tiny_bundle["images"]["labels"][0])]
    info = site.text("image_info")
    assert EVIL_ID in info and label in info
    assert site.html_elements("image_info", "img, script") == 0
    # The hover tooltip on that image shows the id literally, and no element came of it.
    images = site.data("images")
    site.page.mouse.move(*site.screen_xy("overview_plot", images["x"][0], images["y"][0]))
    site.page.wait_for_function(
        f"(id) => ({DEEP_TEXT_JS})().includes(id)", arg=EVIL_ID, timeout=5000
    )
    assert site.page.evaluate(DEEP_IMG_JS) == 0
    assert site.page.evaluate("() => window.__xss") is None
    assert dialogs == []
    assert "alert" not in "".join(site.problems)


def test_notes_for_images_without_partial_or_attention(tiny_site, tiny_bundle, open_page):
    site = open_page(tiny_site)
    i = _pick_image(tiny_bundle, partial=False, attention=False)
    site.set_selected("images", [i])
    assert "not computed for this image" in site.text("partial_note")
    assert site.data("top5_view")["text"] == []
    assert "not stored for this image" in site.text("attention_note")
    assert site.data("matrix_view")["image"] == []
    assert site.problems == []


def test_site_of_a_model_without_cls_and_without_optional_parts(tmp_path, open_page, rng):
    bundle = make_bundle(rng, num_layers=2, num_heads=3, grid=(3, 5), has_cls=False)
    for part in ("partial", "attention"):
        del bundle.parts[part]
    path = build_site(bundle, tmp_path / "site", metrics=["kl", "prob"])
    site = open_page(path)
    assert site.problems == []
    assert site.state()["metric"] == "kl"
    assert site.state()["kind"] == "patch"
    assert "no partial-pruning results" in site.text("partial_note")
    site.set_selected("images", [1])
    # Without CLS the default query is the centre patch.
    assert site.state()["query"] == 1 * 5 + 2
    np.testing.assert_allclose(
        site.data("heads")["value"], bundle["importance"]["kl"][1].reshape(-1), rtol=1e-6
    )
    assert site.page.locator("button", has_text="CLS token as query").count() == 0
    assert site.text("attention_note") == "This results bundle stores no attention matrices."
    rollout = bundle["rollout"]
    np.testing.assert_array_equal(site.data("rollout_cells")["heat"], rollout["map"][1].ravel())
    assert "the mean of the patch rows" in site.text("rollout_note")
    assert site.problems == []


def test_site_without_pattern_results(tmp_path, open_page, rng):
    bundle = make_bundle(rng, num_layers=2, num_heads=2, grid=(3, 3), attention_images=2)
    del bundle.parts["patterns"]
    del bundle.parts["rollout"]  # a bundle from before the rollout: D has no rollout plot
    site = open_page(build_site(bundle, tmp_path / "site"))
    assert site.state()["kind"] == ""
    assert not site.page.evaluate(
        "() => ['rollout_plot', 'rollout_cells'].some("
        "(n) => Bokeh.documents[0].get_model_by_name(n) !== null)"
    )
    assert site.text("embedding_note") == "This results bundle has no pattern results."
    i = int(bundle["attention"]["image_index"][0])
    site.set_selected("images", [i])
    site.set_selected("heads", [3])
    assert (site.state()["image"], site.state()["head"]) == (i, 3)
    np.testing.assert_allclose(
        site.data("patches")["heat"], _attention(bundle, 0, 1, 1)[0, 1:], atol=ATT_TOL
    )
    assert site.problems == []


def _most_important_head(bundle, metric: str) -> int:
    values = np.nanmean(bundle["importance"][metric], axis=0).reshape(-1)
    return int(np.argmax(values) if METRIC_INFO[metric]["important_high"] else np.argmin(values))


def _assert_global_view(site, bundle, k: int, metric: str, kind: str) -> None:
    """What the page shows over all images for head ``k``, against the bundle reduced here."""
    L, H, K, _ = _dims(bundle)
    lay, h = divmod(k, H)
    state = site.state()
    assert (state["image"], state["head"], state["metric"], state["kind"]) == (-1, k, metric, kind)
    assert site.selected("heads") == [k]
    # B1: each head's mean over images, as the grid writes it (three significant figures).
    values = np.nanmean(bundle["importance"][metric], axis=0).reshape(-1)
    heads = site.data("heads")
    np.testing.assert_allclose(heads["value"], values, rtol=1e-5)
    for text, v in zip(heads["value_text"], values, strict=True):
        assert float(text) == pytest.approx(v, rel=5e-3, abs=1e-12), (text, v)
        figures = text.split("e")[0].lstrip("-").replace(".", "").lstrip("0")
        assert len(figures) == (2 if "e" in text else 3), text
    assert site.prop("value_mapper", "low") == pytest.approx(values.min(), rel=1e-5)
    assert site.prop("value_mapper", "high") == pytest.approx(values.max(), rel=1e-5)
    assert site.prop("importance_title", "text") == f"{metric} (mean over all images)"
    # B2: p(label) after each partial-pruning mode, averaged over the images that have it.
    partial = np.nanmean(bundle["partial"]["prob"][:, lay, h], axis=0)
    bars = site.data("partial_bars")
    np.testing.assert_allclose(bars["prob"], partial, rtol=1e-5)
    for text, v in zip(bars["label"], partial, strict=True):
        assert float(text) == pytest.approx(v, abs=5e-4 + 1e-6)
    n_partial = len(bundle["partial"]["image_index"])
    assert site.text("partial_note").startswith(f"Mean over the {n_partial} images")
    assert site.data("top5_view")["text"] == []
    # C2: the head's hop strengths and masses averaged over images.
    hop_bars = site.data("hop_bars")
    for column in ("strength", "mass"):
        np.testing.assert_allclose(
            hop_bars[column], bundle["strength"][column][:, lay, h].mean(0), rtol=1e-5
        )
    # C3: the head's entropy over all images in equal bins from 0 to ln(K).
    entropy = bundle["strength"]["head_entropy"][:, lay, h]
    edges = np.linspace(0.0, np.log(K), ENTROPY_BINS + 1)
    hist = site.data("entropy_hist")
    np.testing.assert_array_equal(hist["count"], np.histogram(entropy, edges)[0])
    np.testing.assert_allclose(hist["left"], edges[:-1], rtol=1e-6)  # float32 edges
    assert not site.prop("entropy_span", "visible")
    # D1: the head on each image, and its most common cluster outlined.
    positions = bundle["patterns"][f"{kind}_positions"]
    np.testing.assert_allclose(heads["pos_x"], positions[..., 0].mean(0).reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(site.data("head_images")["y"], positions[:, lay, h, 1], rtol=1e-6)
    cluster = int(np.bincount(bundle["patterns"][f"{kind}_clusters"][:, lay, h]).argmax())
    assert site.prop("reps_title", "text").endswith(f"(L{lay} H{h}: #{cluster})")
    reps = site.data("reps_view")
    c = reps["cluster"].index(cluster)
    assert site.data("reps_highlight")["x"] == [reps["x"][c] + reps["dw"][c] / 2]
    # D2, D3: no image, so no attention.
    assert site.data("matrix_view")["image"] == []
    assert site.data("value_hist")["count"] == []
    n_attention = len(bundle["attention"]["image_index"])
    assert f"the {n_attention} outlined images" in site.text("attention_note")
    assert f"All {len(bundle.meta['image_ids'])} images" in site.text("image_info")


def test_opening_view_and_the_way_back_to_it(tiny_site, tiny_bundle, open_page):
    """The page opens on the most important head over all images, and shows the same values
    for a head when sent back to the global view."""
    site = open_page(tiny_site)
    k = _most_important_head(tiny_bundle, "prob")
    _assert_global_view(site, tiny_bundle, k, "prob", "cls")
    i = _pick_image(tiny_bundle, attention=True, partial=True)
    site.set_selected("images", [i])
    assert site.state()["image"] == i
    other = (k + 1) % (tiny_bundle.dims()["L"] * tiny_bundle.dims()["H"])
    site.set_selected("heads", [other])
    site.page.locator("button", has_text="All images").click()
    site.page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('state').data.image[0] === -1"
    )
    _assert_global_view(site, tiny_bundle, other, "prob", "cls")
    assert site.problems == []


def test_site_options_choose_the_opening_metric_and_pattern_kind(tiny_bundle, tmp_path, open_page):
    site = open_page(build_site(tiny_bundle, tmp_path, default_metric="kl", default_kind="patch"))
    _assert_global_view(site, tiny_bundle, _most_important_head(tiny_bundle, "kl"), "kl", "patch")
    patch = tiny_bundle["patterns"]["patch_positions"]
    assert site.prop("embedding_x_range", "start") < patch[..., 0].min()
    assert site.data("density_view")["x"][0] == site.prop("embedding_x_range", "start")
    assert site.problems == []


def test_pattern_toggle_and_pruning_mode_bars(tiny_site, tiny_bundle, open_page):
    site = open_page(tiny_site)
    L, H, K, _ = _dims(tiny_bundle)
    k = site.state()["head"]
    lay, h = divmod(k, H)
    site.page.locator("button", has_text="patch patterns").click()
    site.page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('state').data.kind[0] === 'patch'"
    )
    patch = tiny_bundle["patterns"]["patch_positions"]
    heads = site.data("heads")
    np.testing.assert_allclose(heads["pos_x"], patch[..., 0].mean(0).reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(site.data("head_images")["y"], patch[:, lay, h, 1], rtol=1e-6)
    reps = site.data("reps_view")
    assert len(reps["image"]) == len(tiny_bundle["patterns"]["patch_representatives"])
    assert site.prop("embedding_x_range", "start") < patch[..., 0].min()
    # A bar of B2 chooses the pruning mode whose top-5 B3 lists.
    i = _pick_image(tiny_bundle, partial=True)
    site.set_selected("images", [i])
    s = int(np.flatnonzero(tiny_bundle["partial"]["image_index"] == i)[0])
    probs = tiny_bundle["partial"]["prob"][s, lay, h]
    modes = tiny_bundle.meta["pruning_modes"]
    m = int(np.argmax(probs))  # the tallest bar is the easiest to hit
    if m == site.state()["mode"]:
        pytest.skip("the tallest bar is already the chosen mode")
    site.click("partial_plot", m + 0.5, probs[m] / 2)  # factor m sits at m + 0.5
    assert site.selected("partial_bars") == [m]
    names = tiny_bundle.meta["class_names"]
    want = [names[c] for c in tiny_bundle["partial"]["top5_classes"][s, lay, h, m]]
    assert site.data("top5_view")["name"] == want
    assert modes[m] in site.prop("top5_title", "text")
    assert site.problems == []


def test_fewer_classes_than_five_keep_a_shorter_top_k(tmp_path, open_page, rng):
    bundle = make_bundle(
        rng,
        num_classes=3,
        num_layers=2,
        num_heads=2,
        grid=(3, 3),
        partial_images=4,
        attention_images=2,
    )
    assert bundle["partial"]["top5_classes"].shape[-1] == 3
    site = open_page(build_site(bundle, tmp_path / "site"))
    i = int(bundle["partial"]["image_index"][0])
    site.set_selected("images", [i])
    k, mode = site.state()["head"], site.state()["mode"]
    lay, h = divmod(k, 2)
    names = bundle.meta["class_names"]
    top = site.data("top5_view")
    assert top["name"] == [names[c] for c in bundle["partial"]["top5_classes"][0, lay, h, mode]]
    assert top["y"] == [3, 2, 1]
    assert site.problems == []


def test_views_e_and_f_join_the_page_after_its_opening_state(tmp_path, browser, rng):
    """The page opens with A-D; E and F, held back in the views row, are added once the opening
    state is drawn, and the page's count of views to come falls from 2 to 0. A backbone site,
    without E and F, counts none."""
    from jaxvit_interp.site.browser import DRAWN_JS, OPENED_JS, open_site

    bundle = make_bundle(
        rng, num_layers=2, num_heads=2, grid=(3, 3), set_images=4, explain_images=3
    )
    path = build_site(bundle, tmp_path / "site")
    assert "window.jaxvitDeferred = {pending: 2}" in path.read_text()
    page = browser.new_page()
    try:
        page.goto(path.resolve().as_uri())
        page.wait_for_function(OPENED_JS, timeout=30000)
        page.wait_for_function(DRAWN_JS, timeout=30000)
        names = page.evaluate(
            """() => Bokeh.documents[0].get_model_by_name("views").children.map(c => c.name)"""
        )
        assert names == ["view_A", None, "view_D", "view_E", "view_F"], names
        for name in ("view_E", "view_F", "explain_curves_deletion"):
            drawn = page.evaluate(f"(n) => ({FIND_VIEW_JS})(n)?.has_finished() ?? null", name)
            assert drawn is True, name
        assert page.evaluate("() => window.jaxvitDeferred.pending") == 0
    finally:
        page.close()

    backbone = synthetic_bundle(rng, num_layers=2, num_heads=2, grid=(3, 3), num_classes=0)
    path = build_site(backbone, tmp_path / "backbone")
    assert "window.jaxvitDeferred = {pending: 0}" in path.read_text()
    page = open_site(browser, path)
    try:
        names = page.evaluate(
            """() => Bokeh.documents[0].get_model_by_name("views").children.map(c => c.name)"""
        )
        assert names == ["view_A", None, "view_D"], names
    finally:
        page.close()
