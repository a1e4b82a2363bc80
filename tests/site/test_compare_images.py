"""The comparison page's per-image panel: each run's values for the shared images against direct
indexing loops, the page's stored tables against the bundles (after their 8-bit coding), and in
Chromium, choosing another image redraws every run's column with that image's maps."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from bokeh.embed import file_html
from bokeh.resources import INLINE
from PIL import Image
from sitepage import open_comparison_page

from jaxvit_interp.compare import UNSHARED_IMAGES, compare_images
from jaxvit_interp.site.comparison import build_images_document
from jaxvit_interp.site.comparison_images import (
    NO_EXPLANATIONS,
    STRIP,
    decode_maps,
    encode_maps,
    explain_note,
)
from jaxvit_interp.site.synthetic import synthetic_bundle

# A name meant to break out of HTML, as an image id and a run name.
EVIL = '<img src=x onerror="window.__xss=1">'


def _ids(rng, count: int, pool: int) -> list[str]:
    """``count`` distinct ids of a pool of ``pool``, in a random order."""
    return [f"im-{i}" for i in rng.permutation(pool)[:count]]


def _runs(rng, ids_a, ids_b, ids_c) -> list:
    """Three runs unlike each other: a 4x4 classifier with CLS and the explanations part, a 6x6
    backbone of patch 14 without CLS, and a 4x4 classifier whose labels are its own predictions."""
    a = synthetic_bundle(
        rng, num_images=len(ids_a), image_ids=ids_a, grid=(4, 4), explain_images=len(ids_a) // 2
    )
    b = synthetic_bundle(
        rng, num_images=len(ids_b), image_ids=ids_b, grid=(6, 6), patch_size=14, has_cls=False,
        num_classes=0,
    )  # fmt: skip
    c = synthetic_bundle(rng, num_images=len(ids_c), image_ids=ids_c, grid=(4, 4), num_classes=7)
    c.meta["labels_are_predictions"] = True
    return [a, b, c]


def _expected(bundles) -> tuple[bool, list[list[dict]]]:
    """Per run and image shown, its values by loops over ids, classes and explained images."""
    ids = [list(b.meta["image_ids"]) for b in bundles]
    shared = [i for i in ids[0] if all(i in other for other in ids[1:])]
    rows = (
        [[run.index(i) for i in shared] for run in ids]
        if shared
        else [list(range(min(UNSHARED_IMAGES, len(run)))) for run in ids]
    )
    out = []
    for bundle, run_rows in zip(bundles, rows):
        names = bundle.meta["class_names"]
        explained = bundle.parts.get("explanations")
        values = []
        for row in run_rows:
            v = {"id": bundle.meta["image_ids"][row], "rollout": bundle["rollout"]["map"][row]}
            v["predicted"] = v["probability"] = v["label"] = None
            if names:
                probs = [float(p) for p in bundle["images"]["probs"][row]]
                v["predicted"] = int(bundle["images"]["predictions"][row])
                v["probability"] = probs[v["predicted"]]
                if not bundle.meta.get("labels_are_predictions"):
                    v["label"] = int(bundle["images"]["labels"][row])
            v["maps"] = None
            if explained is not None:
                for k, image in enumerate(explained["image_index"]):
                    if image == row:
                        v["maps"] = explained["maps"][k]
            values.append(v)
        out.append(values)
    return bool(shared), out


def _check(comparison, bundles):
    shared, want = _expected(bundles)
    assert comparison.shared == shared
    for run, bundle, values in zip(comparison.runs, bundles, want):
        assert run.ids == [v["id"] for v in values]
        assert run.grid == bundle["rollout"]["map"].shape[1:]
        for j, v in enumerate(values):
            np.testing.assert_array_equal(run.rollout[j], v["rollout"])
            if v["predicted"] is None:
                assert run.predicted is None and run.probability is None
            else:
                assert run.predicted[j] == v["predicted"]
                assert run.probability[j] == np.float32(v["probability"])
            if v["label"] is None:
                assert run.label is None and run.correct is None
            else:
                assert run.label[j] == v["label"]
                assert run.correct[j] == (v["label"] == v["predicted"])
            if v["maps"] is None:
                assert run.explain_row[j] == -1
                assert run.explain_maps is None or np.isnan(run.explain_maps[j]).all()
            else:
                np.testing.assert_array_equal(run.explain_maps[j], v["maps"])
        if "explanations" in bundle.parts:
            assert run.methods == bundle.meta["explanations"]["methods"]
        else:
            assert run.methods == [] and run.explain_maps is None


@pytest.mark.parametrize("sharing", ["some", "none", "all"])
def test_each_runs_values_match_direct_indexing(sharing, site_seed):
    rng = np.random.default_rng([site_seed, ["some", "none", "all"].index(sharing)])
    if sharing == "some":
        ids = [_ids(rng, 14, 20), _ids(rng, 16, 20), _ids(rng, 15, 20)]
    elif sharing == "none":
        ids = [[f"a-{i}" for i in range(15)], [f"b-{i}" for i in range(9)], _ids(rng, 13, 20)]
    else:
        every = _ids(rng, 12, 12)
        ids = [every, list(rng.permutation(every)), list(rng.permutation(every))]
    bundles = _runs(rng, *ids)
    comparison = compare_images(bundles)
    _check(comparison, bundles)
    if sharing == "some":
        assert 0 < len(comparison.match.shared) < 14
    assert comparison.shared == (sharing != "none")


def test_maps_coded_in_8_bits_come_back_within_half_a_step(site_seed):
    rng = np.random.default_rng(site_seed)
    maps = rng.normal(
        rng.normal(0, 5, (7, 3, 1, 1)), rng.uniform(1e-3, 4, (7, 3, 1, 1)), (7, 3, 5, 6)
    )
    maps[0, 0] = 2.5  # a constant map
    maps[1, 1, 2, 3] = np.nan
    codes, lo, hi = encode_maps(maps)
    assert codes.dtype == np.uint8 and codes.shape == (7, 3, 30)
    back = decode_maps(codes, lo, hi).reshape(maps.shape)
    flat = maps.reshape(7, 3, -1)
    for i in range(7):
        for m in range(3):
            finite = flat[i, m][np.isfinite(flat[i, m])]
            assert lo[i, m] == np.float32(finite.min()) and hi[i, m] == np.float32(finite.max())
            step = (float(hi[i, m]) - float(lo[i, m])) / 255
            ok = np.isfinite(maps[i, m])
            err = np.abs(back[i, m][ok] - maps[i, m][ok])
            assert err.max() <= step / 2 + 1e-5 * max(1.0, abs(finite).max()), (i, m)
    np.testing.assert_allclose(back[0, 0], 2.5)
    assert back[1, 1, 2, 3] == lo[1, 1]  # not finite: coded as the map's low end


@pytest.fixture(scope="module")
def panel_runs(site_seed):
    """Three runs sharing some images in other orders, one image id meant to break HTML."""
    rng = np.random.default_rng([site_seed, 7])
    ids = [_ids(rng, 14, 18), _ids(rng, 15, 18), _ids(rng, 16, 18)]
    for run in ids:  # the same hostile id in every run
        run[int(rng.integers(len(run)))] = EVIL
    return _runs(rng, *ids)


def _source(doc, name: str) -> dict:
    return doc.get_model_by_name(name).data


def _is_photo_of(url: str, bundle, row: int) -> None:
    """``url`` is a JPEG of the bundle's thumbnail ``row`` (tiny synthetic thumbnails are stored
    at their size): within JPEG's error of it, and nearer it than any other image's."""
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    pixels = np.asarray(decoded, np.float64)
    thumbnails = np.asarray(bundle["images"]["thumbnails"], np.float64)
    error = np.abs(thumbnails - pixels).mean(axis=(1, 2, 3))
    assert error[row] <= 8 and int(np.argmin(error)) == row, (error[row], error.min())


def _menu(doc) -> list[str]:
    return [label for _, label in doc.get_model_by_name("images_select").options]


def _stored_image(doc, r: int, j: int, grid, methods: int):
    """Run ``r``'s rollout map and explanation maps of image ``j``, decoded from the page's
    tables as the page's code decodes them (None: not stored)."""
    P = grid[0] * grid[1]
    table = _source(doc, f"images_run_{r}")
    codes = np.asarray(_source(doc, f"images_rollout_{r}")["code"])
    rollout = decode_maps(
        codes[j * P : (j + 1) * P], table["rollout_lo"][j], table["rollout_hi"][j]
    )
    row = int(table["explain_row"][j])
    maps = None
    if row >= 0:
        ranges = _source(doc, f"images_explain_range_{r}")
        codes = np.asarray(_source(doc, f"images_explain_{r}")["code"])
        at = row * methods + np.arange(methods)
        maps = decode_maps(
            codes[row * methods * P : (row + 1) * methods * P].reshape(methods, P),
            np.asarray(ranges["lo"])[at],
            np.asarray(ranges["hi"])[at],
        )
    return rollout, maps


