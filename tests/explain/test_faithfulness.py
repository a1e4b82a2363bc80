"""Deletion and insertion curves against a loop of single forward passes on masked images built
by hand in NumPy, the random reference, the area, the sanity check that a true occlusion ranking
beats chance on the digits model, every model family and the refusals."""

import numpy as np
import pytest
from families import CASES, SMALL  # noqa: I001  (tests/model is on sys.path via conftest)
from scipy.ndimage import gaussian_filter

from jaxvit_interp.data.digits import load_digits, load_digits_model
from jaxvit_interp.errors import InputError
from jaxvit_interp.execution import Execution
from jaxvit_interp.explain.faithfulness import curve_area, faithfulness
from jaxvit_interp.model import run_model

QUIET = Execution(progress=False, batch_size=2)


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _baseline(config, image, baseline):
    if baseline == "zero":
        return np.zeros_like(image)
    if baseline == "mean":
        return np.broadcast_to(image.mean(axis=(0, 1)), image.shape)
    ph, pw = config.patch_size
    return gaussian_filter(image, sigma=(ph / 2, pw / 2, 0), mode="reflect", truncate=3.0)


def reference_curves(config, params, images, labels, maps, mode, steps, baseline):
    """[image, steps + 1] p(label) from one forward pass per masked image, patches ordered by
    (-value, index)."""
    (gh, gw), (ph, pw) = config.grid, config.patch_size
    patches = gh * gw
    curves = np.zeros((len(images), steps + 1))
    for i, image in enumerate(np.asarray(images, np.float64)):
        base = _baseline(config, image, baseline)
        order = np.lexsort((np.arange(patches), -maps[i].ravel()))
        logits = np.asarray(run_model(config, params, image[None].astype(np.float32)).logits)
        label = int(logits.argmax()) if labels is None else int(labels[i])
        for k in range(steps + 1):
            replaced = np.zeros((gh * ph, gw * pw), bool)
            for p in order[: round(k * patches / steps)]:
                gy, gx = divmod(int(p), gw)
                replaced[gy * ph : (gy + 1) * ph, gx * pw : (gx + 1) * pw] = True
            if mode == "deletion":
                x = np.where(replaced[..., None], base, image)
            else:
                x = np.where(replaced[..., None], image, base)
            out = run_model(config, params, x[None].astype(np.float32))
            curves[i, k] = _softmax(np.asarray(out.logits, np.float64))[0, label]
    return curves


def _images(rng, config, count):
    return rng.normal(size=(count, *config.image_size, config.channels)).astype(np.float32)


@pytest.mark.parametrize(
    "mode,baseline,with_labels",
    [("deletion", "zero", True), ("insertion", "mean", False), ("deletion", "blur", False)],
)
def test_curves_equal_single_forwards_on_masked_images(
    rng, small_classifier, mode, baseline, with_labels
):
    config, params = small_classifier(patch_size=(2, 4))  # a 4x3 grid, 12 patches
    images = _images(rng, config, 3)
    labels = rng.integers(0, config.num_classes, 3) if with_labels else None
    # Few distinct values: ties, which go to the lower patch index first.
    maps = rng.integers(0, 4, (3, *config.grid)).astype(np.float32)
    steps = int(rng.integers(3, 6))
    got = faithfulness(
        config,
        params,
        images,
        labels,
        maps,
        mode=mode,
        steps=steps,
        baseline=baseline,
        execution=QUIET,
    )
    want = reference_curves(config, params, images, labels, maps, mode, steps, baseline)
    np.testing.assert_allclose(got.curves, want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got.area, np.trapezoid(want, dx=1 / steps, axis=-1), rtol=2e-5)
    # The random reference follows a permutation: it starts and ends where the map's curve does.
    np.testing.assert_allclose(got.random_curves[:, [0, -1]], want[:, [0, -1]], rtol=2e-5)


def test_a_constant_map_replaces_patches_in_index_order(rng, small_classifier):
    config, params = small_classifier()
    images = _images(rng, config, 2)
    steps = config.num_patches  # one patch a step
    constant = faithfulness(
        config,
        params,
        images,
        None,
        np.full((2, *config.grid), 0.3),
        steps=steps,
        execution=QUIET,
    )
    falling = -np.arange(config.num_patches, dtype=np.float32).reshape(config.grid)
    in_order = faithfulness(
        config, params, images, None, np.stack([falling] * 2), steps=steps, execution=QUIET
    )
    np.testing.assert_array_equal(constant.curves, in_order.curves)
    reversed_order = faithfulness(
        config, params, images, None, -np.stack([falling] * 2), steps=steps, execution=QUIET
    )
    assert not np.allclose(constant.curves[:, 1:-1], reversed_order.curves[:, 1:-1])


