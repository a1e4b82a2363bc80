"""Site specs: a TOML file naming the model, the images and the options of one publishable site.

Example (``sites/digits.toml``)::

    title = "How attention works in a ViT trained on handwritten digits"
    model = "builtin:digits"          # or "builtin:shapes", "hf-hub:ORG/NAME", or a checkpoint path
                                      # relative to this file
    images = "builtin:digits"         # the built-in's held-out images, or an image folder
    # labels = "labels.csv"           # optional CSV of image ids and labels
    # patching_pairs = "pairs.csv"    # optional CSV of clean,corrupted image files (an image
                                      # folder's): activation patching, view B5
    max_images = 300                  # images analysed and shown in the overview

    [analysis]                        # AnalysisSettings: the keys, defaults and checks of
    attention_images = 32             # `jaxvit-interp analyze`'s flags and --config
    partial_images = 32
    seed = 0
    batch_size = 64

    [views]
    metrics = ["prob", "prob_drop", "kl", "layer", "repr", "flip", "taylor"]
    default_metric = "prob"
    default_kind = "cls"              # pattern kind D shows first: "cls" or "patch"
    thumbnail_size = 64               # thumbnails shrunk to at most this many pixels a side
    compression = 0                   # gzip level of the page's arrays (0: opens fastest)

Every key is checked: an unknown key, a wrong type or a missing file is an error naming it.
The ``[analysis]`` table is read by :class:`~jaxvit_interp.pipeline.settings.AnalysisSettings`
itself: a spec's analysis is the one ``analyze`` runs with the same settings. Earlier specs
gave ``attention_images`` and ``partial_images`` at the top level, with a default of their own;
such a spec is refused with the ``[analysis]`` lines that keep its meaning.

A comparison spec (``sites/compare-digits-shapes.toml``) gives several ``[[model]]`` tables
instead of the top-level ``model``: one run each, on one comparison site
(:func:`~jaxvit_interp.site.comparison.build_comparison_site`)::

    title = "Digits against shapes"   # the comparison page's title
    max_images = 32                   # top-level images, labels, max_images, [analysis] and
    [analysis]                        # [views]: defaults shared by every model
    attention_images = 8

    [[model]]
    name = "digits"                   # the run's name on the page and its folder (runs/digits)
    model = "builtin:digits"
    images = "builtin:digits"

    [[model]]
    name = "shapes"
    model = "builtin:shapes"
    images = "builtin:shapes"         # its own images, labels and max_images, and
    [model.analysis]                  # [analysis] keys of its own over the shared ones
    seed = 1

A table may give its own ``labels`` and ``patching_pairs`` (of its own image folder) over the
top-level ones. A table's keys are checked as the top-level ones are, and named ``model[2].images``,
``model[2].analysis.seed`` (tables counted from 1). A single ``[[model]]`` table, a top-level
``model`` beside the tables, two tables of one name or a table without ``name`` or ``model`` is
refused. Everything is read and every file checked before any analysis starts.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from jaxvit_interp.data.builtin_models import BUILTIN_MODELS
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.checkpoint.errors import CheckpointError
from jaxvit_interp.model.checkpoint.hub import is_hub_name, parse_hub_name
from jaxvit_interp.pipeline.settings import ALL_IMAGES, AnalysisSettings
from jaxvit_interp.quantities import METRIC_NAMES, PATTERN_KINDS, model_metrics

# Top-level keys of earlier specs, now analysis settings.
MOVED = ("attention_images", "partial_images")


# The key of the model tables of a comparison spec ([[model]]).
MODEL_TABLES = "model"
# A model's name in a comparison spec: it names its folders (runs/<name>, models/<name>).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class SiteSpecError(InputError):
    """A site spec that cannot be used; the message names the file and the key."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiteModel:
    """One ``[[model]]`` table of a comparison spec, the shared defaults filled in.

    Attributes:
      name: the run's name on the comparison page, and its folders (``runs/<name>`` of
        ``site build``, ``models/<name>`` of the site).
      model, images, labels, patching_pairs, max_images, analysis: as :class:`SiteSpec`'s, the
        table's own where it gives them, else the top-level ones (``[model.analysis]`` keys over
        ``[analysis]``'s).
    """

    name: str
    model: str | Path
    images: str | Path
    labels: Path | None
    max_images: int
    analysis: AnalysisSettings
    patching_pairs: Path | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiteSpec:
    """A parsed, checked site spec. Paths are resolved against the spec's folder.

    A comparison spec (``models`` not empty) has ``model`` None, and its ``images``, ``labels``,
    ``max_images`` and ``analysis`` are the defaults its tables share (``images`` None where
    every table gives its own).

    Attributes:
      path: the spec file.
      title: the page title (``None``: derived from the model, or the runs' names).
      model: a built-in (``"builtin:digits"``, ``"builtin:shapes"``) or the checkpoint path.
      images: a built-in's held-out images (as ``model``) or the image folder.
      labels: the labels CSV, or ``None``.
      patching_pairs: the CSV of image pairs (``clean,corrupted`` files of the image folder) the
        analysis patches (``analyze --patching-pairs``; view B5), or ``None``. Its rows and files
        are checked when the spec is read.
      max_images: images analysed and shown.
      analysis: the :class:`~jaxvit_interp.pipeline.settings.AnalysisSettings` of the
        ``[analysis]`` table (its ``attention_images`` is also how many images' attention
        matrices the page holds).
      models: the ``[[model]]`` tables of a comparison spec, in order; empty for one model.
      metrics: importance metrics listed in B's menu, in order.
      default_metric: the metric shown first; None: the first of ``metrics`` that the results
        have (a backbone without a classifier has ``layer`` and ``repr`` only).
      default_kind: the pattern kind D shows first.
      thumbnail_size: largest thumbnail side in pixels on the page (default: the analysis's;
        for a comparison spec whose ``[views]`` gives none, None: each run's own).
      compression: gzip level (0-9) of the page's arrays.
    """

    path: Path
    title: str | None
    model: str | Path | None
    images: str | Path | None
    labels: Path | None
    max_images: int
    analysis: AnalysisSettings
    metrics: tuple[str, ...]
    default_metric: str | None
    default_kind: str
    thumbnail_size: int | None
    compression: int
    models: tuple[SiteModel, ...] = ()
    patching_pairs: Path | None = None

    def check_views_for(self, num_classes: int, which: str) -> None:
        """Refuse, before its analysis, a model the ``[views]`` cannot be drawn for: a backbone
        without a classifier (``num_classes`` 0) has ``layer`` and ``repr`` only, so a
        ``default_metric`` or a ``metrics`` list that needs logits would fail once the site is
        written, after the analysis. ``which`` names the model (``model[2] (builtin:x)``)."""
        have = model_metrics(num_classes)
        if self.default_metric is not None and self.default_metric not in have:
            raise SiteSpecError(
                f"{self.path}: views.default_metric = {self.default_metric!r} needs a "
                f"classifier, and {which} is a backbone without one (its metrics: "
                f"{', '.join(have)}); give views.default_metric one of those, or leave it out"
            )
        if not set(self.metrics) & set(have):
            raise SiteSpecError(
                f"{self.path}: views.metrics = {list(self.metrics)} has none of the metrics of "
                f"{which}, a backbone without a classifier ({', '.join(have)})"
            )

    def site_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`jaxvit_interp.site.build_site` this spec fixes (of
        :func:`~jaxvit_interp.site.comparison.build_comparison_site` for a comparison spec:
        ``title`` is the comparison page's, the rest go to every model's own site)."""
        attention = self.analysis.attention_images
        if self.models or attention == ALL_IMAGES:
            attention = None  # a comparison: each run holds the attention its analysis kept
        return {
            "title": self.title,
            "max_attention_images": attention,
            "metrics": list(self.metrics),
            "default_metric": self.default_metric,
            "default_kind": self.default_kind,
            "thumbnail_size": self.thumbnail_size,
            "compression": self.compression,
        }


# key -> (type, default); a default of ... marks a required key. [analysis] is AnalysisSettings.
_TOP: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "title": (str, None),
    "model": (str, ...),
    "images": (str, ...),
    "labels": (str, None),
    "patching_pairs": (str, None),
    "max_images": (int, 300),
}
# The top level of a comparison spec: its images are a default the tables may each replace.
_SHARED: dict[str, tuple[type | tuple[type, ...], Any]] = {
    **_TOP,
    MODEL_TABLES: (list, ...),
    "images": (str, None),
}
# A [[model]] table; None: the top-level value. Its [model.analysis] is AnalysisSettings too.
_MODEL: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "name": (str, ...),
    "model": (str, ...),
    "images": (str, None),
    "labels": (str, None),
    "patching_pairs": (str, None),
    "max_images": (int, None),
}
_TABLES: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "analysis": {},
    "views": {
        "metrics": (list, list(METRIC_NAMES)),
        "default_metric": (str, None),
        "default_kind": (str, "cls"),
        "thumbnail_size": (int, None),
        "compression": (int, 0),
    },
}


def _typed(where: Path, key: str, value: Any, kind) -> Any:
    # TOML booleans are ints to Python; a count given as `true` is a mistake, not 1.
    if isinstance(value, bool) and kind is not bool:
        ok = False
    else:
        ok = isinstance(value, kind)
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SiteSpecError(f"{where}: {key} must be of type {name}, got {value!r}")
    return value


def _read(where: Path, table: dict, schema: dict, prefix: str = "", tables=None) -> dict[str, Any]:
    """``table``'s keys of ``schema`` typed, defaults filled in; ``tables``: the sub-tables it
    may also hold (default: the top level's, for a table without ``prefix``)."""
    if tables is None:
        tables = () if prefix else tuple(_TABLES)
    known = set(schema) | set(tables)
    for key in table:
        if key not in known:
            raise SiteSpecError(
                f"{where}: unknown key {prefix + key!r} (known keys: "
                f"{', '.join(prefix + k for k in sorted(known))})"
            )
    out = {}
    for key, (kind, default) in schema.items():
        if key in table:
            out[key] = _typed(where, prefix + key, table[key], kind)
        elif default is ...:
            raise SiteSpecError(f"{where}: the required key {prefix + key!r} is missing")
        else:
            out[key] = default
    return out


def _positive(where: Path, key: str, value: int) -> int:
    if value < 1:
        raise SiteSpecError(f"{where}: {key} must be at least 1, got {value}")
    return value


def _source(
    where: Path,
    key: str,
    value: str,
    *,
    folder: bool | None,
    builtin_ok: bool = True,
    prefix: str = "",
) -> str | Path:
    """A ``builtin:`` name as is, a model's hub name (``hf-hub:ORG/NAME``) as is, or a path
    resolved against the spec's folder that exists. ``prefix`` names the table (``model[2].``)."""
    shown = prefix + key
    if key == "model" and is_hub_name(value):
        try:
            parse_hub_name(value)
        except CheckpointError as e:
            raise SiteSpecError(f"{where}: {shown} = {value!r}: {e}") from None
        return value
    if value.startswith("builtin:") and builtin_ok:
        if value not in BUILTIN_MODELS:
            known = ", ".join(BUILTIN_MODELS)
            raise SiteSpecError(f"{where}: {shown} = {value!r} is not a built-in (known: {known})")
        return value
    path = (where.parent / value).resolve()
    if not path.exists():
        raise SiteSpecError(f"{where}: {shown} = {value!r}: no such file or folder ({path})")
    if folder is True and not path.is_dir():
        raise SiteSpecError(f"{where}: {shown} = {value!r} must be a folder ({path})")
    if folder is False and not path.is_file():
        raise SiteSpecError(f"{where}: {shown} = {value!r} must be a file ({path})")
    return path


def _pairs(where: Path, value: str | None, images: str | Path, prefix: str = "") -> Path | None:
    """The patching pairs' CSV resolved against the spec's folder, its rows and files checked
    against the image folder ``images`` (``prefix`` names the table that gives the key)."""
    if value is None:
        return None
    from jaxvit_interp.data.images import read_pairs_csv

    shown = f"{prefix}patching_pairs = {value!r}"
    if isinstance(images, str):  # a built-in's held-out images, which are not files
        raise SiteSpecError(
            f"{where}: {shown} names image files, and images = {images!r} has none: give an "
            "image folder"
        )
    path = _source(where, "patching_pairs", value, folder=False, builtin_ok=False, prefix=prefix)
    try:
        read_pairs_csv(images, path)
    except InputError as err:
        raise SiteSpecError(f"{where}: {shown}: {err}") from None
    return path


def _moved(where: Path, raw: dict) -> None:
    """Refuse an earlier spec's top-level ``attention_images`` / ``partial_images``, with the
    ``[analysis]`` lines that mean what they meant."""
    given = [key for key in MOVED if key in raw]
    if not given:
        return
    lines = {key: raw[key] for key in given}
    if "partial_images" not in lines and raw["attention_images"] != ALL_IMAGES:
        lines["partial_images"] = raw["attention_images"]  # it followed attention_images there
    table = "\n".join(f"    {key} = {_toml(value)}" for key, value in lines.items())
    raise SiteSpecError(
        f"{where}: {' and '.join(given)} moved into the [analysis] table, where every analysis "
        f"setting of `jaxvit-interp analyze` is read; for the same run write\n    [analysis]\n"
        f"{table}"
    )


def _toml(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _analysis(where: Path, table: Any, prefix: str) -> AnalysisSettings:
    """An ``[analysis]`` table (``prefix``: how its keys are named) as settings."""
    if not isinstance(table, dict):
        raise SiteSpecError(
            f"{where}: {prefix.rstrip('.')} must be a table ([{prefix.rstrip('.')}]), got {table!r}"
        )
    try:
        return AnalysisSettings.from_dict(table, prefix)
    except InputError as err:
        raise SiteSpecError(f"{where}: {err}") from None


def _not_more_than(
    where: Path, analysis: AnalysisSettings, given, max_images: int, prefix: str = ""
) -> None:
    """An ``[analysis]`` that asks for more images than ``max_images`` reads is refused;
    ``given``: the keys the spec wrote (a default of ``all`` or 64 is cut to what there is)."""
    for key in ("attention_images", "partial_images"):
        value = getattr(analysis, key)
        if key in given and value != ALL_IMAGES and value > max_images:
            raise SiteSpecError(
                f"{where}: {prefix}analysis.{key} = {value} exceeds {prefix}max_images = "
                f"{max_images}"
            )


def _thumbnails(where: Path, views_size: int | None, analysis: AnalysisSettings, prefix="") -> int:
    """The page's thumbnail side: ``[views]``'s, at most the run's (``analysis``'s)."""
    size = analysis.thumbnail_size if views_size is None else views_size
    _positive(where, "views.thumbnail_size", size)
    if size > analysis.thumbnail_size:
        raise SiteSpecError(
            f"{where}: views.thumbnail_size = {size} is larger than the thumbnails the "
            f"run keeps, {prefix}analysis.thumbnail_size = {analysis.thumbnail_size}; give "
            f"[analysis] thumbnail_size = {size} too"
            + (" (or in that table's [model.analysis])" if prefix else "")
        )
    return size


def _mixes_models(text: str) -> bool:
    """Whether a spec TOML refused gives both a top-level ``model`` and ``[[model]]`` tables
    (TOML cannot read them together: its error would not say why)."""
    tables = re.search(rf"^\s*\[\[\s*{MODEL_TABLES}\s*\]\]", text, re.M)
    if tables is None:
        return False
    before = text[: tables.start()]
    before = before[: m.start()] if (m := re.search(r"^\s*\[", before, re.M)) else before
    return re.search(rf"^\s*{MODEL_TABLES}\s*=", before, re.M) is not None


def _model_tables(where: Path, raw: dict, top: dict, views: dict) -> tuple[SiteModel, ...]:
    """The ``[[model]]`` tables, each checked with the top-level defaults filled in."""
    tables = raw[MODEL_TABLES]
    if len(tables) < 2:
        raise SiteSpecError(
            f"{where}: {len(tables)} [[model]] table: a site of one model gives it at the top "
            "level (model = ..., images = ...); [[model]] tables are for comparing two or more"
        )
    models: list[SiteModel] = []
    for number, table in enumerate(tables, 1):
        prefix = f"{MODEL_TABLES}[{number}]."
        if not isinstance(table, dict):
            raise SiteSpecError(f"{where}: {prefix.rstrip('.')} must be a table, got {table!r}")
        given = _read(where, table, _MODEL, prefix, tables=("analysis",))
        name = given["name"]
        if not _NAME.fullmatch(name):
            raise SiteSpecError(
                f"{where}: {prefix}name = {name!r}: a name is letters, digits, '.', '_' and "
                "'-', starting with a letter or digit (it names the run's folder)"
            )
        for earlier, other in enumerate(models, 1):
            if other.name == name:
                raise SiteSpecError(
                    f"{where}: {prefix}name = {name!r} is also {MODEL_TABLES}[{earlier}]'s "
                    "name; each [[model]] table needs a name of its own"
                )
        own = table.get("analysis", {})
        if not isinstance(own, dict):
            raise SiteSpecError(
                f"{where}: {prefix}analysis must be a table ([model.analysis]), got {own!r}"
            )
        analysis_table = {**raw.get("analysis", {}), **own}
        analysis = _analysis(where, analysis_table, prefix + "analysis.")
        max_images = top["max_images"] if given["max_images"] is None else given["max_images"]
        _positive(where, prefix + "max_images", max_images)
        _not_more_than(where, analysis, analysis_table, max_images, prefix)
        _thumbnails(where, views["thumbnail_size"], analysis, prefix)
        images = given["images"] if given["images"] is not None else top["images"]
        if images is None:
            raise SiteSpecError(
                f"{where}: the required key {prefix + 'images'!r} is missing (there is no "
                "top-level images to default to)"
            )
        labels = given["labels"] if given["labels"] is not None else top["labels"]
        # A key the table gives is named as its; a default as the top level's.
        in_table = {key: prefix if given[key] is not None else "" for key in _MODEL}
        images = _source(where, "images", images, folder=True, prefix=in_table["images"])
        pairs = (
            given["patching_pairs"]
            if given["patching_pairs"] is not None
            else top["patching_pairs"]
        )
        models.append(
            SiteModel(
                name=name,
                model=_source(where, "model", given["model"], folder=None, prefix=prefix),
                images=images,
                patching_pairs=_pairs(where, pairs, images, in_table["patching_pairs"]),
                labels=(
                    _source(
                        where,
                        "labels",
                        labels,
                        folder=False,
                        builtin_ok=False,
                        prefix=in_table["labels"],
                    )
                    if labels is not None
                    else None
                ),
                max_images=max_images,
                analysis=analysis,
            )
        )
    return tuple(models)


def load_site_spec(path: str | Path) -> SiteSpec:
    """Read and check a site spec; raises :class:`SiteSpecError` naming the bad key or file
    (and, in a comparison spec, its ``[[model]]`` table: ``model[2].images``)."""
    where = Path(path)
    if not where.is_file():
        raise SiteSpecError(f"site spec {where} does not exist")
    text = where.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        if _mixes_models(text):
            raise SiteSpecError(
                f"{where}: a top-level model = ... and [[model]] tables: give one model at the "
                "top level, or two or more [[model]] tables (each with its own name and model)"
            ) from None
        raise SiteSpecError(f"{where}: not valid TOML: {err}") from None
    _moved(where, raw)
    several = isinstance(raw.get(MODEL_TABLES), list)
    top = _read(where, raw, _SHARED if several else _TOP)
    for name in _TABLES:
        if not isinstance(raw.get(name, {}), dict):
            raise SiteSpecError(f"{where}: {name} must be a table ([{name}]), got {raw[name]!r}")
    analysis = _analysis(where, raw.get("analysis", {}), "analysis.")
    views = _read(where, raw.get("views", {}), _TABLES["views"], prefix="views.")

    max_images = _positive(where, "max_images", top["max_images"])
    if not several:
        _not_more_than(where, analysis, raw.get("analysis", {}), max_images)
    if not 0 <= views["compression"] <= 9:
        raise SiteSpecError(
            f"{where}: views.compression must be a gzip level 0..9, got {views['compression']}"
        )

    metrics = views["metrics"]
    if not metrics:
        raise SiteSpecError(f"{where}: views.metrics lists no metric")
    for m in metrics:
        if m not in METRIC_NAMES:
            raise SiteSpecError(
                f"{where}: views.metrics has unknown metric {m!r} (known: "
                f"{', '.join(METRIC_NAMES)})"
            )
    default_metric = views["default_metric"]
    if default_metric is not None and default_metric not in metrics:
        raise SiteSpecError(
            f"{where}: views.default_metric = {default_metric!r} is not in views.metrics {metrics}"
        )
    if views["default_kind"] not in PATTERN_KINDS:
        raise SiteSpecError(
            f"{where}: views.default_kind = {views['default_kind']!r}; expected one of "
            f"{', '.join(PATTERN_KINDS)}"
        )
    if several:
        models = _model_tables(where, raw, top, views)
        thumbnail_size = views["thumbnail_size"]  # None: each run's own
        model = None
    else:
        models = ()
        thumbnail_size = _thumbnails(where, views["thumbnail_size"], analysis)
        model = _source(where, "model", top["model"], folder=None)
    images = top["images"]
    if images is not None:
        images = _source(where, "images", images, folder=True)
    return SiteSpec(
        path=where.resolve(),
        title=top["title"],
        model=model,
        images=images,
        # A comparison's tables check the pairs against their own images.
        patching_pairs=None if several else _pairs(where, top["patching_pairs"], images),
        labels=(
            _source(where, "labels", top["labels"], folder=False, builtin_ok=False)
            if top["labels"] is not None
            else None
        ),
        max_images=max_images,
        analysis=analysis,
        metrics=tuple(metrics),
        default_metric=default_metric,
        default_kind=views["default_kind"],
        thumbnail_size=thumbnail_size,
        compression=views["compression"],
        models=models,
    )
