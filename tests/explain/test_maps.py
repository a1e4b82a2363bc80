"""``explain``: every model family, a model-randomisation sanity check on the shipped digits
model, and bad input refused before any model work."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from families import CASES, SMALL
from scipy.stats import spearmanr

from jaxvit_interp import ViTConfig, init_params, run_model
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.explain import DEFAULT_METHODS, Explanation, explain
from jaxvit_interp.explain import maps as maps_module
from jaxvit_interp.explain.heads import head_attention_maps
from jaxvit_interp.rollout import final_rollout_over_images

QUIET = Execution(progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CASES))
def test_every_family_gets_every_map_or_the_backbone_refusal(jittered_model, family, rng):
    config, params = jittered_model(**SMALL, **CASES[family])
    images = rng.normal(size=(3, *config.image_size, 3)).astype(np.float32)
    rollout = final_rollout_over_images(config, params, images, execution=QUIET).map
    if not config.num_classes:
        with pytest.raises(InputError, match=r"jaxvit_interp\.model\.probe"):
            explain(config, params, images, execution=QUIET)
        got = explain(config, params, images, methods=("rollout",), execution=QUIET)
        np.testing.assert_array_equal(got.maps["rollout"], rollout)
        assert got.labels is None
        return
    got = explain(config, params, images, execution=QUIET, ig_steps=4, ig_baseline="blur")
    assert list(got.maps) == list(DEFAULT_METHODS)
    for name, maps in got.maps.items():
        assert maps.shape == (3, *config.grid) and maps.dtype == np.float32, name
        assert np.isfinite(maps).all(), name
        assert np.abs(maps).max() > 0, name
    np.testing.assert_array_equal(got.maps["rollout"], rollout)
    predicted = np.asarray(run_model(config, params, images).logits).argmax(-1)
    np.testing.assert_array_equal(got.labels, predicted)
    # Chefer's relevance of the read row starts at the identity; the map is only its patch
    # columns, so with no positive gradient anywhere it would be 0 (the special tokens'
    # columns, CLS's own 1 included, are left out).
    assert np.all(got.maps["grad_rollout"] >= 0)
    assert np.all(got.maps["gradcam"] >= 0)


def _spearman_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)])


@pytest.mark.slow
def test_maps_change_when_the_trained_weights_are_randomised(rng):
    """Adebayo et al.'s model-randomisation check: a map that explains the model must change
    when its weights do. Re-randomised weights keep each leaf's mean and spread (the layer's
    scale), so only what training learnt is gone.

    The label's methods keep a mean rank correlation of -0.07 to 0.26 with the trained maps
    (three draws of 12 digits); attention rollout, which reads no label and follows the
    attention of a model whose patches' content still shapes it, keeps 0.44 to 0.75: it is held
    only to a looser bound."""
    digits = pytest.importorskip("jaxvit_interp.data.digits")
    config, params = digits.load_digits_model()
    images, labels = digits.load_digits("test")
    pick = rng.choice(len(images), size=12, replace=False)
    images, labels = images[pick], labels[pick]

    def reshuffled(p):
        p = np.asarray(p)
        return (p.mean() + p.std() * rng.normal(size=p.shape)).astype(np.float32)

    random_params = jax.tree.map(reshuffled, params)
    options = dict(execution=QUIET, ig_steps=8)
    trained = explain(config, params, images, labels, **options)
    again = explain(config, params, images, labels, **options)
    randomised = explain(config, random_params, images, labels, **options)
    for name in trained.maps:
        itself = _spearman_per_image(trained.maps[name], again.maps[name])
        across = _spearman_per_image(trained.maps[name], randomised.maps[name])
        assert np.nanmean(itself) > 0.99, name
        bound = 0.9 if name == "rollout" else 0.5
        assert np.nanmean(across) < bound, (name, np.nanmean(across))


@pytest.fixture
def no_model_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("model work started before the input was checked")

    monkeypatch.setattr(maps_module, "_batched", refuse)
    monkeypatch.setattr(maps_module, "reduce_over_images", refuse)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(methods=("rollout", "saliency")), r"unknown explanation method 'saliency'.*gradcam"),
        (dict(methods=()), "methods is empty"),
        (dict(images=np.zeros((2, 8, 8, 3), np.float32)), "wrong size"),
        (dict(labels=[0, 9]), r"labels\[1\]=9"),
        (dict(ig_baseline="noise"), "ig_baseline='noise' is not a baseline"),
        (dict(occlusion_baseline=np.zeros((3, 3))), r"occlusion_baseline has shape \(3, 3\)"),
        (dict(ig_steps=0), "ig_steps must be a positive int"),
        (dict(backbone=True), r"backbone without a classifier.*jaxvit_interp\.model\.probe"),
        (dict(backbone=True, methods=("rollout",), labels=[0, 1]), "labels name a class"),
    ],
)
def test_bad_input_is_refused_before_any_work(change, message, rng, no_model_work):
    family = "clip_backbone" if change.pop("backbone", False) else "deit_distilled"
    config = ViTConfig(**SMALL, **CASES[family])
    # Never run: zeros of the parameters' shapes, traced without compiling the initialiser.
    shapes = jax.eval_shape(lambda: init_params(config, 0))
    params = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
    call = {"images": rng.normal(size=(2, *config.image_size, 3)), "labels": None, **change}
    with pytest.raises(InputError, match=message):
        explain(config, params, call.pop("images"), call.pop("labels"), **call)


def test_the_summary_names_where_each_mean_map_peaks_and_the_gap(rng):
    maps = rng.normal(size=(4, 2, 3)).astype(np.float32)
    maps[:, 1, 2] += 10.0  # the mean peaks at row 1, column 2
    explanation = Explanation(
        maps={"occlusion": maps, "gradcam": -maps},
        labels=np.zeros(4, np.int32),
        integrated_gradients_gap=np.array([1e-3, -3e-3, 0, 0], np.float32),
    )
    lines = repr(explanation).splitlines()
    assert lines[0] == "Explanation: 4 images x 2 rows x 3 columns"
    assert "occlusion" in lines[1] and "(row 1, col 2)" in lines[1]
    assert "gradcam" in lines[2] and "(row 1, col 2)" not in lines[2]
    assert lines[3].split()[:4] == ["integrated_gradients_gap", "mean", "|gap|", "0.001"]


def test_a_callers_progress_share_moves_by_its_size_once(jittered_model, rng):
    from jaxvit_interp.progress import Progress

    config, params = jittered_model(**SMALL, **CASES["deit_distilled"])
    images = rng.normal(size=(3, *config.image_size, 3)).astype(np.float32)
    stage = Progress(total=10)
    execution = Execution(batch_size=2, progress=stage.share(4))
    explain(config, params, images, methods=("rollout", "gradcam"), execution=execution)
    assert stage.done == pytest.approx(4)  # predictions, rollout, gradcam: a third each


def test_several_heads_come_from_one_pass_equal_to_each_head_alone(
    jittered_model, rng, monkeypatch
):
    config, params = jittered_model(**SMALL, **CASES["deit_distilled"])
    images = rng.normal(size=(3, *config.image_size, 3)).astype(np.float32)
    layers, heads = rng.integers(config.num_layers, size=3), rng.integers(config.num_heads, size=3)
    names = [f"head:{layer}.{head}" for layer, head in zip(layers, heads, strict=True)]
    names = list(dict.fromkeys(names + ["head:0.0"]))
    alone = {
        name: explain(config, params, images, methods=(name,), execution=QUIET).maps[name]
        for name in names
    }
    passes = []

    def counted(*args, **kwargs):
        passes.append(args)
        return head_attention_maps(*args, **kwargs)

    monkeypatch.setattr(maps_module, "head_attention_maps", counted)
    together = explain(config, params, images, methods=("rollout", *names), execution=QUIET)
    assert len(passes) == 1
    assert list(together.maps) == ["rollout", *names]
    for name in names:
        np.testing.assert_array_equal(together.maps[name], alone[name], err_msg=name)
