"""A folder of images (and optional labels) -> one preprocessed ``[B, H, W, C]`` array.

Two ways to give labels:

- class subfolders, ``root/<class>/**/<image>``: the class names are the folder names, sorted
  (or ``class_names`` when given, which fixes the label indices);
- a CSV with a header row ``file,label``: ``file`` is a path relative to ``root``, ``label`` a
  class name or an integer index into the class names.

With neither, ``root`` holds the images directly and there are no labels.

A file that is not an image, or an image that fails to decode, is reported in
:attr:`ImageSet.skipped` (and by a warning) and the rest load. Mistakes in the request itself (a
missing folder, a CSV naming files that do not exist) raise ``ValueError``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import posixpath
import re
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from jaxvit_interp.data.preprocess import _preprocess_checked, check_preprocessing
from jaxvit_interp.model.config import ViTConfig

__all__ = ["IMAGE_EXTENSIONS", "ImageSet", "load_image_folder"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# What Pillow raises for a file it cannot read: unknown format (UnidentifiedImageError is an
# OSError), truncated data (OSError), broken headers (SyntaxError, EOFError, struct.error, and
# ValueError from some plugins, which also covers UnsupportedImageError), oversized images.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    EOFError,
    ValueError,
    struct.error,
    Image.DecompressionBombError,
)
_INDEX = re.compile(r"[+-]?\d+")
_SHOWN = 5  # how many skipped files a warning names before summarising the rest


@dataclasses.dataclass
class ImageSet:
    """Images loaded from a folder.

    Attributes:
      images: ``[B, H, W, C]`` float32 model inputs (``(H, W) = config.image_size``).
      labels: ``[B]`` int32 indices into ``class_names``, or ``None`` when the folder has no labels.
      ids: ``B`` paths relative to the folder, ``/``-separated, sorted by path components; the
        ``i``-th belongs to ``images[i]``.
      class_names: the label names (empty when unlabelled and none were given).
      skipped: ``(path relative to the folder, reason)`` for every file that was not loaded.
    """

    images: np.ndarray
    labels: np.ndarray | None
    ids: list[str]
    class_names: list[str]
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.ids)


def _path_key(rel: str) -> tuple[str, ...]:
    # Component-wise so that "a/b.png" vs "a.b/c.png" orders the same on every OS.
    return PurePosixPath(rel).parts


def _is_hidden(name: str) -> bool:
    # .DS_Store, .ipynb_checkpoints, editor swap files: never meant as data.
    return name.startswith(".")


def _walk_files(top: Path, root: Path) -> list[str]:
    """Non-hidden files under ``top`` (recursively), as ``/``-paths relative to ``root``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if not _is_hidden(name):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return found


def _check_class_names(class_names: Sequence[str] | None) -> list[str] | None:
    if class_names is None:
        return None
    names = [str(n) for n in class_names]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"class_names lists {name!r} more than once")
        seen.add(name)
    return names


