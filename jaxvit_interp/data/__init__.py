"""Images in: the bundled digits set and model, image folders, per-family preprocessing."""

from jaxvit_interp.data.images import IMAGE_EXTENSIONS, ImageSet, load_image_folder
from jaxvit_interp.data.preprocess import UnsupportedImageError, preprocess_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "UnsupportedImageError",
    "load_image_folder",
    "preprocess_image",
]
