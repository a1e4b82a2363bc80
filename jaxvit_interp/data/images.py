"""A folder of images (and optional labels) -> one preprocessed ``[B, H, W, C]`` array.

Two ways to give labels:

- class subfolders, ``root/<class>/**/<image>``: each folder name is a label;
- a CSV with a header row ``file,label``: ``file`` is a path relative to ``root``, ``label`` the
  image's label.

Either way each label is matched to one of the *model's* classes, by class name, another
spelling of it, or class index (:mod:`jaxvit_interp.data.labels`); a label that matches none is
an error. With neither, ``root`` holds the images directly and there are no labels.

A file that is not an image, or an image that fails to decode, is reported in
:attr:`ImageSet.skipped` (and by a warning) and the rest load. Mistakes in the request itself (a
missing folder, a CSV naming files that do not exist) raise :class:`~jaxvit_interp.errors.InputError`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import posixpath
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from jaxvit_interp.data.labels import LabelMatching, display_class_names, match_labels
from jaxvit_interp.data.preprocess import _preprocess_checked, check_preprocessing
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.config import ViTConfig
from jaxvit_interp.progress import ProgressArg, start_progress
from jaxvit_interp.storage import atomic_npy, load_npy, page_releaser
from jaxvit_interp.summary import Summarized, listed

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
_SHOWN = 5  # how many skipped files a warning names before summarising the rest
# Images written into a mapped file between two releases of its pages (ViT-B/16: 38 MB).
_RELEASE_EVERY = 64


@dataclasses.dataclass(repr=False)
class ImageSet(Summarized):
    """Images loaded from a folder.

    Attributes:
      images: ``[B, H, W, C]`` float32 model inputs (``(H, W) = config.image_size``).
      labels: ``[B]`` int32 class indices of the model, or ``None`` when the folder has no labels.
      ids: ``B`` paths relative to the folder, ``/``-separated, sorted by path components; the
        ``i``-th belongs to ``images[i]``.
      class_names: the model's class names; for a model without names, the labels when they
        were numbered in sorted order, else the class indices written out.
      skipped: ``(path relative to the folder, reason)`` for every file that was not loaded.
      label_matching: how the folder's or CSV's labels were tied to the model's classes, or
        ``None`` when there are no labels.
    """

    images: np.ndarray
    labels: np.ndarray | None
    ids: list[str]
    class_names: list[str]
    skipped: list[tuple[str, str]]
    label_matching: LabelMatching | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _summary(self):
        height, width, channels = self.images.shape[1:]
        ids = listed(self.ids[:3]) + (", ..." if len(self.ids) > 3 else "")
        rows = [("ids", ids)]
        if self.labels is None:
            rows.append(("labels", "none"))
        else:
            used = np.unique(self.labels)
            shown = listed(self.class_names[c] for c in used[:3]) + (
                ", ..." if len(used) > 3 else ""
            )
            rows.append(
                (
                    "labels",
                    f"{len(used):,} of the model's {len(self.class_names):,} classes: {shown}",
                )
            )
        if self.label_matching is not None and self.label_matching.note:
            rows.append(("note", self.label_matching.note))
        rows.append(("skipped", f"{len(self.skipped):,} file(s)"))
        return f"{len(self):,} images of {height}x{width}x{channels}", rows


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


def _read_labels_csv(csv_path: Path, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Parse ``file,label`` rows -> ``({relative path: label text}, {label text: "file:line"})``."""
    if not csv_path.is_file():
        raise InputError(f"labels CSV {csv_path} does not exist")
    labels: dict[str, str] = {}
    origins: dict[str, str] = {}
    first_line: dict[str, int] = {}
    # utf-8-sig: spreadsheets often save a byte-order mark that would otherwise end up in "file".
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            columns = [c.strip().lower() for c in header] if header else []
            if "file" not in columns or "label" not in columns:
                raise InputError(
                    f"labels CSV {csv_path} must start with a header row 'file,label'; "
                    f"its first row is {header!r}"
                )
            file_col, label_col = columns.index("file"), columns.index("label")
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(file_col, label_col):
                    raise InputError(f"{csv_path}:{line}: expected columns file,label, got {row!r}")
                name, label = row[file_col].strip(), row[label_col].strip()
                if not name or not label:
                    raise InputError(f"{csv_path}:{line}: empty file or label in {row!r}")
                rel = posixpath.normpath(name.replace("\\", "/"))
                if posixpath.isabs(rel) or rel == ".." or rel.startswith("../"):
                    raise InputError(f"{csv_path}:{line}: file {name!r} is not inside {root}")
                if rel in first_line:
                    raise InputError(
                        f"{csv_path}:{line}: file {name!r} is listed twice "
                        f"(first on line {first_line[rel]})"
                    )
                first_line[rel] = line
                labels[rel] = label
                origins.setdefault(label, f"{csv_path}:{line}")
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"labels CSV {csv_path} is not a readable UTF-8 CSV file: {err}") from None

    missing = [(first_line[rel], rel) for rel in labels if not (root / rel).is_file()]
    if missing:
        shown = ", ".join(f"{rel!r} (line {line})" for line, rel in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise InputError(
            f"labels CSV {csv_path} names {len(missing)} file(s) not found under {root}: "
            f"{shown}{more}"
        )
    return labels, origins


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
    progress: ProgressArg = True,
    out: str | os.PathLike | None = None,
) -> ImageSet:
    """Load and preprocess every image under ``root`` for a model with ``config``.

    Args:
      root: the folder. With ``labels_csv`` every image it names is loaded; otherwise
        subfolders are classes (files directly in ``root`` are then skipped), or, with no
        subfolders, the images directly in ``root`` are loaded without labels.  A backbone
        without a classifier (``num_classes == 0``) has no classes: class subfolders only
        say where its images are, and a labels CSV is refused.
      config: gives ``image_size``, ``channels``, ``preprocessing``, ``num_classes`` and the
        model's ``class_names``.
      labels_csv: CSV with header ``file,label`` (other columns ignored); images under ``root``
        it does not list are skipped and reported.
      class_names: the model's class names, when ``config`` does not carry them (a name per
        class, in class-index order).
      progress: report the images as they are decoded
        (:func:`~jaxvit_interp.progress.start_progress`).
      out: a ``.npy`` file to write the images into (replaced atomically), for sets larger than
        memory: ``images`` is then that file, memory-mapped read-only, and only one image at a
        time is ever held in memory. None (the default): ``images`` is an array in memory.

    Returns:
      An :class:`ImageSet`; ``images`` is ``[B, H, W, C]`` float32, ``labels`` the model's
      class indices, ``class_names`` the model's (its indices when it has no names).

    Raises:
      InputError: the folder or CSV is missing, the CSV is malformed (names the line), names a
        file twice or a file that does not exist, the preprocessing cannot give
        ``config.image_size``, or no image could be loaded.
      LabelError: a label is none of the model's classes (see :func:`match_labels`).
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"image folder {root} is not a folder")
    check_preprocessing(config)
    if class_names is None:
        class_names = config.class_names
    elif len(class_names) != config.num_classes:
        raise InputError(
            f"class_names gives {len(class_names)} names for a model with "
            f"{config.num_classes} classes"
        )
    skipped: list[tuple[str, str]] = []
    texts_by_id: dict[str, str] | None
    origins: dict[str, str] = {}
    source = "csv"

    if labels_csv is not None and not config.num_classes:
        raise InputError(
            f"labels CSV {labels_csv} was given for a backbone without a classifier "
            "(num_classes=0): it has no classes to match labels to; attach a linear probe for "
            "the label metrics"
        )
    if labels_csv is not None:
        csv_path = Path(labels_csv)
        texts_by_id, origins = _read_labels_csv(csv_path, root)
        candidates = sorted(texts_by_id, key=_path_key)
        csv_rel = None
        if csv_path.resolve().is_relative_to(root.resolve()):
            csv_rel = csv_path.resolve().relative_to(root.resolve()).as_posix()
        for rel in _walk_files(root, root):
            if rel not in texts_by_id and rel != csv_rel:
                skipped.append((rel, f"not listed in {csv_path.name}"))
    else:
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))
        top_files = [p.name for p in root.iterdir() if p.is_file() and not _is_hidden(p.name)]
        if subdirs:
            source = "folders"
            texts_by_id = {}
            for d in subdirs:
                origins[d] = f"class folder {root / d}"
                for rel in _walk_files(root / d, root):
                    texts_by_id[rel] = d
            candidates = sorted(texts_by_id, key=_path_key)
            skipped += [(f, "outside any class folder") for f in top_files]
        else:
            texts_by_id = None
            candidates = sorted(top_files, key=_path_key)

    # Labels are tied to the model's classes before any image is decoded: a wrong label fails
    # at once, not after minutes of loading.
    matching = None
    if texts_by_id is not None and config.num_classes:
        matching = match_labels(
            list(texts_by_id.values()),
            class_names=class_names,
            num_classes=config.num_classes,
            origins=origins,
            source=source,
        )

    images_to_load = []
    for rel in candidates:
        suffix = PurePosixPath(rel).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            images_to_load.append(rel)
        else:
            skipped.append((rel, f"not an image file extension ({suffix or 'none'!r})"))
    if not images_to_load:
        raise InputError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}"
            + (f"; skipped: {_describe(skipped)}" if skipped else "")
        )

    # One array for the whole set, filled in place: peak memory is the result plus one image
    # (with ``out``, one image: the file's pages are let go of as they are written).
    shape = (*config.image_size, config.channels)
    ids: list[str] = []
    with contextlib.ExitStack() as stack:
        if out is None:
            images = np.empty((len(images_to_load), *shape), dtype=np.float32)
        else:
            images = stack.enter_context(atomic_npy(out, (len(images_to_load), *shape), np.float32))
        release = page_releaser(images) or (lambda: None)
        bar = stack.enter_context(
            start_progress(
                progress,
                total=len(images_to_load),
                desc=f"loading images in {root.name or root}",
                unit="img",
            )
        )
        for rel in images_to_load:
            try:
                images[len(ids)] = _decode(root / rel, config)
            except _DECODE_ERRORS as e:
                skipped.append((rel, f"{type(e).__name__}: {e}"))
            else:
                ids.append(rel)
                if len(ids) % _RELEASE_EVERY == 0:
                    release()
            bar.update(1)
        if out is not None:
            del images  # the mapping is closed before the file is renamed into place

    skipped.sort(key=lambda s: _path_key(s[0]))
    for rel, reason in skipped:
        logger.warning("skipped %s: %s", root / rel, reason)
    if not ids:
        if out is not None:
            Path(out).unlink(missing_ok=True)
        raise InputError(f"no image under {root} could be loaded; skipped: {_describe(skipped)}")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} file(s) under {root}: {_describe(skipped)}", stacklevel=2
        )
    if out is not None:
        images = load_npy(out, "image array")
        if len(ids) < len(images):
            images = _packed(images, out, len(ids))
    elif len(ids) < len(images):
        try:  # shrink in place (no copy) when nothing else holds the buffer
            images.resize((len(ids), *shape), refcheck=True)
        except ValueError:
            images = images[: len(ids)].copy()
    labels = None
    if matching is not None:
        labels = np.asarray([matching.index[texts_by_id[rel]] for rel in ids], dtype=np.int32)
    return ImageSet(
        images=images,
        labels=labels,
        ids=ids,
        class_names=display_class_names(class_names, config.num_classes, matching),
        skipped=skipped,
        label_matching=matching,
    )


def _packed(images: np.ndarray, out: str | os.PathLike, count: int) -> np.ndarray:
    """The first ``count`` images of the mapped file ``out`` (the others failed to decode) as the
    file ``out`` itself, copied a slice at a time."""
    source = page_releaser(images) or (lambda: None)
    with atomic_npy(out, (count, *images.shape[1:]), images.dtype) as packed:
        release = page_releaser(packed) or (lambda: None)
        for at in range(0, count, _RELEASE_EVERY):
            packed[at : min(at + _RELEASE_EVERY, count)] = images[
                at : min(at + _RELEASE_EVERY, count)
            ]
            source()
            release()
    return load_npy(out, "image array")


def _describe(skipped: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{rel} ({reason})" for rel, reason in skipped[:_SHOWN])
    return shown + (f"; and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else "")
