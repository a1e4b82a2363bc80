"""The results bundle: everything one analysis produced, in open formats, loadable without the site.

A bundle is a folder::

    bundle.json        format name and version, model config and checkpoint identity, image ids,
                       class names, how labels were matched, which parts are present, settings
    images.npz         labels, predictions, probabilities, thumbnails, 2-D overview positions
    images-pixels.npy  each image at the model's input resolution (uint8)
    importance.npz     pruning metrics per image and head; their means over all images and per
                       class, and each class's specificity and most specific heads
    partial.npz        partial pruning (six modes) for a subset of images, and its means
    strength.npz       hop strength, mass, entropy, distance, CLS masses per image and head; their
                       means over images and each head's entropy histogram
    patterns.npz       each pattern's 2-D position and cluster, cluster representatives, and each
                       head's mean position, most common cluster and the embedding's density
    head_sets.npz      pairwise interactions of the top heads and pruning curves on a subset
                       of images (absent from older bundles and with ``set_images = 0``)
    shapley.npz        each head's Shapley value of prob_drop on a subset of images, its standard
                       error and single-ablation drop beside it (only with ``shapley_images``)
    patching.npz       activation patching of every head between given pairs of images, both
                       directions, per pair and its mean (only with ``patching_pairs``)
    attention.npz      which images have stored attention (all by default), each matrix's worst
                       absolute and relative error and each head's worst over the images
    attention-codes.npy, attention-steps.npy, attention-exponents.npy,
    attention-special.npy
                       every head's attention matrix for those images: the special tokens'
                       columns as float16, 8-bit codes of a root of each patch weight (square,
                       cube or fourth) with a step and an exponent per row
                       (:mod:`jaxvit_interp.attention_codes`; ``meta["attention_code"]`` names
                       the code, and a version-3 bundle, read as well, has linear codes of
                       every weight and no exponents nor special columns)
    rollout.npz        each image's attention rollout map after the last layer and each layer's
                       contribution to it, and their means over images (absent from bundles
                       written before it)

Every array and its named dimensions are declared once, in :data:`jaxvit_interp.quantities.SCHEMA`,
and :func:`load_bundle` checks them all, naming the part and array at fault. The arrays that
:data:`~jaxvit_interp.quantities.MAPPED_ARRAYS` lists, gigabytes for thousands of images, have a
``.npy`` file each and are memory-mapped when loaded, so nothing reads them whole. Each file is
written to a temporary name and renamed into place, so an interrupted write never leaves a file
that reads as valid.

A bundle of version 3 (before version 4 carried each class's specificity and most specific
heads) still loads: :func:`load_bundle` computes those arrays from its per-image importance, as
the analysis does (:func:`~jaxvit_interp.importance.aggregate.class_specificity`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxvit_interp.attention_codes import ATTENTION_CODES, LINEAR, POWER
from jaxvit_interp.errors import InputError
from jaxvit_interp.quantities import (
    CLASS_ARRAYS,
    MAPPED_ARRAYS,
    METRIC_NAMES,
    OPTIONAL_ARRAYS,
    SCHEMA,
    model_metrics,
)
from jaxvit_interp.storage import atomic_write, load_npy, load_npz, save_npz, write_text
from jaxvit_interp.summary import Summarized, listed, sizes, top_heads

BUNDLE_FORMAT = "jaxvit-interp-results"
BUNDLE_VERSION = 4
# Older versions still read, and what they lack: version 3 has linear attention codes.
READABLE_VERSIONS = {3: {"attention_code": LINEAR}, BUNDLE_VERSION: {}}
INDEX_FILE = "bundle.json"


class BundleError(InputError):
    """A results bundle that cannot be read: wrong version, missing part, mismatched shape."""


@dataclasses.dataclass(repr=False)
class ResultsBundle(Summarized):
    """One analysis's results in memory.

    Attributes:
      meta: JSON-serialisable description: ``config`` (ViTConfig dict), ``checkpoint``
        (path and sha256), ``image_ids``, ``class_names``, ``labels_are_predictions``,
        ``pruning_modes``, a ``settings`` dict per analysis, ``devices`` (platform, kind and
        count of the devices the analysis ran on), ``metrics`` (the importance metrics the model
        has: a backbone without a classifier ``layer`` and ``repr`` only; absent in bundles from
        before backbones, which hold all), ``special_tokens`` (their names in token order) and
        ``attention_code`` (how the attention part is coded: ``"power"``, or ``"linear"``
        in a version-3 bundle; see :mod:`jaxvit_interp.attention_codes`).
      parts: part name -> array name -> array, shapes as in :data:`SCHEMA`.
    """

    meta: dict[str, Any]
    parts: dict[str, dict[str, np.ndarray]]

    def dims(self) -> dict[str, int]:
        """The sizes of the named dimensions that the meta fixes."""
        config = self.meta["config"]
        grid = (
            config["image_size"][0] // config["patch_size"][0],
            config["image_size"][1] // config["patch_size"][1],
        )
        _, prefix = special_tokens(config)
        return {
            "I": len(self.meta["image_ids"]),
            "C": config["num_classes"],
            "L": config["num_layers"],
            "H": config["num_heads"],
            "N": grid[0] * grid[1] + prefix,
            "X": prefix,
            "K": max(grid),
            "M": len(self.meta["pruning_modes"]),
            "ih": config["image_size"][0],
            "iw": config["image_size"][1],
            "gh": grid[0],
            "gw": grid[1],
            "oh": 2 * grid[0] - 1,
            "ow": 2 * grid[1] - 1,
            "xy": 2,
            "extent": 4,
            "cc": 2,
            "di": 2,
        }

    def _summary(self):
        from jaxvit_interp.model.identity import identity_label

        dims = self.dims()
        classes = self.meta["class_names"]
        shown = listed(classes[:3]) + (", ..." if len(classes) > 3 else "")
        rows = [
            ("model", identity_label(self.meta.get("checkpoint"))),
            ("classes", f"{len(classes):,}: {shown}" if classes else "none (a backbone)"),
            ("metrics", listed(self.meta.get("metrics", METRIC_NAMES))),
            ("parts", listed(sorted(self.parts))),
        ]
        importance = self.parts.get("importance", {})
        ranking = next((m for m in ("prob_drop", "repr") if m in importance), None)
        if ranking:
            rows.append(("top heads", f"by mean {ranking}: {top_heads(importance[ranking])}"))
        return sizes(images=dims["I"], layers=dims["L"], heads=dims["H"]), rows

    def __getitem__(self, part: str) -> dict[str, np.ndarray]:
        if part not in self.parts:
            raise BundleError(
                f"the results bundle has no {part!r} part (it has {sorted(self.parts)})"
            )
        return self.parts[part]

    def validate(self, *, derived: bool = True) -> None:
        """Check every present array against :data:`SCHEMA`; raise :class:`BundleError` naming it.

        ``derived=False`` lets a classifier's bundle lack the arrays :func:`load_bundle` derives
        for a bundle of version 3 (each class's specificity and most specific heads)."""
        for key in ("config", "image_ids", "class_names", "pruning_modes"):
            if key not in self.meta:
                raise BundleError(f"the results bundle's {INDEX_FILE} lacks {key!r}")
        fixed = self.dims()
        if len(self.meta["class_names"]) != fixed["C"]:
            raise BundleError(
                f"class_names lists {len(self.meta['class_names'])} classes but the model has "
                f"{fixed['C']}"
            )
        self._check_metrics(derived)
        self._check_attention_code()
        for part, arrays in self.parts.items():
            if part not in SCHEMA:
                raise BundleError(f"unknown part {part!r} in the results bundle")
            free: dict[str, int] = {}
            for name, spec in SCHEMA[part].items():
                if name not in arrays:
                    if name in OPTIONAL_ARRAYS.get(part, ()):
                        continue
                    raise BundleError(f"part {part!r} lacks array {name!r}")
                shape = arrays[name].shape
                if len(shape) != len(spec):
                    raise BundleError(
                        f"{part}/{name} has shape {shape}; expected {len(spec)} axes {spec}"
                    )
                for axis, (dim, size) in enumerate(zip(spec, shape)):
                    want = (
                        dim if isinstance(dim, int) else fixed.get(dim, free.setdefault(dim, size))
                    )
                    if size != want:
                        raise BundleError(
                            f"{part}/{name} has shape {shape}: axis {axis} ({dim}) is {size}, "
                            f"expected {want}"
                        )

    @property
    def metrics(self) -> tuple[str, ...]:
        """The importance metrics this bundle holds (a bundle from before backbones: all)."""
        return tuple(self.meta.get("metrics") or model_metrics(self.meta["config"]["num_classes"]))

    @property
    def attention_code(self) -> str | None:
        """How the attention part is coded (:data:`~jaxvit_interp.attention_codes.ATTENTION_CODES`;
        None in a bundle without attention)."""
        return self.meta.get("attention_code") if "attention" in self.parts else None

    def _check_attention_code(self) -> None:
        """A known code, and the arrays it needs: the power code's row exponents, special
        columns and relative errors."""
        if "attention" not in self.parts:
            return
        code = self.meta.get("attention_code")
        if code not in ATTENTION_CODES:
            raise BundleError(
                f"meta attention_code is {code!r}; expected one of {list(ATTENTION_CODES)}"
            )
        if code == POWER:
            for name in ("exponents", "special", "relative_error", "relative_error_max"):
                if name not in self.parts["attention"]:
                    raise BundleError(
                        f"part 'attention' lacks array {name!r}, which its {code} code needs"
                    )

    def _check_metrics(self, derived: bool = True) -> None:
        """The arrays that the optional ones stand for must be there: each listed metric's, and
        a classifier's probabilities, predictions, labels and per-class arrays (``derived``:
        those a version 3 bundle lacks too)."""
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise BundleError(f"meta lists unknown metrics {unknown}; known: {list(METRIC_NAMES)}")
        need = {"importance": [n for m in self.metrics for n in (m, f"{m}_mean")]}
        if self.meta["config"]["num_classes"]:
            need["images"] = ["labels", "predictions", "probs"]
            need["importance"] += [f"{m}_class_mean" for m in self.metrics] + ["class_counts"]
            if derived:
                need["importance"] += _class_specificity_names(self.metrics)
        for part, names in need.items():
            for name in names:
                if part in self.parts and name not in self.parts[part]:
                    raise BundleError(f"part {part!r} lacks array {name!r}")


def _class_specificity_names(metrics) -> list[str]:
    """The arrays of each class's specificity and most specific heads under ``metrics``."""
    return [f"{m}_class_{what}" for m in metrics for what in CLASS_ARRAYS if what != "mean"]


def _derive_class_specificity(bundle: ResultsBundle) -> None:
    """Add each class's specificity and most specific heads to a classifier's bundle written
    before they were carried (version 3), computed from its per-image importance and labels by
    the function the analysis uses."""
    importance = bundle.parts.get("importance")
    if not bundle.meta["config"]["num_classes"] or importance is None:
        return
    missing = [m for m in bundle.metrics if set(_class_specificity_names([m])) - set(importance)]
    if not missing:
        return
    from jaxvit_interp.importance import HeadImportance
    from jaxvit_interp.importance.aggregate import class_specificity

    images = bundle["images"]
    result = HeadImportance.from_part(
        importance,
        probs=images["probs"],
        predictions=images["predictions"],
        labels=images["labels"],
        labels_are_predictions=bool(bundle.meta.get("labels_are_predictions", False)),
        metrics=missing,
    )
    importance.update(class_specificity(result, bundle.dims()["C"]))


def special_tokens(config: dict[str, Any]) -> tuple[bool, int]:
    """``(has a CLS token, special tokens before the patches)`` of a bundle's ``meta["config"]``
    (CLS, distillation and register tokens; fields a config from before them lacks count as
    absent)."""
    # class_token is None where the classifier implies it (ViTConfig's canonical form).
    cls = config.get("class_token")
    has_cls = config["classifier"] == "token" if cls is None else bool(cls)
    registers = int(config.get("num_register_tokens") or 0)
    return has_cls, int(has_cls) + int(bool(config.get("distillation_token"))) + registers


def mapped_path(directory: Path, part: str, name: str) -> Path:
    """The ``.npy`` file of a memory-mapped array (:data:`MAPPED_ARRAYS`)."""
    return Path(directory) / f"{part}-{name}.npy"


def save_part(directory: Path, part: str, arrays: dict[str, np.ndarray]) -> None:
    """Write one part atomically: ``part.npz``, and a ``.npy`` per memory-mapped array.

    A mapped array whose file is already in place (as the analysis streams them there) is not
    written again.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    mapped = MAPPED_ARRAYS.get(part, set())
    for name in mapped & set(arrays):
        path = mapped_path(directory, part, name)
        array = arrays[name]
        if isinstance(array, np.memmap) and Path(array.filename).resolve() == path.resolve():
            continue
        atomic_write(path, lambda f, a=array: np.save(f, np.asarray(a), allow_pickle=False))
    save_npz(directory / f"{part}.npz", {k: v for k, v in arrays.items() if k not in mapped})


def save_bundle(bundle: ResultsBundle, directory: str | Path) -> Path:
    """Validate and write ``bundle`` into ``directory``; the index is written last."""
    bundle.validate()
    directory = Path(directory)
    for part, arrays in bundle.parts.items():
        save_part(directory, part, arrays)
    index = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "parts": sorted(bundle.parts),
        **bundle.meta,
    }
    write_text(directory / INDEX_FILE, json.dumps(index, indent=1))
    return directory


def load_bundle(directory: str | Path) -> ResultsBundle:
    """Read and validate a bundle written by :func:`save_bundle`."""
    directory = Path(directory)
    index_path = directory / INDEX_FILE
    if not index_path.exists():
        raise BundleError(f"{directory} is not a results bundle: {INDEX_FILE} is missing")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{index_path} is not valid JSON: {err}") from None
    if index.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{index_path} is not a {BUNDLE_FORMAT} index (format={index.get('format')!r})"
        )
    if index.get("version") not in READABLE_VERSIONS:
        raise BundleError(
            f"{index_path} has bundle version {index.get('version')!r}; this jaxvit-interp reads "
            f"versions {' and '.join(map(str, sorted(READABLE_VERSIONS)))} (version 4 keeps the "
            "small attention weights and each matrix's relative error, and each class's "
            "specificity and most specific heads, computed when a version 3 bundle is loaded; "
            "version 3 keeps every image's attention as 8-bit codes and each image at the model's "
            "input resolution; version 2 added the means over images, per-class importance and "
            "the histograms the site shows): run `jaxvit-interp analyze` again into a new folder"
        )
    parts = {}
    for part in index.get("parts", []):
        path = directory / f"{part}.npz"
        if not path.exists():
            raise BundleError(f"part {part!r} is listed in {INDEX_FILE} but {path} is missing")
        parts[part] = load_npz(path, what=f"results bundle part {part!r}")
        for name in MAPPED_ARRAYS.get(part, ()):
            array_path = mapped_path(directory, part, name)
            if array_path.exists():
                parts[part][name] = load_npy(array_path, what=f"results bundle array {part}/{name}")
    meta = {k: v for k, v in index.items() if k not in ("format", "version", "parts")}
    meta.update(READABLE_VERSIONS[index["version"]])
    bundle = ResultsBundle(meta=meta, parts=parts)
    # Every array is checked before any is derived from the others, and the derived ones after.
    bundle.validate(derived=False)
    _derive_class_specificity(bundle)
    bundle.validate()
    return bundle
