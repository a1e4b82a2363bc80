"""Per-image records: everything the page shows about one chosen image, in one script each.

The page's tables hold what every view needs at once (values over all images, the images' names
and positions, small thumbnails). What only the chosen image needs (its per-head importance,
strength and pattern positions, its partial pruning, its attention matrices and its pixels at
the model's input resolution) is one record per image, written as a script that calls the page's
registration function::

    jaxvitRecord(123, {"values": {"importance/prob": "<base64>", ...},
                       "attention": ["<base64 of deflate(steps float32 | exponents uint8 |
                                                         special float16 | codes uint8)>", ...],
                       "pixels": "data:image/jpeg;base64,..."})

Scripts work from ``file://`` (where Chromium refuses ``fetch``) and from any static host, and
need no server. A single-file site carries its records inline, after the views; a folder site
keeps each in ``data-<build>/images/000123.js`` and the page adds a ``<script>`` tag for it when
the image is chosen.

Encodings: ``values`` are little-endian float32 or int32 arrays in base64, laid out as the bundle
lays them out without the image dimension; ``attention`` is the bundle's own row steps and
exponents, special tokens' columns and 8-bit codes (:func:`attention_record`;
:mod:`jaxvit_interp.attention_codes`: the linear codes of a version-3 bundle have no exponents
nor special columns, and the page decodes each by the rule its ``info.attention_code`` names),
deflated (the browser inflates them with ``DecompressionStream``), in base64 pieces of at most
:data:`ATTENTION_PIECE_BYTES` deflated bytes; ``pixels`` is a JPEG (quality
:data:`PIXELS_QUALITY`) that the browser decodes natively.
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxvit_interp.attention_codes import POWER
from jaxvit_interp.bundle import ResultsBundle
from jaxvit_interp.quantities import CLASS_ARRAYS, METRIC_NAMES, SCHEMA

# The leading dimensions of arrays with one entry per image (or per image of a subset).
IMAGE_DIMS = ("I", "S_partial", "S_attention")
# Per-image arrays that stay in the page's tables: the images entity draws them all at once.
IN_TABLES = {("images", "labels"), ("images", "predictions"), ("images", "overview")}
# Arrays no view shows as they are; a bundle keeps them for other readers. The per-class arrays
# (7 x C x L x H values each, 4 MB for ImageNet's 1,000 classes and ViT-B) reach the page only
# as the rows of the classes view E's class map shows (site.views.head_sets.class_map_tables).
# The subset indices become each image's rows in the images table.
NOT_SHOWN = {
    ("images", "probs"),
    ("images", "thumbnails"),
    ("images", "pixels"),
    ("importance", "class_counts"),
    ("partial", "image_index"),
    ("attention", "image_index"),
    ("attention", "codes"),
    ("attention", "steps"),
    ("attention", "exponents"),
    ("attention", "special"),
    # The Shapley stage's subset and its two numbers, which B4's note states (info["shapley"]).
    ("shapley", "image_index"),
    ("shapley", "v_all"),
    ("shapley", "permutations"),
    # The explanations stage's subset and the labels it followed, which view F's facts carry
    # (info["explanations"]), and every head's area per image: F shows their mean.
    ("explanations", "image_index"),
    ("explanations", "labels"),
    ("explanations", "head_area"),
    # The patching stage's patched p(y) per pair and head: B5 shows the scores (the means over
    # the pairs, or a chosen pair's), and the title each pair's unpatched p(y).
    ("patching", "denoising_prob"),
    ("patching", "noising_prob"),
    *(("importance", f"{m}_class_{what}") for m in METRIC_NAMES for what in CLASS_ARRAYS),
    # The same of each further ablation kind's metrics and of the direct attribution.
    *(("importance", name) for name in SCHEMA["importance"] if "_class_" in name),
}
ATTENTION_DEFLATE_LEVEL = 6  # level 9 saves 4% more at eight times the build time
# A record's attention is base64 in pieces of this many deflated bytes (a multiple of 3, so each
# piece decodes alone): the browser parses a script's one 100 MB string (a 1,374-token model's
# attention) in seconds, and the same bytes in pieces of a few MB ten times faster.
ATTENTION_PIECE_BYTES = 3 << 20
PIXELS_QUALITY = 90
FILE_DIGITS = 6
REGISTER = "jaxvitRecord"

# Defined before anything else on the page: inline records and record files call it. The page's
# code (js/update.js) decodes a registered record when its image is chosen.
REGISTRY_SCRIPT = f"""<script>
window.jaxvitRecords = {{raw: new Map(), decoded: new Map(), pending: 0}};
window.{REGISTER} = function (image, record) {{ window.jaxvitRecords.raw.set(image, record); }};
</script>
"""


def record_arrays(bundle: ResultsBundle) -> list[tuple[str, str]]:
    """``(part, name)`` of every bundle array that records carry in ``values``."""
    keys = []
    for part, arrays in bundle.parts.items():
        for name in arrays:
            dims = SCHEMA[part][name]
            per_image = bool(dims) and dims[0] in IMAGE_DIMS  # a single number has no dims
            if per_image and (part, name) not in IN_TABLES | NOT_SHOWN:
                keys.append((part, name))
    return keys


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _dtype(array: np.ndarray) -> np.dtype:
    return np.dtype("<i4") if np.asarray(array).dtype.kind in "iub" else np.dtype("<f4")


def record_layout(bundle: ResultsBundle) -> dict[str, Any]:
    """What the page needs to read records: each array's dimensions (without the image's) and
    type."""
    return {
        f"{part}/{name}": {
            "dims": list(SCHEMA[part][name][1:]),
            "dtype": "int32" if _dtype(bundle[part][name]).kind == "i" else "float32",
        }
        for part, name in record_arrays(bundle)
    }


def jpeg_data_url(pixels: np.ndarray, quality: int = PIXELS_QUALITY) -> str:
    """``[h, w, c]`` uint8 pixels (c = 1 or 3) as a ``data:image/jpeg`` URL."""
    from PIL import Image

    pixels = np.asarray(pixels, np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., :3])
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def record_script(
    bundle: ResultsBundle,
    image: int,
    *,
    partial_row: int,
    attention_row: int,
    keys: list[tuple[str, str]],
) -> str:
    """The script that registers image ``image``'s record (rows: its row in each subset, or -1)."""
    values = {}
    rows = {"I": image, "S_partial": partial_row, "S_attention": attention_row}
    for part, name in keys:
        row = rows[SCHEMA[part][name][0]]
        if row < 0:
            continue
        array = bundle[part][name]
        values[f"{part}/{name}"] = _b64(np.asarray(array[row]).astype(_dtype(array)))
    record: dict[str, Any] = {"values": values}
    if attention_row >= 0:
        record["attention"] = attention_record(
            bundle["attention"], bundle.attention_code, attention_row
        )
    if "pixels" in bundle["images"]:
        record["pixels"] = jpeg_data_url(bundle["images"]["pixels"][image])
    return f"{REGISTER}({int(image)},{json.dumps(record, separators=(',', ':'))});\n"


def attention_record(stored: Mapping[str, np.ndarray], code: str, index=()) -> list[str]:
    """The attention a record carries: the arrays of ``stored`` (a bundle's ``attention`` part,
    or :func:`~jaxvit_interp.attention_codes.encode_attention`'s output) at ``index`` as
    ``deflate(steps float32 | exponents uint8 | special float16 | codes uint8)``, little-endian
    (linear codes: ``steps | codes``), in base64 pieces of :data:`ATTENTION_PIECE_BYTES`."""
    names = ("steps", "exponents", "special", "codes") if code == POWER else ("steps", "codes")
    dtypes = {"steps": "<f4", "exponents": np.uint8, "special": "<f2", "codes": np.uint8}
    blob = b"".join(np.asarray(stored[name][index], dtypes[name]).tobytes() for name in names)
    packed = zlib.compress(blob, ATTENTION_DEFLATE_LEVEL)
    return [
        base64.b64encode(packed[at : at + ATTENTION_PIECE_BYTES]).decode("ascii")
        for at in range(0, len(packed), ATTENTION_PIECE_BYTES)
    ]


def record_name(image: int) -> str:
    """The file of image ``image``'s record inside a folder site's ``images`` folder."""
    return f"{image:0{FILE_DIGITS}d}.js"
