"""A backbone without a classifier is analysed with the metrics it has, and its site shows only
those; the attention mass of its special tokens (CLS, registers) reaches the bundle and the site."""

import numpy as np
import pytest
from clitools import AE_FAST, FAST, TINY
from PIL import Image

from jaxvit_interp import init_params, save_checkpoint
from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.cli import main
from jaxvit_interp.data.images import load_image_folder
from jaxvit_interp.execution import Execution
from jaxvit_interp.importance import head_importance
from jaxvit_interp.model import run_model

# A DINOv2-like tower: no classifier, two register tokens, layer scale.
BACKBONE = TINY.replace(num_classes=0, num_register_tokens=2, layer_scale=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The command line's analysis of a folder with class subfolders, which only say where the
    images are: a backbone has no classes to match them to."""
    root = tmp_path_factory.mktemp("backbone")
    save_checkpoint(root / "tower", BACKBONE, params := init_params(BACKBONE, 5))
    pictures = root / "pictures"
    rng = np.random.default_rng()
    for name in ("ant", "bee"):
        (pictures / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(pictures / name / f"{i}.png")
    (root / "config.toml").write_text(AE_FAST)
    out = root / "run"
    args = ["analyze", "--checkpoint", str(root / "tower"), "--images", str(pictures)]
    args += ["--out", str(out), "--config", str(root / "config.toml"), *FAST]
    assert main(args) == 0
    images = load_image_folder(pictures, BACKBONE, progress=False).images
    return load_bundle(out), params, images


def test_the_bundle_holds_the_metrics_a_backbone_has(run):
    bundle, params, images = run
    assert bundle.meta["metrics"] == ["layer", "repr"]
    assert bundle.meta["class_names"] == [] and not bundle.meta["labels_are_predictions"]
    assert sorted(bundle["importance"]) == ["layer", "layer_mean", "repr", "repr_mean"]
    assert not {"labels", "predictions", "probs"} & set(bundle["images"])
    assert "partial" not in bundle.parts
    want = head_importance(
        BACKBONE, params, images, metrics=("layer", "repr"), execution=Execution(progress=False)
    )
    for m in ("layer", "repr"):
        np.testing.assert_allclose(bundle["importance"][m], want[m], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            bundle["importance"][f"{m}_mean"], np.mean(want[m], axis=0), rtol=1e-4, atol=1e-6
        )


def test_special_token_mass_is_the_attention_to_and_from_each_special_token(run):
    bundle, params, images = run
    assert bundle.meta["special_tokens"] == ["cls", "register_0", "register_1"]
    attention = np.asarray(run_model(BACKBONE, params, images).attention, np.float64)
    t = 3  # CLS and two registers come before the patches
    part = bundle["strength"]
    for i in range(len(images)):
        for layer in range(BACKBONE.num_layers):
            for head in range(BACKBONE.num_heads):
                a = attention[i, layer, head]
                to = [a[t:, s].sum() / (a.shape[0] - t) for s in range(t)]
                given = [a[s, t:].sum() for s in range(t)]
                np.testing.assert_allclose(part["special_to"][i, layer, head], to, rtol=1e-4)
                np.testing.assert_allclose(part["special_from"][i, layer, head], given, rtol=1e-4)
    # CLS is the first special token: its masses are hop strength's CLS masses.
    np.testing.assert_allclose(part["special_to"][..., 0], part["patch_to_cls"], rtol=1e-5)
    np.testing.assert_allclose(part["special_from"][..., 0], part["cls_to_patch"], rtol=1e-5)
    np.testing.assert_allclose(
        part["special_between_mean"], attention[:, :, :, :t, :t].mean(axis=0), rtol=1e-4
    )


def test_the_site_lists_only_the_metrics_the_bundle_has(run, tmp_path):
    from jaxvit_interp.errors import InputError
    from jaxvit_interp.site import build_document

    bundle = run[0]
    doc = build_document(bundle)
    select = doc.select_one({"name": "metric_select"})
    assert [value for value, _ in select.options] == ["layer", "repr"]
    assert select.value == "layer"
    assert doc.select_one({"name": "special_plot"}) is not None
    assert doc.select_one({"name": "partial_plot"}).visible is False
    with pytest.raises(InputError, match=r"default metric 'prob' is not in this results bundle"):
        build_document(bundle, default_metric="prob")
    with pytest.raises(InputError, match=r"none of the metrics \['kl'\]"):
        build_document(bundle, metrics=["kl"])


def test_the_page_shows_the_backbone_and_its_special_tokens(run, tmp_path):
    import os
    import sys

    from jaxvit_interp.site import build_site
    from jaxvit_interp.site.browser import BrowserUnavailable, chromium, find_chromium, open_site

    try:
        find_chromium()
    except BrowserUnavailable as err:
        pytest.skip(f"browser tests need Chromium: {err}")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "site"))
    from sitepage import SitePage

    bundle = run[0]
    L, H = BACKBONE.num_layers, BACKBONE.num_heads
    with chromium() as browser:
        site = SitePage(open_site(browser, build_site(bundle, tmp_path)))
        assert site.problems == []
        state = site.state()
        assert state["metric"] == "layer"
        heads = site.data("heads")
        np.testing.assert_allclose(
            heads["value"], bundle["importance"]["layer_mean"].reshape(L * H), rtol=1e-5
        )
        k = state["head"]
        mean_to = bundle["strength"]["special_to_mean"].reshape(L * H, 3)[k]
        bars = site.data("special_bars")
        assert bars["token"] == ["cls", "register_0", "register_1"]
        np.testing.assert_allclose(bars["to"], mean_to, rtol=1e-5)
        # Choosing an image makes the bars its own.
        site.set_selected("images", [2])
        bars = site.data("special_bars")
        np.testing.assert_allclose(
            bars["from"], bundle["strength"]["special_from"][2].reshape(L * H, 3)[k], rtol=1e-5
        )
        assert site.text("image_info").startswith(f"Chosen image: {bundle.meta['image_ids'][2]}")
        assert "label" not in site.text("image_info")
        assert site.problems == []


@pytest.mark.parametrize(
    ("views", "needle"),
    [
        ('default_metric = "prob"', "views.default_metric = 'prob' needs a classifier"),
        ('metrics = ["kl", "prob"]', "views.metrics = ['kl', 'prob'] has none of the metrics"),
    ],
)
def test_a_site_spec_whose_views_need_a_classifier_is_refused_before_the_analysis(
    tmp_path, capsys, views, needle
):
    """A spec naming a backbone, whose [views] need logits, is refused once the model is read,
    naming the spec, the model and the metrics it has, before any run folder is made."""
    from clitools import assert_one_line_error, run_main

    save_checkpoint(tmp_path / "tower", BACKBONE, init_params(BACKBONE, 3))
    (tmp_path / "pictures").mkdir()
    spec = tmp_path / "site.toml"
    spec.write_text(f'model = "tower"\nimages = "pictures"\n[views]\n{views}\n')
    result = run_main(capsys, "site", "build", spec, "--out", tmp_path / "site")
    assert_one_line_error(result, str(spec), needle, "model = ", "layer, repr")
    assert not (tmp_path / "site").exists()