def _read_labels_csv(
    csv_path: Path, root: Path, class_names: list[str] | None
) -> tuple[dict[str, int], list[str]]:
    """Parse ``file,label`` rows -> ``({relative path: label index}, class names)``."""
    if not csv_path.is_file():
        raise ValueError(f"labels CSV {csv_path} does not exist")
    rows: list[tuple[int, str, str]] = []  # (line, relative path, label text)
    first_line: dict[str, int] = {}
    # utf-8-sig: spreadsheets often save a byte-order mark that would otherwise end up in "file".
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        columns = [c.strip().lower() for c in header] if header else []
        if "file" not in columns or "label" not in columns:
            raise ValueError(
                f"labels CSV {csv_path} must start with a header row 'file,label'; "
                f"its first row is {header!r}"
            )
        file_col, label_col = columns.index("file"), columns.index("label")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(file_col, label_col):
                raise ValueError(f"{csv_path}:{line}: expected columns file,label, got {row!r}")
            name, label = row[file_col].strip(), row[label_col].strip()
            if not name or not label:
                raise ValueError(f"{csv_path}:{line}: empty file or label in {row!r}")
            rel = posixpath.normpath(name.replace("\\", "/"))
            if posixpath.isabs(rel) or rel == ".." or rel.startswith("../"):
                raise ValueError(f"{csv_path}:{line}: file {name!r} is not inside {root}")
            if rel in first_line:
                raise ValueError(
                    f"{csv_path}:{line}: file {name!r} is listed twice "
                    f"(first on line {first_line[rel]})"
                )
            first_line[rel] = line
            rows.append((line, rel, label))

    missing = [(line, rel) for line, rel, _ in rows if not (root / rel).is_file()]
    if missing:
        shown = ", ".join(f"{rel!r} (line {line})" for line, rel in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise ValueError(
            f"labels CSV {csv_path} names {len(missing)} file(s) not found under {root}: "
            f"{shown}{more}"
        )

    labels: dict[str, int] = {}
    if class_names is not None:
        index_of = {n: i for i, n in enumerate(class_names)}
        for line, rel, label in rows:
            # A listed name wins over reading it as a number, so class "3" in digits is class "3".
            if label in index_of:
                labels[rel] = index_of[label]
            elif _INDEX.fullmatch(label):
                i = int(label)
                if not 0 <= i < len(class_names):
                    raise ValueError(
                        f"{csv_path}:{line}: label index {i} is out of range for "
                        f"{len(class_names)} class names"
                    )
                labels[rel] = i
            else:
                raise ValueError(
                    f"{csv_path}:{line}: unknown class {label!r}; class_names are {class_names}"
                )
        return labels, class_names

    if all(_INDEX.fullmatch(label) for _, _, label in rows):
        for line, rel, label in rows:
            if int(label) < 0:
                raise ValueError(f"{csv_path}:{line}: label index {label} is negative")
            labels[rel] = int(label)
        # Placeholder names keep class_names[label] valid for every label.
        return labels, [str(i) for i in range(max(labels.values(), default=-1) + 1)]
    names = sorted({label for _, _, label in rows})
    index_of = {n: i for i, n in enumerate(names)}
    return {rel: index_of[label] for _, rel, label in rows}, names


def _decode(path: Path, config: ViTConfig) -> np.ndarray:
    with Image.open(path) as image:
        image.seek(0)  # first frame of an animated GIF / WebP / multi-page TIFF
        image.load()  # decode now, so truncated data fails here and not later
        return _preprocess_checked(image, config)


def load_image_folder(
    root: str | os.PathLike,
    config: ViTConfig,
    *,
    labels_csv: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
) -> ImageSet:
    """Load and preprocess every image under ``root`` for a model with ``config``.

    Args:
      root: the folder. With ``labels_csv`` every image it names is loaded; otherwise
        subfolders are classes (files directly in ``root`` are then skipped), or, with no
        subfolders, the images directly in ``root`` are loaded without labels.
      config: gives ``image_size``, ``channels`` and ``preprocessing``.
      labels_csv: CSV with header ``file,label`` (other columns ignored); images under ``root``
        it does not list are skipped and reported.
      class_names: fixes the names and their order (label ``i`` is ``class_names[i]``);
        subfolders or CSV labels outside it raise. Without it, names are the sorted subfolder
        names, the sorted CSV names, or ``"0" .. "max"`` for integer CSV labels.
      progress: show a tqdm bar (only on a terminal).

    Returns:
      An :class:`ImageSet`; ``images`` is ``[B, H, W, C]`` float32.

    Raises:
      ValueError: the folder or CSV is missing, the CSV is malformed (names the line), names a
        file twice or a file that does not exist, a label is unknown, the preprocessing cannot
        give ``config.image_size``, or no image could be loaded.
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"image folder {root} is not a folder")
    check_preprocessing(config)
    names = _check_class_names(class_names)
    skipped: list[tuple[str, str]] = []
    labels_by_id: dict[str, int] | None

    if labels_csv is not None:
        csv_path = Path(labels_csv)
        labels_by_id, names = _read_labels_csv(csv_path, root, names)
        candidates = sorted(labels_by_id, key=_path_key)
        csv_rel = None
        if csv_path.resolve().is_relative_to(root.resolve()):
            csv_rel = csv_path.resolve().relative_to(root.resolve()).as_posix()
        listed = set(labels_by_id)
        for rel in _walk_files(root, root):
            if rel not in listed and rel != csv_rel:
                skipped.append((rel, f"not listed in {csv_path.name}"))
    else:
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
        top_files = [p.name for p in root.iterdir() if p.is_file() and not _is_hidden(p.name)]
        if subdirs:
            if names is None:
                names = subdirs
            else:
                unknown = [d for d in subdirs if d not in names]
                if unknown:
                    raise ValueError(
                        f"class folder(s) {unknown} under {root} are not in class_names {names}"
                    )
            index_of = {n: i for i, n in enumerate(names)}
            labels_by_id = {}
            for d in subdirs:
                for rel in _walk_files(root / d, root):
                    labels_by_id[rel] = index_of[d]
            candidates = sorted(labels_by_id, key=_path_key)
            skipped += [(f, "outside any class folder") for f in top_files]
        else:
            labels_by_id = None
            names = names or []
            candidates = sorted(top_files, key=_path_key)

    images_to_load = []
    for rel in candidates:
        suffix = PurePosixPath(rel).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            images_to_load.append(rel)
        else:
            skipped.append((rel, f"not an image file extension ({suffix or 'none'!r})"))
    if not images_to_load:
        raise ValueError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}"
            + (f"; skipped: {_describe(skipped)}" if skipped else "")
        )

    # One array for the whole set, filled in place: peak memory is the result plus one image.
    shape = (*config.image_size, config.channels)
    images = np.empty((len(images_to_load), *shape), dtype=np.float32)
    ids: list[str] = []
    bar = tqdm(
        images_to_load,
        desc=f"images in {root.name or root}",
        unit="img",
        disable=None if progress else True,  # None: tqdm turns itself off when not on a tty
    )
    for rel in bar:
        try:
            images[len(ids)] = _decode(root / rel, config)
        except _DECODE_ERRORS as e:
            skipped.append((rel, f"{type(e).__name__}: {e}"))
            continue
        ids.append(rel)
    bar.close()

    skipped.sort(key=lambda s: _path_key(s[0]))
    for rel, reason in skipped:
        logger.warning("skipped %s: %s", root / rel, reason)
    if not ids:
        raise ValueError(f"no image under {root} could be loaded; skipped: {_describe(skipped)}")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} file(s) under {root}: {_describe(skipped)}", stacklevel=2
        )
    if len(ids) < len(images):
        try:  # shrink in place (no copy) when nothing else holds the buffer
            images.resize((len(ids), *shape), refcheck=True)
        except ValueError:
            images = images[: len(ids)].copy()
    labels = None
    if labels_by_id is not None:
        labels = np.asarray([labels_by_id[rel] for rel in ids], dtype=np.int32)
    return ImageSet(images=images, labels=labels, ids=ids, class_names=list(names), skipped=skipped)


def _describe(skipped: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{rel} ({reason})" for rel, reason in skipped[:_SHOWN])
    return shown + (f"; and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else "")
