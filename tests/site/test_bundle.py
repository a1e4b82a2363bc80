"""Results bundles on disk: a round trip, and bad bundles failing with the part named."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from jaxvit_interp.attention_codes import LINEAR, POWER, decode_stored
from jaxvit_interp.bundle import BUNDLE_VERSION, INDEX_FILE, BundleError, load_bundle, save_bundle
from jaxvit_interp.quantities import METRIC_NAMES
from jaxvit_interp.site.views.head_sets import class_map_tables

# The arrays of a classifier's importance part that a version 3 bundle lacks.
CLASS_DERIVED = ("_class_specificity", "_class_top")

sys.path.insert(0, os.path.dirname(__file__))
from sitepage import make_bundle  # noqa: E402


@pytest.fixture
def saved(rng, tmp_path):
    bundle = make_bundle(
        rng,
        num_images=12,
        num_layers=2,
        num_heads=2,
        grid=(3, 3),
        partial_images=3,
        attention_images=2,
    )
    return bundle, save_bundle(bundle, tmp_path / "bundle")


def _edit_index(directory, **changes):
    path = directory / INDEX_FILE
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


def _rewrite_part(directory, part, **arrays):
    path = directory / f"{part}.npz"
    with np.load(path) as data:
        contents = {k: data[k] for k in data.files}
    contents.update(arrays)
    for name, value in arrays.items():
        if value is None:
            del contents[name]
    np.savez(path, **contents)


def test_round_trip_keeps_every_array_and_the_meta(saved):
    bundle, directory = saved
    loaded = load_bundle(directory)
    assert loaded.meta == json.loads(json.dumps(bundle.meta))
    assert sorted(loaded.parts) == sorted(bundle.parts)
    for part, arrays in bundle.parts.items():
        assert sorted(loaded.parts[part]) == sorted(arrays)
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded.parts[part][name], array)
            assert loaded.parts[part][name].dtype == array.dtype
    # The arrays of gigabytes have a file each and are read only as they are used.
    mapped = [("attention", n) for n in ("codes", "steps", "exponents", "special")]
    for part, name in (*mapped, ("images", "pixels")):
        assert (directory / f"{part}-{name}.npy").is_file()
        assert isinstance(loaded[part][name], np.memmap)
        assert name not in np.load(directory / f"{part}.npz").files


def test_an_older_bundle_says_what_changed(saved):
    _, directory = saved
    _edit_index(directory, version=2)
    with pytest.raises(
        BundleError,
        match=r"version 2;.*version 4 keeps the small attention weights.*each class's "
        r"specificity.*version 3 keeps every image's attention",
    ):
        load_bundle(directory)


def _as_version_3(directory) -> list[str]:
    """Make a saved bundle one of version 3: no class specificity nor most specific heads."""
    names = [n for n in np.load(directory / "importance.npz").files if n.endswith(CLASS_DERIVED)]
    _rewrite_part(directory, "importance", **dict.fromkeys(names))
    _edit_index(directory, version=3)
    return names


def test_a_version_3_bundle_gains_each_class_s_specific_heads(saved):
    bundle, directory = saved
    names = _as_version_3(directory)
    assert len(names) == 2 * len(METRIC_NAMES)
    loaded = load_bundle(directory)
    # Computed from the per-image importance as the analysis computes them: the same arrays.
    for name in names:
        got, want = loaded["importance"][name], bundle["importance"][name]
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want)
    # The class map (every metric's) shows what it showed from the bundle as written.
    got, want = (class_map_tables(b, list(METRIC_NAMES)) for b in (loaded, bundle))
    assert got["top"] == want["top"]
    for key in (k for k in want["cells"] if k.startswith("spec_")):
        np.testing.assert_array_equal(got["cells"][key], want["cells"][key])
    # A version 3 bundle missing what they are computed from is refused, naming that array.
    _rewrite_part(directory, "importance", kl=None)
    with pytest.raises(BundleError, match="part 'importance' lacks array 'kl'"):
        load_bundle(directory)


def test_a_missing_mapped_array_is_named(saved):
    _, directory = saved
    (directory / "attention-codes.npy").unlink()
    with pytest.raises(BundleError, match="part 'attention' lacks array 'codes'"):
        load_bundle(directory)


def test_a_bundle_of_another_version_is_refused(saved):
    _, directory = saved
    _edit_index(directory, version=BUNDLE_VERSION + 1)
    with pytest.raises(BundleError, match=f"version {BUNDLE_VERSION + 1}"):
        load_bundle(directory)
    # A bundle of the version before the means over images were carried says what to do.
    _edit_index(directory, version=1)
    with pytest.raises(BundleError, match=r"version 1;.*run `jaxvit-interp analyze` again"):
        load_bundle(directory)
    _edit_index(directory, version=BUNDLE_VERSION, format="something-else")
    with pytest.raises(BundleError, match="something-else"):
        load_bundle(directory)


def test_missing_index_part_file_or_array_is_named(saved, tmp_path):
    _, directory = saved
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(tmp_path / "nowhere")
    (directory / "strength.npz").unlink()
    with pytest.raises(BundleError, match="part 'strength'.*strength.npz is missing"):
        load_bundle(directory)


def test_missing_array_is_named(saved):
    _, directory = saved
    _rewrite_part(directory, "importance", kl=None)
    with pytest.raises(BundleError, match="part 'importance' lacks array 'kl'"):
        load_bundle(directory)


@pytest.mark.parametrize(
    "part,name,shape,needle",
    [
        (
            "strength",
            "strength",
            (12, 2, 2, 5),
            r"strength/strength .* axis 3 \(K\) is 5, expected 3",
        ),
        ("importance", "prob", (12, 3, 2), r"importance/prob .* axis 1 \(L\) is 3, expected 2"),
        ("images", "probs", (11, 5), r"images/probs .* axis 0 \(I\) is 11, expected 12"),
        ("attention", "error", (2, 2, 3), r"attention/error .* axis 2 \(H\) is 3, expected 2"),
        ("partial", "prob", (3, 2, 2), r"partial/prob has shape \(3, 2, 2\); expected 4 axes"),
    ],
)
def test_mismatched_shapes_name_the_part_and_array(saved, part, name, shape, needle):
    _, directory = saved
    _rewrite_part(directory, part, **{name: np.zeros(shape, np.float32)})
    with pytest.raises(BundleError, match=needle):
        load_bundle(directory)


def test_subset_sizes_must_agree_within_a_part(saved):
    _, directory = saved
    # image_index says 3 images, the arrays hold 4: the free dimension S_partial disagrees.
    _rewrite_part(directory, "partial", image_index=np.arange(4, dtype=np.int32))
    with pytest.raises(
        BundleError, match="partial/prob .* axis 0 \\(S_partial\\) is 3, expected 4"
    ):
        load_bundle(directory)


def test_class_names_must_match_the_model(saved):
    _, directory = saved
    _edit_index(directory, class_names=["a", "b"])
    with pytest.raises(BundleError, match="class_names lists 2 classes but the model has 5"):
        load_bundle(directory)


def test_corrupt_index_is_named(saved):
    _, directory = saved
    (directory / INDEX_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(directory)


def test_a_version_3_bundle_reads_as_linear_codes(rng, tmp_path):
    """A bundle written before the power code: version 3, no ``attention_code``, linear codes
    of every weight and no exponents, special columns nor relative errors."""
    bundle = make_bundle(
        rng, num_images=6, num_layers=2, num_heads=2, grid=(3, 3), partial_images=2,
        attention_images=3, attention_code=LINEAR,
    )  # fmt: skip
    directory = save_bundle(bundle, tmp_path / "v3")
    index = json.loads((directory / INDEX_FILE).read_text())
    del index["attention_code"]
    (directory / INDEX_FILE).write_text(json.dumps({**index, "version": 3}))
    assert sorted(np.load(directory / "attention.npz").files) == [
        "error",
        "error_max",
        "image_index",
    ]
    loaded = load_bundle(directory)
    assert loaded.attention_code == LINEAR
    stored = loaded["attention"]
    codes, steps = np.asarray(stored["codes"]), np.asarray(stored["steps"])
    np.testing.assert_array_equal(
        decode_stored(stored, loaded.attention_code), codes * steps[..., None]
    )
    # Written again, it is a current bundle that still names its linear code.
    again = load_bundle(save_bundle(loaded, tmp_path / "again"))
    assert json.loads((tmp_path / "again" / INDEX_FILE).read_text())["version"] == BUNDLE_VERSION
    assert again.attention_code == LINEAR


def test_the_attention_code_and_its_arrays_are_checked(saved):
    bundle, directory = saved
    assert bundle.attention_code == POWER
    _edit_index(directory, attention_code="log")
    with pytest.raises(BundleError, match="meta attention_code is 'log'; expected one of"):
        load_bundle(directory)
    _edit_index(directory, attention_code=POWER)
    (directory / "attention-exponents.npy").unlink()
    with pytest.raises(BundleError, match="lacks array 'exponents', which its power code needs"):
        load_bundle(directory)
