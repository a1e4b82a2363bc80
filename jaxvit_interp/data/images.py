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

Pairs of images for activation patching (:func:`load_image_pairs`) come from a CSV with a header
row ``clean,corrupted``, each further row one pair of paths relative to the folder; there a
file that is missing or fails to decode is an error naming the CSV's line, since the pairs
would no longer line up without it.
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

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImagePairs",
    "ImageSet",
    "load_image_folder",
    "load_image_pairs",
    "pair_positions",
    "read_pairs_csv",
]

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


def _check_folder(root: Path) -> None:
    """Refuse an image folder that is missing or not a folder."""
    if not root.exists():
        raise InputError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"image folder {root} is not a folder")


def _read_csv(csv_path: Path, columns: tuple[str, ...], what: str) -> list[tuple[int, list[str]]]:
    """The rows of a CSV whose header row names ``columns`` (in any order, among others):
    ``[(line, [value of each column])]``, values stripped, blank rows left out; ``what`` (e.g.
    ``"labels CSV"``) names the file in errors, which name its line."""
    if not csv_path.is_file():
        raise InputError(f"{what} {csv_path} does not exist")
    header_row = ",".join(columns)
    rows = []
    # utf-8-sig: spreadsheets often save a byte-order mark that would otherwise end up in a name.
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputError(
                    f"{what} {csv_path} is empty; it must start with a header row '{header_row}'"
                )
            names = [c.strip().lower() for c in header]
            if any(c not in names for c in columns):
                raise InputError(
                    f"{what} {csv_path} must start with a header row '{header_row}'; "
                    f"its first row is {header!r}"
                )
            index = [names.index(c) for c in columns]
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(index):
                    raise InputError(
                        f"{csv_path}:{line}: expected columns {header_row}, got {row!r}"
                    )
                values = [row[i].strip() for i in index]
                if not all(values):
                    raise InputError(f"{csv_path}:{line}: empty {' or '.join(columns)} in {row!r}")
                rows.append((line, values))
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{what} {csv_path} is not a readable UTF-8 CSV file: {err}") from None
    return rows


def _inside(name: str, root: Path, csv_path: Path, line: int) -> str:
    """A CSV's file ``name`` as a ``/``-path relative to ``root``; refused when it leaves it."""
    rel = posixpath.normpath(name.replace("\\", "/"))
    if posixpath.isabs(rel) or rel == ".." or rel.startswith("../"):
        raise InputError(f"{csv_path}:{line}: file {name!r} is not inside {root}")
    return rel


