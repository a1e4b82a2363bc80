"""Site specs: a TOML file naming the model, the images and the options of one publishable site.

Example (``sites/digits.toml``)::

    title = "How attention works in a ViT trained on handwritten digits"
    model = "builtin:digits"          # or "builtin:shapes", "hf-hub:ORG/NAME", or a checkpoint path
                                      # relative to this file
    images = "builtin:digits"         # the built-in's held-out images, or an image folder
    # labels = "labels.csv"           # optional CSV of image ids and labels
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
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from jaxvit_interp.data.builtin_models import BUILTIN_MODELS
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.checkpoint.errors import CheckpointError
from jaxvit_interp.model.checkpoint.hub import is_hub_name, parse_hub_name
from jaxvit_interp.pipeline.settings import ALL_IMAGES, AnalysisSettings
from jaxvit_interp.quantities import METRIC_NAMES, PATTERN_KINDS

# Top-level keys of earlier specs, now analysis settings.
MOVED = ("attention_images", "partial_images")


class SiteSpecError(InputError):
    """A site spec that cannot be used; the message names the file and the key."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiteSpec:
    """A parsed, checked site spec. Paths are resolved against the spec's folder.

    Attributes:
      path: the spec file.
      title: the page title (``None``: derived from the model).
      model: a built-in (``"builtin:digits"``, ``"builtin:shapes"``) or the checkpoint path.
      images: a built-in's held-out images (as ``model``) or the image folder.
      labels: the labels CSV, or ``None``.
      max_images: images analysed and shown.
      analysis: the :class:`~jaxvit_interp.pipeline.settings.AnalysisSettings` of the
        ``[analysis]`` table (its ``attention_images`` is also how many images' attention
        matrices the page holds).
      metrics: importance metrics listed in B's menu, in order.
      default_metric: the metric shown first; None: the first of ``metrics`` that the results
        have (a backbone without a classifier has ``layer`` and ``repr`` only).
      default_kind: the pattern kind D shows first.
      thumbnail_size: largest thumbnail side in pixels on the page (default: the analysis's).
      compression: gzip level (0-9) of the page's arrays.
    """

    path: Path
    title: str | None
    model: str | Path
    images: str | Path
    labels: Path | None
    max_images: int
    analysis: AnalysisSettings
    metrics: tuple[str, ...]
    default_metric: str | None
    default_kind: str
    thumbnail_size: int
    compression: int

    def site_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`jaxvit_interp.site.build_site` this spec fixes."""
        attention = self.analysis.attention_images
        return {
            "title": self.title,
            "max_attention_images": None if attention == ALL_IMAGES else attention,
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
    "max_images": (int, 300),
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


def _read(where: Path, table: dict, schema: dict, prefix: str = "") -> dict[str, Any]:
    known = set(schema) | (set(_TABLES) if not prefix else set())
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
    where: Path, key: str, value: str, *, folder: bool | None, builtin_ok: bool = True
) -> str | Path:
    """A ``builtin:`` name as is, a model's hub name (``hf-hub:ORG/NAME``) as is, or a path
    resolved against the spec's folder that exists."""
    if key == "model" and is_hub_name(value):
        try:
            parse_hub_name(value)
        except CheckpointError as e:
            raise SiteSpecError(f"{where}: {key} = {value!r}: {e}") from None
        return value
    if value.startswith("builtin:") and builtin_ok:
        if value not in BUILTIN_MODELS:
            known = ", ".join(BUILTIN_MODELS)
            raise SiteSpecError(f"{where}: {key} = {value!r} is not a built-in (known: {known})")
        return value
    path = (where.parent / value).resolve()
    if not path.exists():
        raise SiteSpecError(f"{where}: {key} = {value!r}: no such file or folder ({path})")
    if folder is True and not path.is_dir():
        raise SiteSpecError(f"{where}: {key} = {value!r} must be a folder ({path})")
    if folder is False and not path.is_file():
        raise SiteSpecError(f"{where}: {key} = {value!r} must be a file ({path})")
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


def load_site_spec(path: str | Path) -> SiteSpec:
    """Read and check a site spec; raises :class:`SiteSpecError` naming the bad key or file."""
    where = Path(path)
    if not where.is_file():
        raise SiteSpecError(f"site spec {where} does not exist")
    try:
        raw = tomllib.loads(where.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SiteSpecError(f"{where}: not valid TOML: {err}") from None
    _moved(where, raw)
    top = _read(where, raw, _TOP)
    for name in _TABLES:
        if not isinstance(raw.get(name, {}), dict):
            raise SiteSpecError(f"{where}: {name} must be a table ([{name}]), got {raw[name]!r}")
    try:
        analysis = AnalysisSettings.from_dict(raw.get("analysis", {}), "analysis.")
    except InputError as err:
        raise SiteSpecError(f"{where}: {err}") from None
    views = _read(where, raw.get("views", {}), _TABLES["views"], prefix="views.")

    max_images = _positive(where, "max_images", top["max_images"])
    for key in ("attention_images", "partial_images"):  # asked for more images than are read
        value = getattr(analysis, key)
        if key in raw.get("analysis", {}) and value != ALL_IMAGES and value > max_images:
            raise SiteSpecError(
                f"{where}: analysis.{key} = {value} exceeds max_images = {max_images}"
            )
    thumbnail_size = views["thumbnail_size"]
    if thumbnail_size is None:
        thumbnail_size = analysis.thumbnail_size
    _positive(where, "views.thumbnail_size", thumbnail_size)
    if thumbnail_size > analysis.thumbnail_size:
        raise SiteSpecError(
            f"{where}: views.thumbnail_size = {thumbnail_size} is larger than the thumbnails the "
            f"run keeps, analysis.thumbnail_size = {analysis.thumbnail_size}; give [analysis] "
            f"thumbnail_size = {thumbnail_size} too"
        )
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
    return SiteSpec(
        path=where.resolve(),
        title=top["title"],
        model=_source(where, "model", top["model"], folder=None),
        images=_source(where, "images", top["images"], folder=True),
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
    )
