"""load_image_folder on folders the tests write: formats, labels from subfolders or CSV, skipped
files, and every error. Expected pixels come from the arrays written, not from the loader."""

import csv
import logging

import numpy as np
import pytest
from PIL import Image

from jaxvit_interp.data import images as images_module
from jaxvit_interp.data.images import ImagePairs, ImageSet, load_image_folder, load_image_pairs
from jaxvit_interp.data.labels import LabelError
from jaxvit_interp.model.config import Preprocessing, ViTConfig

SIZE = (8, 12)  # non-square model input, (height, width)


def make_config(image_size=SIZE, channels=3, class_names=("cat", "dog"), **preprocessing):
    """A model of the classes ``class_names`` (or of 3 unnamed classes when None)."""
    preprocessing = {"mean": (0.0,), "std": (1.0,), **preprocessing}  # output = pixels / 255
    return ViTConfig.from_variant(
        "mu/4",
        image_size=image_size,
        channels=channels,
        preprocessing=Preprocessing(**preprocessing),
        num_classes=3 if class_names is None else len(class_names),
        class_names=class_names,
    )


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy % 2**32
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def rand_u8(rng, *shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_rgb(path, pixels, **save_kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_kwargs)
    return pixels


def write_gif(rng, path):
    """Two-frame GIF with its own random palette; returns the first frame's RGB pixels."""
    palette = rand_u8(rng, 256, 3)
    frames = []
    for _ in range(2):
        frame = Image.fromarray(rng.integers(0, 256, size=SIZE, dtype=np.uint8), "P")
        frame.putpalette(palette.reshape(-1).tolist())
        frames.append(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    first = palette[np.asarray(frames[0])]
    assert not np.array_equal(first, palette[np.asarray(frames[1])])
    return first


def build_class_folder(rng, root):
    """Six images, one of each format, in two classes; returns {id: expected RGB uint8}."""
    expected = {
        "cat/a.png": write_rgb(root / "cat/a.png", rand_u8(rng, *SIZE, 3)),
        "cat/g.gif": write_gif(rng, root / "cat/g.gif"),
        "dog/b.bmp": write_rgb(root / "dog/b.bmp", rand_u8(rng, *SIZE, 3)),
        "dog/deep/c.tiff": write_rgb(root / "dog/deep/c.tiff", rand_u8(rng, *SIZE, 3)),
        "dog/d.webp": write_rgb(root / "dog/d.webp", rand_u8(rng, *SIZE, 3), lossless=True),
    }
    write_rgb(root / "cat/e.JPG", rand_u8(rng, *SIZE, 3), format="JPEG", quality=95)
    # JPEG is lossy: what it decodes to, read with Pillow directly, is the expectation.
    expected["cat/e.JPG"] = np.asarray(Image.open(root / "cat/e.JPG").convert("RGB"))
    return expected


def assert_images(result: ImageSet, expected: dict):
    assert result.images.dtype == np.float32
    assert result.images.shape == (len(expected), *SIZE, 3)
    assert result.ids == list(expected)
    for i, rel in enumerate(result.ids):
        np.testing.assert_allclose(result.images[i] * 255.0, expected[rel], atol=1e-3, err_msg=rel)


def test_class_subfolders_every_format(rng, tmp_path):
    expected = build_class_folder(rng, tmp_path)
    result = load_image_folder(tmp_path, make_config(), progress=False)
    order = ["cat/a.png", "cat/e.JPG", "cat/g.gif", "dog/b.bmp", "dog/d.webp", "dog/deep/c.tiff"]
    assert_images(result, {k: expected[k] for k in order})
    assert result.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(result.labels, [0, 0, 0, 1, 1, 1])
    assert result.labels.dtype == np.int32
    assert result.skipped == [] and len(result) == 6


def test_the_models_class_names_fix_the_indices(rng, tmp_path):
    build_class_folder(rng, tmp_path)
    config = make_config(class_names=("dog", "bird", "cat"))
    result = load_image_folder(tmp_path, config, progress=False)
    np.testing.assert_array_equal(result.labels, [2, 2, 2, 0, 0, 0])
    assert result.class_names == ["dog", "bird", "cat"]
    assert result.label_matching.source == "folders"
    assert result.label_matching.how == {"cat": "name", "dog": "name"}
    # Names given beside a config without them do the same.
    given = load_image_folder(
        tmp_path,
        make_config(class_names=None),
        class_names=["dog", "bird", "cat"],
        progress=False,
    )
    np.testing.assert_array_equal(given.labels, result.labels)


def write_csv(path, rows, header=("file", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_labels_agree_with_subfolders(rng, tmp_path):
    root = tmp_path / "images"
    build_class_folder(rng, root)
    by_folder = load_image_folder(root, make_config(), progress=False)
    rows = [(rel, rel.split("/")[0]) for rel in by_folder.ids]
    rng.shuffle(rows)
    by_names = load_image_folder(
        root, make_config(), labels_csv=write_csv(tmp_path / "l.csv", rows), progress=False
    )
    assert by_names.ids == by_folder.ids
    np.testing.assert_array_equal(by_names.labels, by_folder.labels)
    np.testing.assert_array_equal(by_names.images, by_folder.images)
    assert by_names.class_names == ["cat", "dog"]

    # Integer class indices; a "./" prefix names the same file.
    rows = [("./" + rel, str(["cat", "dog"].index(name))) for rel, name in rows]
    by_index = load_image_folder(
        root,
        make_config(),
        labels_csv=write_csv(tmp_path / "i.csv", rows),
        progress=False,
    )
    assert set(by_index.label_matching.how.values()) == {"index"}
    assert by_index.ids == by_folder.ids
    np.testing.assert_array_equal(by_index.labels, by_folder.labels)


def test_csv_integer_labels_of_a_model_without_names_are_class_indices(rng, tmp_path):
    for name in ("x.png", "y.png", "z.png"):
        write_rgb(tmp_path / name, rand_u8(rng, *SIZE, 3))
    csv_path = write_csv(tmp_path / "labels.csv", [("y.png", 2), ("x.png", 0)])
    with pytest.warns(
        UserWarning, match=r"skipped 1 file\(s\).*z.png \(not listed in labels.csv\)"
    ):
        result = load_image_folder(
            tmp_path, make_config(class_names=None), labels_csv=csv_path, progress=False
        )
    assert result.ids == ["x.png", "y.png"]
    np.testing.assert_array_equal(result.labels, [0, 2])
    assert result.class_names == ["0", "1", "2"]
    assert result.skipped == [("z.png", "not listed in labels.csv")]  # the CSV itself is not


def test_csv_extra_columns_and_order_are_accepted(rng, tmp_path):
    write_rgb(tmp_path / "a.png", rand_u8(rng, *SIZE, 3))
    csv_path = write_csv(
        tmp_path / "l.csv", [("cat", "a.png", "note")], header=("Label", "File", "comment")
    )
    result = load_image_folder(tmp_path, make_config(), labels_csv=csv_path, progress=False)
    assert result.class_names == ["cat", "dog"] and result.labels.tolist() == [0]


def test_flat_folder_is_unlabelled_and_hidden_files_are_ignored(rng, tmp_path):
    expected = {n: write_rgb(tmp_path / n, rand_u8(rng, *SIZE, 3)) for n in ("b.png", "a.png")}
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")
    result = load_image_folder(tmp_path, make_config(), progress=False)
    assert_images(result, {k: expected[k] for k in ("a.png", "b.png")})
    assert result.labels is None and result.label_matching is None and result.skipped == []
    assert result.class_names == ["cat", "dog"]  # the model's, whatever the folder holds


def test_bad_files_are_reported_by_name_and_the_rest_load(rng, tmp_path, caplog):
    good = {
        "cat/ok.png": write_rgb(tmp_path / "cat/ok.png", rand_u8(rng, *SIZE, 3)),
        "dog/ok.png": write_rgb(tmp_path / "dog/ok.png", rand_u8(rng, *SIZE, 3)),
    }
    whole = tmp_path / "cat/whole.png"
    write_rgb(whole, rand_u8(rng, 64, 64, 3))  # large enough to have pixel data to cut
    data = whole.read_bytes()
    (tmp_path / "cat/truncated.png").write_bytes(data[: len(data) // 2])
    whole.unlink()
    (tmp_path / "cat/fake.jpg").write_text("not a picture")
    (tmp_path / "dog/empty.png").write_bytes(b"")
    (tmp_path / "dog/notes.txt").write_text("hello")
    write_rgb(tmp_path / "stray.png", rand_u8(rng, *SIZE, 3))
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=r"skipped 5 file"):
        result = load_image_folder(tmp_path, make_config(), progress=False)
    assert_images(result, good)
    np.testing.assert_array_equal(result.labels, [0, 1])
    reasons = dict(result.skipped)
    assert [rel for rel, _ in result.skipped] == [
        "cat/fake.jpg",
        "cat/truncated.png",
        "dog/empty.png",
        "dog/notes.txt",
        "stray.png",
    ]
    assert "cannot identify image file" in reasons["cat/fake.jpg"]
    assert "truncated" in reasons["cat/truncated.png"]
    assert reasons["dog/notes.txt"] == "not an image file extension ('.txt')"
    assert reasons["stray.png"] == "outside any class folder"
    assert "truncated.png" in caplog.text and "notes.txt" in caplog.text


def test_grey_non_square_model_with_resize_and_crop(rng, tmp_path):
    # Shorter side 16, crop 8x16: 8x14 doubles to 16x28 exactly under nearest; crop offsets
    # (16 - 8) / 2 = 4 and (28 - 16) / 2 = 6.
    pixels = write_rgb(tmp_path / "a.png", rand_u8(rng, 8, 14, 3))
    config = make_config((8, 16), channels=1, resize=16, crop=True, resample="nearest")
    result = load_image_folder(tmp_path, config, progress=True)  # not a tty: bar turns itself off
    luma = pixels.repeat(2, 0).repeat(2, 1)[4:12, 6:22] @ np.array([0.299, 0.587, 0.114])
    assert result.images.shape == (1, 8, 16, 1)
    np.testing.assert_allclose(result.images[0, ..., 0] * 255, luma, atol=0.51 + 1e-3)


def test_skips_shrink_the_array(rng, tmp_path):
    write_rgb(tmp_path / "a.png", rand_u8(rng, *SIZE, 3))
    (tmp_path / "b.png").write_text("broken")
    with pytest.warns(UserWarning):
        result = load_image_folder(tmp_path, make_config(), progress=False)
    assert result.images.shape == (1, *SIZE, 3) and result.ids == ["a.png"]


# ---------------------------------------------------------------- errors


def test_missing_folder_or_file_instead_of_folder(tmp_path):
    with pytest.raises(ValueError, match=r"image folder .*nowhere does not exist"):
        load_image_folder(tmp_path / "nowhere", make_config())
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"f.png is not a folder"):
        load_image_folder(tmp_path / "f.png", make_config())


def test_no_images_at_all(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path, make_config())
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images .*readme.txt"):
        load_image_folder(tmp_path, make_config())
    (tmp_path / "bad.png").write_text("x")
    with pytest.raises(ValueError, match=r"could be loaded.*bad.png"):
        load_image_folder(tmp_path, make_config(), progress=False)


def test_bad_preprocessing_is_an_error_not_a_skip(rng, tmp_path):
    write_rgb(tmp_path / "a.png", rand_u8(rng, *SIZE, 3))
    with pytest.raises(ValueError, match="resample 'cubic'"):
        load_image_folder(tmp_path, make_config(resample="cubic"))


@pytest.fixture
def two_images(rng, tmp_path):
    for name in ("a.png", "sub/b.png"):
        write_rgb(tmp_path / name, rand_u8(rng, *SIZE, 3))
    return tmp_path


@pytest.mark.parametrize(
    "rows, kwargs, match",
    [
        (
            [("a.png", "cat"), ("gone.png", "dog"), ("sub/c.png", "dog")],
            {},
            r"names 2 file\(s\) not found .*'gone.png' \(line 3\), 'sub/c.png' \(line 4\)",
        ),
        (
            [("a.png", "cat"), ("sub/b.png", "cow")],
            {},
            r"l.csv:3: label 'cow' is not one of the model's classes",
        ),
        (
            [("a.png", "cat"), ("sub/../a.png", "dog")],
            {},
            r"l.csv:3: file 'sub/../a.png' is listed twice \(first on line 2\)",
        ),
        (
            [("a.png", "5")],
            {},
            r"l.csv:2: label '5' is not one of the model's classes",
        ),
        (
            [("a.png", "-1")],
            {"config": make_config(class_names=None)},
            r"l.csv:2: label '-1' is not a class index 0..2",
        ),
        ([("a.png",)], {}, r"l.csv:2: expected columns file,label"),
        ([("a.png", "")], {}, r"l.csv:2: empty file or label"),
        ([("../a.png", "cat")], {}, r"l.csv:2: file '../a.png' is not inside"),
    ],
)
def test_bad_csv_names_the_line(two_images, rows, kwargs, match):
    csv_path = write_csv(two_images / "l.csv", rows)
    config = kwargs.pop("config", make_config())
    with pytest.raises(ValueError, match=match):
        load_image_folder(two_images, config, labels_csv=csv_path, **kwargs)


def test_csv_without_header_or_missing(two_images):
    csv_path = write_csv(two_images / "l.csv", [("a.png", "cat")], header=None)
    with pytest.raises(ValueError, match=r"header row 'file,label'; its first row is \['a.png'"):
        load_image_folder(two_images, make_config(), labels_csv=csv_path)
    with pytest.raises(ValueError, match=r"labels CSV .*nope.csv does not exist"):
        load_image_folder(two_images, make_config(), labels_csv=two_images / "nope.csv")
    (two_images / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"labels CSV .*empty.csv is empty; it must start with"):
        load_image_folder(two_images, make_config(), labels_csv=two_images / "empty.csv")


def test_class_folder_that_is_no_class_of_the_model(rng, tmp_path):
    build_class_folder(rng, tmp_path)
    with pytest.raises(LabelError, match=r"class folder .*dog: label 'dog' is not one of"):
        load_image_folder(tmp_path, make_config(class_names=("cat", "cow")))
    with pytest.raises(ValueError, match="1 names for a model with 2 classes"):
        load_image_folder(tmp_path, make_config(), class_names=["cat"])


# --------------------------------------------------------------------------------------------
# Image pairs for activation patching.
# --------------------------------------------------------------------------------------------


def test_image_pairs_follow_the_csv(rng, tmp_path):
    """Each row is a pair, in the CSV's order; columns in any order among others; a file may be
    in several pairs."""
    root = tmp_path / "images"
    pixels = {
        name: write_rgb(root / name, rand_u8(rng, *SIZE, 3))
        for name in ("a.png", "sub/b.png", "c.bmp")
    }
    pairs = [("a.png", "sub/b.png"), ("c.bmp", "a.png"), ("sub/b.png", "sub/b.png")]
    csv_path = write_csv(
        tmp_path / "pairs.csv",
        [(corrupted, "note", clean) for clean, corrupted in pairs],
        header=(" Corrupted", "why", "clean"),
    )
    got = load_image_pairs(root, make_config(), csv_path, progress=False)
    assert isinstance(got, ImagePairs) and len(got) == 3
    assert got.clean_ids == [c for c, _ in pairs]
    assert got.corrupted_ids == [k for _, k in pairs]
    for i, (clean, corrupted) in enumerate(pairs):
        np.testing.assert_allclose(got.clean[i], pixels[clean] / 255.0, atol=1e-6)
        np.testing.assert_allclose(got.corrupted[i], pixels[corrupted] / 255.0, atol=1e-6)
    assert repr(got).startswith("ImagePairs: 3 pairs of 8x12x3 images")


@pytest.mark.parametrize(
    "content, match",
    [
        (
            "clean,corrupted\na.png,gone.png\nnope.png,a.png\n",
            r"pairs CSV .*p.csv names 2 file\(s\) not found under .*: 'gone.png' \(line 2\), "
            r"'nope.png' \(line 3\)",
        ),
        (
            "clean,other\na.png,a.png\n",
            r"pairs CSV .*p.csv must start with a header row 'clean,corrupted'; its first row is "
            r"\['clean', 'other'\]",
        ),
        ("", r"pairs CSV .*p.csv is empty; it must start with a header row 'clean,corrupted'"),
        ("clean,corrupted\n\n", r"pairs CSV .*p.csv names no pairs"),
        ("clean,corrupted\na.png,a.png\nsub/b.png\n", r"p.csv:3: expected columns clean,corrupted"),
        ("clean,corrupted\n,a.png\n", r"p.csv:2: empty clean or corrupted in \['', 'a.png'\]"),
        ("clean,corrupted\n../a.png,a.png\n", r"p.csv:2: file '../a.png' is not inside"),
    ],
)
def test_bad_pairs_csv_names_the_file_and_line_before_decoding(
    two_images, monkeypatch, content, match
):
    def no_decoding(*args):
        raise AssertionError("an image was decoded before the CSV was checked")

    monkeypatch.setattr(images_module, "_decode", no_decoding)
    (two_images / "p.csv").write_text(content)
    with pytest.raises(ValueError, match=match):
        load_image_pairs(two_images, make_config(), two_images / "p.csv", progress=False)


def test_pairs_csv_missing_or_naming_an_unreadable_image(two_images):
    with pytest.raises(ValueError, match=r"pairs CSV .*nope.csv does not exist"):
        load_image_pairs(two_images, make_config(), two_images / "nope.csv", progress=False)
    with pytest.raises(ValueError, match=r"image folder .*nowhere does not exist"):
        load_image_pairs(two_images / "nowhere", make_config(), two_images / "p.csv")
    (two_images / "bad.png").write_text("not an image")
    (two_images / "p.csv").write_text("clean,corrupted\na.png,sub/b.png\nsub/b.png,bad.png\n")
    with pytest.raises(ValueError, match=r"p.csv:3: the corrupted image 'bad.png' under .* cannot"):
        load_image_pairs(two_images, make_config(), two_images / "p.csv", progress=False)