def _close(got, want):
    """Each map of ``got`` (``[..., P]``) within half an 8-bit step of ``want``'s own range."""
    want = np.asarray(want, np.float64).reshape(np.shape(got))
    step = np.ptp(want, axis=-1, keepdims=True) / 255
    assert (np.abs(np.asarray(got, np.float64) - want) <= step / 2 + 1e-6).all()


def test_the_pages_tables_hold_each_runs_values_for_a_random_shared_image(panel_runs, site_seed):
    names = ["vit", EVIL, "probe"]
    doc = build_images_document(panel_runs, names)
    comparison = compare_images(panel_runs)
    shared, want = _expected(panel_runs)
    assert shared
    j = int(np.random.default_rng(site_seed).integers(len(comparison.match.shared)))
    assert _menu(doc) == comparison.match.shared
    photos = _source(doc, "images_photos")["jpeg"]
    assert len(photos) == len(comparison.match.shared)
    _is_photo_of(photos[j], panel_runs[0], comparison.runs[0].index[j])
    for r, (bundle, values) in enumerate(zip(panel_runs, want)):
        v, run = values[j], comparison.runs[r]
        rollout, maps = _stored_image(doc, r, j, run.grid, len(run.methods))
        _close(rollout, v["rollout"])
        table = _source(doc, f"images_run_{r}")
        assert table["image"][j] == bundle.meta["image_ids"].index(v["id"])
        text = table["text"][j]
        if v["predicted"] is None:
            assert text == "a backbone without a classifier: no prediction"
        else:
            names_ = bundle.meta["class_names"]
            assert text.startswith(
                f"predicted {names_[v['predicted']]} (p = {v['probability']:.3f})"
            )
            if v["label"] is None:
                assert "no label" in text
            else:
                verdict = "correct" if v["label"] == v["predicted"] else "wrong"
                assert text.endswith(f"label {names_[v['label']]}: {verdict}")
        if v["maps"] is None:
            assert maps is None
        else:
            _close(maps, np.asarray(v["maps"], np.float64).reshape(len(run.methods), -1))
    # The whole of every table: 8 bits per patch per map, the photos once.
    P = [run.grid[0] * run.grid[1] for run in comparison.runs]
    n = len(comparison.match.shared)
    for r, run in enumerate(comparison.runs):
        assert len(_source(doc, f"images_rollout_{r}")["code"]) == n * P[r]
        explained = int((run.explain_row >= 0).sum())
        assert (
            len(_source(doc, f"images_explain_{r}")["code"]) == explained * len(run.methods) * P[r]
        )
    assert doc.get_model_by_name("images_photos_0") is None


