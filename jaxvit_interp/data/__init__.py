"""Images in: the built-in models and their images (digits, shapes), image folders, image
pairs for activation patching, per-family preprocessing."""

from jaxvit_interp.data.images import (
    IMAGE_EXTENSIONS,
    ImagePairs,
    ImageSet,
    load_image_folder,
    load_image_pairs,
)
from jaxvit_interp.data.preprocess import UnsupportedImageError, preprocess_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImagePairs",
    "ImageSet",
    "UnsupportedImageError",
    "load_image_folder",
    "load_image_pairs",
    "preprocess_image",
]
