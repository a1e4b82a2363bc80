"""The built-in shapes set (procedural images with planted rules) and the model trained on it."""

import os
import sys

import numpy as np
import pytest

from jaxvit_interp.data import builtin_models
from jaxvit_interp.data.shapes import (
    CLASS_NAMES,
    SHAPES_CONFIG,
    load_shapes,
    make_shapes,
    remove_marker,
)
from jaxvit_interp.model.train import evaluate

# The command-line helpers live beside the command-line tests.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "pipeline"))
from clitools import AE_FAST, FAST, assert_one_line_error, run_main  # noqa: E402


def blobs(ink: np.ndarray) -> list[set[tuple[int, int]]]:
    """The 4-connected blobs of ink pixels, by flood fill one pixel at a time."""
    seen, found = set(), []
    for start in zip(*np.nonzero(ink)):
        if start in seen:
            continue
        blob, frontier = set(), [start]
        while frontier:
            r, c = frontier.pop()
            if (r, c) in blob:
                continue
            blob.add((r, c))
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                q = (r + dr, c + dc)
                if 0 <= q[0] < ink.shape[0] and 0 <= q[1] < ink.shape[1] and ink[q]:
                    frontier.append(q)
        seen |= blob
        found.append(blob)
    return found


def label_from_pixels(image: np.ndarray) -> str:
    """The class the module docstring's rules give ``image`` ``[16, 16]`` in [0, 1], read off the
    pixels; also checks what the rules promise about the layout."""
    ink = image > 0
    corner = ink[:2, :2]
    rest = ink.copy()
    rest[:2, :2] = False
    assert not rest[:4, :4].any()  # squares keep out of the marker's patch and its neighbours
    found = blobs(rest)
    assert 1 <= len(found) <= 4
    for blob in found:
        rows, cols = zip(*blob)
        height, width = max(rows) - min(rows) + 1, max(cols) - min(cols) + 1
        assert min(rows) % 2 == 0 and min(cols) % 2 == 0  # on the 2x2 patch grid
        # A lone square, or two sharing an edge; each square is one shade in [0.5, 1].
        assert (height, width) in ((2, 2), (2, 4), (4, 2)) and len(blob) == height * width
        for r in range(min(rows), max(rows) + 1, 2):
            for c in range(min(cols), max(cols) + 1, 2):
                square = image[r : r + 2, c : c + 2]
                assert square.min() == square.max() and 0.5 <= square.min() <= 1
    for i, a in enumerate(found):  # blobs keep 2 blank pixels apart, diagonally too
        for b in found[i + 1 :]:
            gap = min(max(abs(p[0] - q[0]), abs(p[1] - q[1])) for p in a for q in b)
            assert gap >= 3, (sorted(a), sorted(b))
    touching = sum(len(blob) == 8 for blob in found)
    assert touching <= 1 and 2 <= len(found) + touching <= 4
    if corner.all():
        return "marker-solid"
    if corner[0, 0] and corner[1, 1] and not corner[0, 1] and not corner[1, 0]:
        return "marker-diagonal"
    assert not corner.any()
    if touching:
        return "touching"
    return {2: "two", 3: "three", 4: "four"}[len(found)]


def test_images_follow_their_rules_for_a_fresh_seed():
    seed = int(np.random.default_rng().integers(1 << 30))
    images, labels = make_shapes(240, seed)
    assert images.shape == (240, 16, 16, 1)
    assert np.bincount(labels, minlength=6).tolist() == [40] * 6
    for image, label in zip(images[..., 0], labels):
        assert label_from_pixels(image) == CLASS_NAMES[label], seed
    again, again_labels = make_shapes(240, seed)
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_labels, labels)
    other, _ = make_shapes(240, seed + 1)
    assert not np.array_equal(other, images)


def test_the_split_is_fixed_and_preprocessed():
    train, train_labels = load_shapes("train")
    test, test_labels = load_shapes("test")
    assert train.shape == (6000, 16, 16, 1) and test.shape == (1200, 16, 16, 1)
    assert test.min() == -1 and test.max() <= 1 and (test[test > -1] >= 0).all()
    assert np.bincount(test_labels).tolist() == [200] * 6
    train_rows = {x.tobytes() for x in train}
    assert not any(x.tobytes() in train_rows for x in test)  # held out: never trained on
    blank = remove_marker(test[test_labels <= 1])
    assert (blank[:, :2, :2] == -1).all()
    with pytest.raises(ValueError, match="split must be"):
        load_shapes("validation")


@pytest.fixture(scope="module")
def shapes_model():
    try:
        return builtin_models.SHAPES.load_model()
    except FileNotFoundError as e:
        pytest.skip(f"shapes model not built yet: {e}")


def test_shipped_model_meets_its_recorded_accuracy(shapes_model):
    config, params = shapes_model
    assert config == SHAPES_CONFIG
    recorded = builtin_models.SHAPES.info()["test_accuracy"]
    assert recorded >= 0.8  # what the shipped weights recorded (the touching rule is not learned)
    images, labels = load_shapes("test")
    # Every held-out image: the recorded figure again, to within two images of float noise.
    assert abs(evaluate(config, params, images, labels) - recorded) <= 2 / len(labels)


def test_builtin_shapes_through_the_command(shapes_model, tmp_path, capsys):
    from jaxvit_interp.bundle import load_bundle

    config = tmp_path / "fast.toml"
    config.write_text(AE_FAST)
    out = tmp_path / "run"
    args = ["--checkpoint", "builtin:shapes", "--images", "builtin:shapes", "--out", out]
    result = run_main(capsys, "analyze", *args, "--max-images", 6, "--config", config, *FAST)
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(out)
    assert bundle.meta["class_names"] == CLASS_NAMES
    assert bundle.meta["checkpoint"]["path"] == "builtin:shapes"
    _, labels = load_shapes("test")
    np.testing.assert_array_equal(bundle["images"]["labels"], labels[:6])
    assert bundle.meta["image_ids"] == [f"test-{i:04d}" for i in range(6)]


def test_unknown_and_mismatched_builtins_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    for flag, value in (("--checkpoint", "builtin:cifar"), ("--images", "builtin:cifar")):
        args = {"--checkpoint": "builtin:shapes", "--images": "builtin:shapes", flag: value}
        result = run_main(capsys, "analyze", *np.ravel(list(args.items())), "--out", out)
        assert_one_line_error(result, flag, "'builtin:cifar' is not a built-in", "builtin:shapes")
    result = run_main(
        capsys, "analyze", "--checkpoint", "builtin:shapes", "--images", "builtin:digits",
        "--out", out,
    )  # fmt: skip
    assert_one_line_error(result, "--images builtin:digits", "8x8x1", "16x16x1")
    assert not out.exists()
    assert set(builtin_models.BUILTIN_MODELS) == {"builtin:digits", "builtin:shapes"}


def test_site_specs_take_builtin_shapes_and_refuse_unknown_builtins(tmp_path):
    from jaxvit_interp.site.spec import SiteSpecError, load_site_spec

    spec = tmp_path / "shapes.toml"
    spec.write_text('model = "builtin:shapes"\nimages = "builtin:shapes"\n')
    loaded = load_site_spec(spec)
    assert loaded.model == "builtin:shapes" and loaded.images == "builtin:shapes"
    spec.write_text('model = "builtin:shape"\nimages = "builtin:shapes"\n')
    with pytest.raises(SiteSpecError, match="model = 'builtin:shape' is not a built-in") as err:
        load_site_spec(spec)
    assert "builtin:digits, builtin:shapes" in str(err.value)