def _refuse_missing(named: list[tuple[int, str]], root: Path, csv_path: Path, what: str) -> None:
    """Refuse the CSV's ``(line, relative path)`` entries that are no file under ``root``, naming
    each with its line."""
    missing = [(line, rel) for line, rel in named if not (root / rel).is_file()]
    if missing:
        shown = ", ".join(f"{rel!r} (line {line})" for line, rel in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise InputError(
            f"{what} {csv_path} names {len(missing)} file(s) not found under {root}: {shown}{more}"
        )


def _read_labels_csv(csv_path: Path, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Parse ``file,label`` rows -> ``({relative path: label text}, {label text: "file:line"})``."""
    labels: dict[str, str] = {}
    origins: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, (name, label) in _read_csv(csv_path, ("file", "label"), "labels CSV"):
        rel = _inside(name, root, csv_path, line)
        if rel in first_line:
            raise InputError(
                f"{csv_path}:{line}: file {name!r} is listed twice "
                f"(first on line {first_line[rel]})"
            )
        first_line[rel] = line
        labels[rel] = label
        origins.setdefault(label, f"{csv_path}:{line}")
    _refuse_missing([(first_line[rel], rel) for rel in labels], root, csv_path, "labels CSV")
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
    _check_folder(root)
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


@dataclasses.dataclass(repr=False)
class ImagePairs(Summarized):
    """Clean and corrupted images paired by the rows of a CSV (:func:`load_image_pairs`).

    Attributes:
      clean: ``[pair, H, W, C]`` float32 model inputs.
      corrupted: ``[pair, H, W, C]`` float32 model inputs, ``corrupted[i]`` paired with
        ``clean[i]``.
      clean_ids, corrupted_ids: each pair's paths relative to the folder, ``/``-separated, in
        the CSV's order.
    """

    clean: np.ndarray
    corrupted: np.ndarray
    clean_ids: list[str]
    corrupted_ids: list[str]

    def __len__(self) -> int:
        return len(self.clean_ids)

    def _summary(self):
        height, width, channels = self.clean.shape[1:]
        shown = lambda ids: listed(ids[:3]) + (", ..." if len(ids) > 3 else "")  # noqa: E731
        rows = [("clean", shown(self.clean_ids)), ("corrupted", shown(self.corrupted_ids))]
        return f"{len(self):,} pairs of {height}x{width}x{channels} images", rows


def read_pairs_csv(root: str | os.PathLike, pairs_csv: str | os.PathLike) -> list[tuple]:
    """The pairs a CSV names, checked without decoding an image: ``[(line, clean, corrupted)]``
    with each file as a ``/``-path relative to ``root``, in the CSV's order.

    Raises:
      InputError: for a missing folder or CSV, a CSV that is empty, lacks a column, names no
        pair, has a short or empty row or a path outside ``root`` (naming the line), or names
        files that do not exist (naming each with its line).
    """
    root, csv_path = Path(root), Path(pairs_csv)
    _check_folder(root)
    rows = _read_csv(csv_path, ("clean", "corrupted"), "pairs CSV")
    if not rows:
        raise InputError(f"pairs CSV {csv_path} names no pairs: it has no row below its header")
    pairs = [
        (line, *(_inside(name, root, csv_path, line) for name in names)) for line, names in rows
    ]
    _refuse_missing(
        [(line, rel) for line, *rels in pairs for rel in rels], root, csv_path, "pairs CSV"
    )
    return pairs


def pair_positions(pairs: list[tuple], image_ids: list[str], pairs_csv, why: str) -> np.ndarray:
    """``[pair, 2]`` the positions among ``image_ids`` of each pair's clean and corrupted image
    (``pairs`` as :func:`read_pairs_csv` gives them, ids as :func:`load_image_folder` gives
    them: paths relative to its folder).

    Raises:
      InputError: naming the CSV's line and file of each image that is not among
        ``image_ids``; ``why`` says which images those are (``"the 16 analysed images"``).
    """
    position = {image_id: at for at, image_id in enumerate(image_ids)}
    absent = [
        f"{rel!r} ({column}, line {line})"
        for line, *rels in pairs
        for column, rel in zip(("clean", "corrupted"), rels, strict=True)
        if rel not in position
    ]
    if absent:
        shown = ", ".join(absent[:_SHOWN]) + (
            f" and {len(absent) - _SHOWN} more" if len(absent) > _SHOWN else ""
        )
        raise InputError(
            f"pairs CSV {pairs_csv} names {len(absent)} file(s) that are not among {why}: {shown}"
        )
    return np.asarray([[position[c], position[k]] for _, c, k in pairs], np.int64)


def load_image_pairs(
    root: str | os.PathLike,
    config: ViTConfig,
    pairs_csv: str | os.PathLike,
    *,
    progress: ProgressArg = True,
) -> ImagePairs:
    """Load and preprocess the image pairs a CSV names, for activation patching
    (:func:`~jaxvit_interp.importance.activation_patching`).

    Args:
      root: the folder the CSV's paths are relative to.
      config: gives ``image_size``, ``channels`` and ``preprocessing``.
      pairs_csv: a CSV whose header row names the columns ``clean`` and ``corrupted`` (other
        columns are ignored); each further row is one pair of image files under ``root``. A
        file may appear in several pairs.
      progress: report the images as they are decoded
        (:func:`~jaxvit_interp.progress.start_progress`).

    Returns:
      :class:`ImagePairs`, the pairs in the CSV's order.

    Raises:
      InputError: before any image is decoded, for a missing folder or CSV, a CSV that is empty,
        lacks a column, names no pair, has a short or empty row or a path outside ``root``
        (naming the line), or names files that do not exist (naming each with its line), or
        preprocessing that cannot give ``config.image_size``; while decoding, for an image
        that cannot be read (naming it and its line).
    """
    root = Path(root)
    check_preprocessing(config)
    csv_path = Path(pairs_csv)
    pairs = [
        (line, [clean, corrupted]) for line, clean, corrupted in read_pairs_csv(root, csv_path)
    ]

    shape = (len(pairs), *config.image_size, config.channels)
    images = {"clean": np.empty(shape, np.float32), "corrupted": np.empty(shape, np.float32)}
    with start_progress(
        progress,
        total=2 * len(pairs),
        desc=f"loading image pairs in {root.name or root}",
        unit="img",
    ) as bar:
        for k, (line, rels) in enumerate(pairs):
            for (column, array), rel in zip(images.items(), rels, strict=True):
                try:
                    array[k] = _decode(root / rel, config)
                except _DECODE_ERRORS as e:
                    raise InputError(
                        f"{csv_path}:{line}: the {column} image {rel!r} under {root} cannot be "
                        f"read: {type(e).__name__}: {e}"
                    ) from None
                bar.update(1)
    return ImagePairs(
        clean=images["clean"],
        corrupted=images["corrupted"],
        clean_ids=[rels[0] for _, rels in pairs],
        corrupted_ids=[rels[1] for _, rels in pairs],
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