def test_the_random_reference_is_seeded(rng, small_classifier):
    config, params = small_classifier()
    images = _images(rng, config, 3)
    maps = rng.normal(size=(3, *config.grid))
    seed = int(rng.integers(1 << 30))
    a = faithfulness(config, params, images, None, maps, random_seed=seed, execution=QUIET)
    b = faithfulness(config, params, images, None, maps, random_seed=seed, execution=QUIET)
    c = faithfulness(config, params, images, None, maps, random_seed=seed + 1, execution=QUIET)
    np.testing.assert_array_equal(a.random_curves, b.random_curves)
    assert not np.array_equal(a.random_curves, c.random_curves)


def test_area_of_known_curves():
    steps = 8
    x = np.linspace(0, 1, steps + 1)
    curves = np.stack([1 - x, np.full_like(x, 0.25), x**2])
    # Trapezoids are exact for lines; x^2 on 8 intervals: 1/3 + 1/(6 * 8^2).
    np.testing.assert_allclose(curve_area(curves), [0.5, 0.25, 1 / 3 + 1 / 384], rtol=1e-6)


def test_occlusion_ranking_beats_a_random_order_on_the_digits_model():
    config, params = load_digits_model()
    images, labels = load_digits("test")
    images, labels = images[:32], labels[:32]
    p_clean = _softmax(np.asarray(run_model(config, params, images).logits, np.float64))
    rows = np.arange(len(images))
    drop = np.zeros((len(images), config.num_patches))
    (_, gw), (ph, pw) = config.grid, config.patch_size
    for p in range(config.num_patches):  # one forward per occluded patch, all images at once
        gy, gx = divmod(p, gw)
        occluded = images.copy()
        occluded[:, gy * ph : (gy + 1) * ph, gx * pw : (gx + 1) * pw] = 0.0
        q = _softmax(np.asarray(run_model(config, params, occluded).logits, np.float64))
        drop[:, p] = p_clean[rows, labels] - q[rows, labels]
    maps = drop.reshape(len(images), *config.grid)
    result = faithfulness(
        config, params, images, labels, maps, steps=16, execution=Execution(progress=False)
    )
    assert result.area.mean() < result.random_area.mean() - 0.05, (
        result.area.mean(),
        result.random_area.mean(),
    )
    # The reversed ranking (least important first) keeps the label longer than chance.
    reverse = faithfulness(
        config, params, images, labels, -maps, steps=16, execution=Execution(progress=False)
    )
    assert reverse.area.mean() > result.random_area.mean()


@pytest.mark.parametrize("family", sorted(CASES))
def test_every_family(rng, random_model, family):
    config, params = random_model(**SMALL, **CASES[family])
    images = _images(rng, config, 2)
    maps = rng.normal(size=(2, *config.grid))
    if not config.num_classes:
        with pytest.raises(InputError, match=r"num_classes=0.*jaxvit_interp\.model\.probe"):
            faithfulness(config, params, images, None, maps, execution=QUIET)
        return
    result = faithfulness(
        config, params, images, None, maps, steps=4, mode="insertion", execution=QUIET
    )
    assert result.curves.shape == result.random_curves.shape == (2, 5)
    assert np.isfinite(result.curves).all() and np.isfinite(result.area).all()
    assert ((result.curves >= 0) & (result.curves <= 1)).all()


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(maps=np.zeros((2, 3, 3))), r"maps have shape \(2, 3, 3\)"),
        (dict(maps=np.zeros((3, 2, 3))), r"maps have shape \(3, 2, 3\)"),
        (
            dict(maps=np.where(np.eye(6)[:2, :6].reshape(2, 2, 3) > 0, np.nan, 0)),
            "NaN or infinite.*image index 0, 1",
        ),
        (dict(labels=np.array([0, 5])), r"labels\[1\]=5"),
        (dict(mode="erase"), "unknown mode 'erase'"),
        (dict(baseline="noise"), "unknown baseline 'noise'"),
        (dict(steps=0), "steps must be a positive int"),
    ],
)
def test_bad_input_is_refused(rng, small_classifier, change, message):
    config, params = small_classifier()  # a 2x3 grid, 5 classes
    args = dict(
        labels=None, maps=np.zeros((2, *config.grid)), mode="deletion", baseline="zero", steps=4
    )
    args.update(change)
    with pytest.raises(InputError, match=message):
        faithfulness(
            config,
            params,
            _images(rng, config, 2),
            args.pop("labels"),
            args.pop("maps"),
            execution=QUIET,
            **args,
        )
