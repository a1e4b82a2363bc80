"""One Pillow image -> one model input ``[H, W, C]`` float32, as a checkpoint family expects it.

The steps, in order (the order timm and torchvision use for evaluation):

1. mode: any Pillow mode -> ``"L"`` (``config.channels == 1``) or ``"RGB"`` (``3``); see
   :func:`to_model_mode` for how alpha, palettes, 16-bit and CMYK are handled;
2. resize: ``preprocessing.resize`` is the shorter side (int, aspect kept), an exact
   ``(height, width)``, or ``None`` for straight to ``config.image_size``;
3. crop: centre crop to ``config.image_size`` when ``preprocessing.crop``;
4. normalise: pixels scaled to [0, 1], then ``(x - mean) / std`` per channel.

EXIF orientation is not applied: torchvision, timm and ``tf.io.decode_jpeg`` ignore it, so a
checkpoint saw its training images in stored pixel order and should see these the same way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import Preprocessing, ViTConfig

__all__ = [
    "UnsupportedImageError",
    "check_preprocessing",
    "crop_box",
    "normalize",
    "preprocess_image",
    "resized_size",
    "to_model_mode",
]

# Pillow's names for 16-bit (and 32-bit integer) single-channel images. A 16-bit PNG or TIFF opens
# as one of the "I;16" modes, or as "I" in older Pillow; either way the values span 0..65535.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_U16_MAX = 65535


class UnsupportedImageError(ValueError):
    """The file decoded, but its pixels cannot be mapped to 8-bit L/RGB without guessing."""


def _resample(name: str) -> Image.Resampling:
    try:
        return Image.Resampling[name.upper()]
    except KeyError:
        options = ", ".join(m.lower() for m in Image.Resampling.__members__)
        raise InputError(
            f"unknown preprocessing.resample {name!r}; expected one of {options}"
        ) from None


def _channel_stats(values: tuple[float, ...], name: str, channels: int) -> np.ndarray:
    """``mean``/``std`` as a ``[C]`` float32 array.

    A length-1 tuple broadcasts. A 3-tuple for a 1-channel model is accepted only when its entries
    agree (the default ``(0.5, 0.5, 0.5)``); otherwise no single grey value is the right one.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == channels:
        return arr.astype(np.float32)
    if arr.size == 1 or (channels == 1 and arr.size > 1 and np.all(arr == arr[0])):
        return np.full((channels,), arr[0], dtype=np.float32)
    raise InputError(
        f"preprocessing.{name} has {arr.size} value(s) {tuple(values)} but the model has "
        f"{channels} channel(s)"
    )


def check_preprocessing(config: ViTConfig) -> None:
    """Raise ``ValueError`` when ``config.preprocessing`` cannot give ``config.image_size`` for
    every input aspect ratio, names an unknown filter, or has bad mean/std.

    Checked once up front so that a config mistake is reported as such, not as a bad image.
    """
    p: Preprocessing = config.preprocessing
    h, w = config.image_size
    if config.channels not in (1, 3):
        raise InputError(f"config.channels must be 1 or 3 for image input, got {config.channels}")
    _resample(p.resample)
    _channel_stats(p.mean, "mean", config.channels)
    std = _channel_stats(p.std, "std", config.channels)
    if np.any(std <= 0):
        raise InputError(f"preprocessing.std must be positive, got {tuple(p.std)}")
    if p.resize is None:
        return
    if isinstance(p.resize, int):
        if p.resize <= 0:
            raise InputError(f"preprocessing.resize must be positive, got {p.resize}")
        if not p.crop:
            raise InputError(
                f"preprocessing.resize={p.resize} (shorter side) without crop gives a size that "
                f"depends on each image's aspect ratio, not image_size {config.image_size}; set "
                "crop=True or resize=None"
            )
        # The shorter side becomes `resize` and the longer side at least that, so this is exactly
        # the condition for the crop to fit whatever the aspect ratio.
        if p.resize < max(h, w):
            raise InputError(
                f"preprocessing.resize={p.resize} (shorter side) is smaller than image_size "
                f"{config.image_size}; the centre crop would not fit"
            )
        return
    rh, rw = p.resize
    if rh <= 0 or rw <= 0:
        raise InputError(f"preprocessing.resize must be positive, got {p.resize}")
    if p.crop and (rh < h or rw < w):
        raise InputError(
            f"preprocessing.resize={tuple(p.resize)} is smaller than image_size "
            f"{config.image_size} on some side; the centre crop would not fit"
        )
    if not p.crop and (rh, rw) != (h, w):
        raise InputError(
            f"preprocessing.resize={tuple(p.resize)} without crop must equal image_size "
            f"{config.image_size}"
        )