def test_runs_sharing_no_image_show_their_own_first_images(site_seed):
    rng = np.random.default_rng([site_seed, 11])
    bundles = _runs(rng, [f"a-{i}" for i in range(20)], [f"b-{i}" for i in range(5)],
                    [f"c-{i}" for i in range(30)])  # fmt: skip
    del bundles[2].parts["rollout"]  # a bundle from before the rollout stage
    doc = build_images_document(bundles, ["a", "b", "c"])
    note = doc.get_model_by_name("images_panel_note").text
    assert note.startswith("The runs share no image")
    menu = _menu(doc)
    assert len(menu) == UNSHARED_IMAGES
    for r, bundle in enumerate(bundles):
        table = _source(doc, f"images_run_{r}")
        own = min(UNSHARED_IMAGES, len(bundle.meta["image_ids"]))
        # A run with fewer images than the menu shows its last one for the rest.
        assert list(table["image"]) == [min(j, own - 1) for j in range(UNSHARED_IMAGES)]
        assert table["text"][0].startswith(f"image {bundle.meta['image_ids'][0]}: ")
        assert doc.get_model_by_name(f"images_photos_{r}") is not None
    assert explain_note(0, False) == NO_EXPLANATIONS
    assert len(_source(doc, "images_rollout_2")["code"]) == 0
    assert (
        doc.get_model_by_name("images_rollout_plot_2").title.text == "no rollout part in this run"
    )
    assert doc.get_model_by_name("images_strip") is None


