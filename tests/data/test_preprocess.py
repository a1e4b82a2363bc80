"""preprocess_image: mode conversion, resize/crop geometry and normalisation, checked against numpy
expectations built from the pixels each test writes."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxvit_interp.data.preprocess import (
    UnsupportedImageError,
    check_preprocessing,
    crop_box,
    preprocess_image,
    resized_size,
    to_model_mode,
)
from jaxvit_interp.model.config import Preprocessing, ViTConfig

# mean 0, std 1: the output is pixels / 255, so expectations can be written in 8-bit levels.
IDENTITY = dict(mean=(0.0,), std=(1.0,))


def make_config(image_size=(8, 12), channels=3, **preprocessing):
    return ViTConfig.from_variant(
        "mu/4",
        image_size=image_size,
        channels=channels,
        preprocessing=Preprocessing(**preprocessing),
    )


def levels(x):
    """Model input made with IDENTITY normalisation -> float 8-bit levels."""
    return np.asarray(x, dtype=np.float64) * 255.0


@pytest.fixture
def rng(request):
    # Fresh pixels every run; the seed is printed on failure so a failure can be replayed.
    seed = np.random.SeedSequence().entropy % 2**32
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def rand_u8(rng, *shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------- normalisation


def test_normalisation_matches_formula_per_channel(rng):
    pixels = rand_u8(rng, 8, 12, 3)
    mean = tuple(rng.uniform(0.2, 0.7, 3))
    std = tuple(rng.uniform(0.1, 0.5, 3))
    out = preprocess_image(Image.fromarray(pixels), make_config(mean=mean, std=std))
    expected = (pixels / 255.0 - np.asarray(mean)) / np.asarray(std)
    assert out.dtype == np.float32 and out.shape == (8, 12, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_default_inception_preprocessing_spans_minus_one_to_one():
    pixels = np.array([[0, 255, 51, 204]], dtype=np.uint8).repeat(4, 0)
    out = preprocess_image(Image.fromarray(pixels), make_config((4, 4), channels=1))
    np.testing.assert_allclose(out[0, :, 0], [-1.0, 1.0, -0.6, 0.6], atol=1e-6)


def test_grey_model_accepts_uniform_three_value_stats_but_not_distinct_ones(rng):
    pixels = rand_u8(rng, 8, 12)
    out = preprocess_image(Image.fromarray(pixels), make_config(channels=1))  # (0.5,) * 3
    np.testing.assert_allclose(out[..., 0], pixels / 127.5 - 1.0, atol=1e-6)
    imagenet = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with pytest.raises(ValueError, match=r"mean has 3 value\(s\).*1 channel"):
        check_preprocessing(make_config(channels=1, **imagenet))


# ---------------------------------------------------------------- geometry


def test_resize_straight_to_non_square_size_is_whole_pixel_repeat(rng):
    # 4x4 -> 8x12 with nearest is exactly 2x rows and 3x columns; a (w, h) swap would show.
    pixels = rand_u8(rng, 4, 4, 3)
    out = preprocess_image(Image.fromarray(pixels), make_config(resample="nearest", **IDENTITY))
    expected = pixels.repeat(2, axis=0).repeat(3, axis=1)
    np.testing.assert_allclose(levels(out), expected, atol=1e-3)


@pytest.mark.parametrize(
    "shape, top, left",
    [
        ((10, 15), 2, 5),  # landscape: resized to 20x30, crop 16x20
        ((15, 10), 7, 0),  # portrait: resized to 30x20
    ],
)
def test_shorter_side_resize_then_centre_crop(rng, shape, top, left):
    pixels = rand_u8(rng, *shape, 3)
    config = make_config((16, 20), resize=20, crop=True, resample="nearest", **IDENTITY)
    out = preprocess_image(Image.fromarray(pixels), config)
    doubled = pixels.repeat(2, axis=0).repeat(2, axis=1)
    np.testing.assert_allclose(levels(out), doubled[top : top + 16, left : left + 20], atol=1e-3)


def test_resized_size_truncates_long_side_like_torchvision():
    # torchvision Resize(20): long side = int(20 * long / short); 20 * 49 / 30 = 32.67 -> 32.
    config = make_config((16, 20), resize=20, crop=True)
    assert resized_size((30, 49), config) == (20, 32)
    assert resized_size((49, 30), config) == (32, 20)
    assert resized_size((25, 25), config) == (20, 20)
    assert resized_size((7, 3), make_config((8, 12))) == (8, 12)
    assert resized_size((7, 3), make_config((8, 12), resize=(9, 14), crop=True)) == (9, 14)


def test_crop_offsets_round_half_to_even_like_torchvision():
    # (21 - 16) / 2 = 2.5 -> 2, (33 - 24) / 2 = 4.5 -> 4, 3.5 -> 4.
    assert crop_box((21, 33), (16, 24)) == (4, 2, 28, 18)
    assert crop_box((23, 31), (16, 24)) == (4, 4, 28, 20)
    assert crop_box((16, 24), (16, 24)) == (0, 0, 24, 16)
    with pytest.raises(ValueError, match="cannot centre-crop"):
        crop_box((15, 24), (16, 24))


def test_exact_resize_then_crop_is_numpy_slice(rng):
    pixels = rand_u8(rng, 23, 31, 3)
    config = make_config((16, 24), resize=(23, 31), crop=True, **IDENTITY)  # resize is a no-op
    out = preprocess_image(Image.fromarray(pixels), config)
    np.testing.assert_allclose(levels(out), pixels[4:20, 4:28], atol=1e-3)


@pytest.mark.parametrize("resample", ["bilinear", "bicubic", "lanczos"])
def test_filtered_resize_uses_named_filter_and_width_height_order(rng, resample):
    pixels = rand_u8(rng, 13, 17, 3)
    out = preprocess_image(Image.fromarray(pixels), make_config(resample=resample, **IDENTITY))
    filt = Image.Resampling[resample.upper()]
    direct = np.asarray(Image.fromarray(pixels).resize((12, 8), filt))
    np.testing.assert_allclose(levels(out), direct, atol=1e-3)
    other = Image.Resampling.NEAREST
    assert not np.allclose(levels(out), np.asarray(Image.fromarray(pixels).resize((12, 8), other)))


# ---------------------------------------------------------------- modes


def test_grey_to_rgb_repeats_value(rng):
    pixels = rand_u8(rng, 8, 12)
    out = preprocess_image(Image.fromarray(pixels, "L"), make_config(**IDENTITY))
    for c in range(3):
        np.testing.assert_allclose(levels(out[..., c]), pixels, atol=1e-3)


def test_rgb_to_grey_is_itu_601_luma(rng):
    pixels = rand_u8(rng, 8, 12, 3)
    out = preprocess_image(Image.fromarray(pixels), make_config(channels=1, **IDENTITY))
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    assert out.shape == (8, 12, 1)
    np.testing.assert_allclose(levels(out[..., 0]), luma, atol=0.51 + 1e-3)


def test_bilevel_becomes_black_and_white(rng):
    bits = rng.integers(0, 2, size=(8, 12)).astype(bool)
    out = preprocess_image(Image.fromarray(bits), make_config(channels=1, **IDENTITY))
    np.testing.assert_allclose(levels(out[..., 0]), np.where(bits, 255, 0), atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
def test_rgba_is_composited_on_white(rng, channels):
    rgba = rand_u8(rng, 8, 12, 4)
    rgba[0, :, 3] = 0  # fully transparent row: hidden colour must not show
    rgba[1, :, 3] = 255
    a = rgba[..., 3:] / 255.0
    over_white = rgba[..., :3] * a + 255.0 * (1 - a)
    out = preprocess_image(
        Image.fromarray(rgba, "RGBA"), make_config(channels=channels, **IDENTITY)
    )
    if channels == 1:
        over_white = over_white @ np.array([0.299, 0.587, 0.114])
        out = out[..., 0]
    np.testing.assert_allclose(levels(out), over_white, atol=1.51)
    np.testing.assert_allclose(levels(out[0]), 255.0, atol=1e-3)


def test_grey_alpha_is_composited_on_white(rng):
    la = rand_u8(rng, 8, 12, 2)
    a = la[..., 1] / 255.0
    expected = la[..., 0] * a + 255.0 * (1 - a)
    out = preprocess_image(Image.fromarray(la, "LA"), make_config(channels=1, **IDENTITY))
    np.testing.assert_allclose(levels(out[..., 0]), expected, atol=1.01)


def png_roundtrip(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    buf.seek(0)
    reopened = Image.open(buf)
    reopened.load()
    return reopened


@pytest.mark.parametrize("how", ["I;16 png", "I;16B", "I"])
@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_grey_is_scaled_not_clipped(rng, how, channels):
    values = rng.integers(0, 65536, size=(8, 12), dtype=np.uint16)
    values[0, :3] = [0, 65535, 32768]
    if how == "I;16 png":
        image = png_roundtrip(Image.fromarray(values))
        assert image.mode in ("I;16", "I")
    elif how == "I;16B":
        image = Image.fromarray(values.astype(">u2"))
        assert image.mode == "I;16B"
    else:
        image = Image.fromarray(values.astype(np.int32), "I")
    out = preprocess_image(image, make_config(channels=channels, **IDENTITY))
    expected = np.rint(values / 257.0)  # 65535 -> 255
    for c in range(channels):
        np.testing.assert_allclose(levels(out[..., c]), expected, atol=1e-3)
    np.testing.assert_allclose(levels(out[0, :3, 0]), [0, 255, 128], atol=1e-3)


def test_integer_image_outside_sixteen_bit_and_float_images_are_unsupported():
    wide = Image.fromarray(np.full((4, 4), 70000, dtype=np.int32), "I")
    with pytest.raises(UnsupportedImageError, match="70000"):
        to_model_mode(wide, 3)
    with pytest.raises(UnsupportedImageError, match="'F'"):
        to_model_mode(Image.new("F", (4, 4)), 3)


def random_palette_image(rng, shape):
    palette = rand_u8(rng, 256, 3)
    index = rng.integers(0, 256, size=shape, dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.reshape(-1).tolist())
    return image, palette, index


def test_palette_is_looked_up(rng):
    image, palette, index = random_palette_image(rng, (8, 12))
    out = preprocess_image(png_roundtrip(image), make_config(**IDENTITY))
    np.testing.assert_allclose(levels(out), palette[index], atol=1e-3)


def test_palette_transparent_index_becomes_white(rng):
    image, palette, index = random_palette_image(rng, (8, 12))
    clear = int(index[0, 0])
    image.info["transparency"] = clear
    out = preprocess_image(png_roundtrip(image), make_config(**IDENTITY))
    expected = np.where((index == clear)[..., None], 255, palette[index])
    np.testing.assert_allclose(levels(out), expected, atol=1e-3)


def test_cmyk_jpeg_uses_standard_cmyk_formula(rng):
    # Flat 8x8 blocks so JPEG at quality 100 keeps each block's colour to within a level or two.
    blocks = rand_u8(rng, 2, 3, 4)
    cmyk = blocks.repeat(8, axis=0).repeat(8, axis=1)
    buf = io.BytesIO()
    Image.fromarray(cmyk, "CMYK").save(buf, format="JPEG", quality=100)
    buf.seek(0)
    image = Image.open(buf)
    assert image.mode == "CMYK"
    out = preprocess_image(image, make_config((16, 24), **IDENTITY))
    c = cmyk.astype(np.float64) / 255.0
    expected = 255.0 * (1 - c[..., :3]) * (1 - c[..., 3:])
    np.testing.assert_allclose(levels(out), expected, atol=4)


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(resample="sinc"), "unknown preprocessing.resample 'sinc'"),
        (dict(mean=(0.5, 0.5)), r"mean has 2 value\(s\)"),
        (dict(std=(0.5, 0.0, 0.5)), "std must be positive"),
        (dict(resize=10, crop=True), r"resize=10 .* smaller than image_size \(8, 12\)"),
        (dict(resize=12), "without crop gives a size that depends"),
        (dict(resize=(8, 11), crop=True), "smaller than image_size"),
        (dict(resize=(9, 12)), r"without crop must equal image_size \(8, 12\)"),
        (dict(resize=0, crop=True), "must be positive"),
    ],
)
def test_bad_preprocessing_is_rejected_naming_the_value(kwargs, match):
    config = make_config(**kwargs)
    with pytest.raises(ValueError, match=match):
        preprocess_image(Image.new("RGB", (12, 8)), config)


def test_shortest_side_that_fits_every_aspect_is_accepted():
    check_preprocessing(make_config((8, 12), resize=12, crop=True))
    check_preprocessing(make_config((8, 12), resize=(8, 12)))
    check_preprocessing(make_config((8, 12), resize=None, crop=True))