def _wide_to_8bit(image: Image.Image) -> Image.Image:
    # Pillow's own convert("L") clips these modes at 255, which turns almost every 16-bit pixel
    # white; scale the full 16-bit range onto 0..255 instead (65535 / 255 = 257 exactly).
    values = np.asarray(image)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > _U16_MAX:
        raise UnsupportedImageError(
            f"mode {image.mode!r} image has values {lo}..{hi}, outside the 16-bit range "
            f"0..{_U16_MAX} that it can be scaled from"
        )
    scaled = np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert ``image`` to mode ``"L"`` (``channels == 1``) or ``"RGB"`` (``channels == 3``).

    - grey -> RGB repeats the value; RGB -> grey is Pillow's ITU-R 601-2 luma.
    - alpha (RGBA, LA, PA, palettes with a transparent index) is composited on white: the colour
      under a transparent pixel is undefined (often black or left-over paint), so dropping alpha
      would show the model hidden pixels no viewer shows; white is the page such images (icons,
      scans, drawn digits) are made to sit on.
    - 16-bit and 32-bit integer grey (``I;16*``, ``I``) is scaled from 0..65535 to 0..255.
    - palette, bilevel, CMYK and YCbCr go through Pillow's conversions.

    Raises:
      UnsupportedImageError: float (``"F"``) images, whose range is not defined by the format, and
        integer images with values outside 0..65535.
    """
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
    target = "L" if channels == 1 else "RGB"
    mode = image.mode
    if mode in _WIDE_INT_MODES:
        image = _wide_to_8bit(image)
    elif mode == "F":
        raise UnsupportedImageError(
            "mode 'F' (32-bit float) image has no defined pixel range to scale from"
        )
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode not in ("1", "L", "RGB", "CMYK", "YCbCr", *_ALPHA_MODES):
        raise UnsupportedImageError(f"image mode {mode!r} is not supported")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode != target:
        image = image.convert(target)
    return image


def resized_size(size_hw: tuple[int, int], config: ViTConfig) -> tuple[int, int]:
    """``(height, width)`` after the resize step, for an input of ``size_hw``.

    Shorter-side resizing truncates the longer side as torchvision's ``Resize(int)`` does, so that
    timm-trained checkpoints see the same geometry they were evaluated with.
    """
    resize = config.preprocessing.resize
    if resize is None:
        return tuple(config.image_size)
    if isinstance(resize, int):
        h, w = size_hw
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(resize * long / short)
        return (new_long, resize) if w <= h else (resize, new_long)
    return (int(resize[0]), int(resize[1]))


def crop_box(size_hw: tuple[int, int], crop_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Centre-crop box ``(left, top, right, bottom)`` of ``crop_hw`` inside ``size_hw``.

    Offsets use Python's ``round`` (half to even) as torchvision's ``center_crop`` does.
    """
    (h, w), (ch, cw) = size_hw, crop_hw
    if ch > h or cw > w:
        raise InputError(f"cannot centre-crop {crop_hw} out of an image of size {size_hw}")
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return (left, top, left + cw, top + ch)


def normalize(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` uint8 -> ``[H, W, C]`` float32 ``(pixels / 255 - mean) / std``."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    return (x - mean) / std


def preprocess_image(image: Image.Image, config: ViTConfig) -> np.ndarray:
    """One Pillow image -> ``[H, W, C]`` float32 model input, ``(H, W) = config.image_size``,
    ``C = config.channels``; see the module docstring for the steps.

    Raises:
      ValueError: the preprocessing cannot produce ``config.image_size`` (see
        :func:`check_preprocessing`).
      UnsupportedImageError: the image's mode has no faithful 8-bit L/RGB form.
    """
    check_preprocessing(config)
    return _preprocess_checked(image, config)


def _preprocess_checked(image: Image.Image, config: ViTConfig) -> np.ndarray:
    """:func:`preprocess_image` without re-validating the config (the folder loader checks once)."""
    p = config.preprocessing
    image = to_model_mode(image, config.channels)
    size_hw = (image.height, image.width)
    new_hw = resized_size(size_hw, config)
    if new_hw != size_hw:
        image = image.resize((new_hw[1], new_hw[0]), resample=_resample(p.resample))
    if p.crop:
        box = crop_box(new_hw, config.image_size)
        if box != (0, 0, new_hw[1], new_hw[0]):
            image = image.crop(box)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    expected = (*config.image_size, config.channels)
    if pixels.shape != expected:  # guarded by check_preprocessing; a failure here is a bug
        raise AssertionError(f"preprocessed shape {pixels.shape} != {expected}")
    mean = _channel_stats(p.mean, "mean", config.channels)
    std = _channel_stats(p.std, "std", config.channels)
    return normalize(pixels, mean, std)


def thumbnails(images: np.ndarray, config: ViTConfig, max_side: int) -> np.ndarray:
    """uint8 thumbnails ``[image, h, w, c]`` of preprocessed images, their pixel range restored.

    The preprocessing's normalisation is undone (``x * std + mean``) and the longest side
    shrunk to at most ``max_side`` pixels (bilinear); images already that small keep their size.
    """
    pre = config.preprocessing
    channels = images.shape[-1]
    mean = np.resize(np.asarray(pre.mean, np.float32), channels)
    std = np.resize(np.asarray(pre.std, np.float32), channels)
    pixels = np.clip((np.asarray(images) * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    h, w = pixels.shape[1:3]
    scale = max_side / max(h, w)
    if scale >= 1:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = []
    for img in pixels:
        pil = Image.fromarray(img[..., 0] if channels == 1 else img)
        small = np.asarray(pil.resize(size, Image.Resampling.BILINEAR))
        out.append(small[..., None] if channels == 1 else small)
    return np.stack(out)