def _wait_outlined(page, j: int) -> None:
    """Wait for the page's code to have drawn image ``j`` (CustomJS runs asynchronously): the
    strip outlines it, and the strip is drawn first, every run's column in the same call."""
    page.wait_for_function(
        """(j) => { const d = Bokeh.documents[0].get_model_by_name('images_strip').data;
          return Array.from(d.slot).some((k, i) => k === j && d.line[i] > 0); }""",
        arg=j,
    )


@pytest.mark.slow
def test_choosing_another_image_redraws_every_runs_maps(panel_runs, browser, tmp_path, site_seed):
    names = ["vit", EVIL, "probe"]
    doc = build_images_document(panel_runs, names)
    path = tmp_path / "images.html"
    path.write_text(file_html(doc, resources=INLINE, title=doc.title), encoding="utf-8")
    comparison = compare_images(panel_runs)
    shared, want = _expected(panel_runs)
    n = len(comparison.match.shared)
    page = open_comparison_page(browser, path)
    try:
        rng = np.random.default_rng(site_seed)
        for j in (int(rng.integers(1, n)), 0):  # another image, then back to the first
            page.evaluate(
                "(j) => { Bokeh.documents[0].get_model_by_name('images_select').value = "
                "String(j); }",
                j,
            )
            _wait_outlined(page, j)
            drawn = page.evaluate(
                """(count) => {
                  const doc = Bokeh.documents[0], out = [];
                  for (let r = 0; r < count; r++) {
                    const d = doc.get_model_by_name(`images_cells_${r}`).data;
                    const photo = doc.get_model_by_name(`images_photo_${r}`).data.url[0];
                    out.push({
                      cells: Object.fromEntries(Object.entries(d).map(([k, v]) => [k, Array.from(v)])),
                      photo,
                      text: doc.get_model_by_name(`images_text_${r}`).text,
                      note: doc.get_model_by_name(`images_explain_note_${r}`).text,
                    });
                  }
                  return out;
                }""",
                len(panel_runs),
            )
            for r, (run, values, got) in enumerate(zip(comparison.runs, want, drawn)):
                v = values[j]
                assert got["photo"] == _source(doc, "images_photos")["jpeg"][j]
                heat = np.asarray(got["cells"]["heat"])
                _close(heat, np.asarray(v["rollout"], np.float64).reshape(-1))
                top = np.max(heat)
                np.testing.assert_allclose(
                    got["cells"]["alpha"], 0.1 + 0.75 * heat / top, rtol=1e-6
                )
                assert got["text"] == _source(doc, f"images_run_{r}")["text"][j]
                for m in range(len(run.methods)):
                    cells = np.asarray(got["cells"][f"heat_{m}"])
                    if v["maps"] is None:
                        assert (np.asarray(got["cells"][f"alpha_{m}"]) == 0).all()
                    else:
                        _close(cells, np.asarray(v["maps"][m], np.float64).reshape(-1))
                if run.methods:
                    assert (got["note"] == "") == (v["maps"] is not None)
                else:
                    assert got["note"] == NO_EXPLANATIONS
        # The strip shows the chosen image's page, the chosen one outlined; a click chooses.
        strip = page.evaluate(
            "() => { const d = Bokeh.documents[0].get_model_by_name('images_strip').data;"
            " return {slot: Array.from(d.slot), line: Array.from(d.line)}; }"
        )
        assert strip["slot"] == list(range(min(STRIP, n)))  # image 0 is chosen last
        assert [k for k, w in zip(strip["slot"], strip["line"]) if w > 0] == [0]
        k = int(rng.integers(1, len(strip["slot"])))
        page.evaluate(
            "(k) => { Bokeh.documents[0].get_model_by_name('images_strip').selected.indices = [k]; }",
            k,
        )
        _wait_outlined(page, strip["slot"][k])
        chosen = page.evaluate("() => Bokeh.documents[0].get_model_by_name('images_select').value")
        assert chosen == str(strip["slot"][k])
        assert page.evaluate("() => window.__xss") is None
        assert page.problems == []
    finally:
        page.close()


@pytest.mark.slow
def test_runs_sharing_no_image_redraw_their_own_images(browser, tmp_path, site_seed):
    rng = np.random.default_rng([site_seed, 13])
    bundles = _runs(rng, [f"a-{i}" for i in range(20)], [f"b-{i}" for i in range(5)],
                    [f"c-{i}" for i in range(30)])  # fmt: skip
    del bundles[1].parts["rollout"]
    doc = build_images_document(bundles, ["a", "b", "c"])
    path = tmp_path / "images.html"
    path.write_text(file_html(doc, resources=INLINE, title=doc.title), encoding="utf-8")
    page = open_comparison_page(browser, path)
    try:
        j = int(rng.integers(5, UNSHARED_IMAGES))  # past the 5 images of run b
        page.evaluate(
            "(j) => { Bokeh.documents[0].get_model_by_name('images_select').value = String(j); }",
            j,
        )
        # Without a strip, wait for the last column's text (drawn last) to be image j's.
        want = _source(doc, "images_run_2")["text"][j]
        page.wait_for_function(
            "(t) => Bokeh.documents[0].get_model_by_name('images_text_2').text === t", arg=want
        )
        comparison = compare_images(bundles)
        for r, bundle in enumerate(bundles):
            row = min(j, len(bundle.meta["image_ids"]) - 1)
            text = page.evaluate(
                f"() => Bokeh.documents[0].get_model_by_name('images_text_{r}').text"
            )
            assert text.startswith(f"image {bundle.meta['image_ids'][row]}: ")
            photo = page.evaluate(
                f"() => Bokeh.documents[0].get_model_by_name('images_photo_{r}').data.url[0]"
            )
            _is_photo_of(photo, bundle, row)
            heat = page.evaluate(
                f"() => Array.from(Bokeh.documents[0].get_model_by_name('images_cells_{r}').data.heat)"
            )
            if "rollout" in bundle.parts:
                _close(heat, np.asarray(bundle["rollout"]["map"][row], np.float64).reshape(-1))
            else:
                assert heat == [0] * (comparison.runs[r].grid[0] * comparison.runs[r].grid[1])
        assert page.problems == []
    finally:
        page.close()
