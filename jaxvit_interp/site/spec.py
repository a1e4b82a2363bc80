"""Site specs: a TOML file naming the model, the images and the options of one publishable site.

Example (``sites/digits.toml``)::

    title = "How attention works in a ViT trained on handwritten digits"
    model = "builtin:digits"          # or a checkpoint path, relative to this file
    images = "builtin:digits"         # or an image folder, relative to this file
    # labels = "labels.csv"           # optional CSV of image ids and labels
    max_images = 300                  # images analysed and shown in the overview
    attention_images = 32             # images whose attention the page holds (default "all")
    partial_images = 32               # images with partial pruning (default: attention_images,
                                      # or 64 when that is "all")

    [analysis]
    seed = 0                          # which images are sampled, and the analysis's randomness
    batch_size = 64                   # any other AnalysisSettings field may follow

    [views]
    metrics = ["prob", "prob_drop", "kl", "layer", "repr", "flip", "taylor"]
    default_metric = "prob"
    default_kind = "cls"              # pattern kind D shows first: "cls" or "patch"
    thumbnail_size = 64               # thumbnails shrunk to at most this many pixels a side
    compression = 0                   # gzip level of the page's arrays (0: opens fastest)

Every key is checked: an unknown key, a wrong type or a missing file is an error naming it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from jaxvit_interp.errors import InputError
from jaxvit_interp.quantities import METRIC_NAMES, THUMBNAIL_SIZE

BUILTINS = ("builtin:digits",)
ALL_IMAGES = "all"
# Images with partial pruning when the spec keeps every image's attention and names no count.
DEFAULT_PARTIAL = 64
PATTERN_KINDS = ("cls", "patch")


class SiteSpecError(InputError):
    """A site spec that cannot be used; the message names the file and the key."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiteSpec:
    """A parsed, checked site spec. Paths are resolved against the spec's folder.

    Attributes:
      path: the spec file.
      title: the page title (``None``: derived from the model).
      model: ``"builtin:digits"`` or the checkpoint path.
      images: ``"builtin:digits"`` or the image folder.
      labels: the labels CSV, or ``None``.
      max_images: images analysed and shown.
      attention_images: ``"all"``, or how many images' attention matrices the page holds.
      partial_images: images with partial-pruning results.
      seed: randomness of image sampling and of the analysis.
      batch_size: images per model batch in the analysis.
      analysis: the whole ``[analysis]`` table: keyword arguments of
        :class:`~jaxvit_interp.pipeline.settings.AnalysisSettings`.
      metrics: importance metrics listed in B's menu, in order.
      default_metric: the metric shown first; None: the first of ``metrics`` that the results
        have (a backbone without a classifier has ``layer`` and ``repr`` only).
      default_kind: the pattern kind D shows first.
      thumbnail_size: largest thumbnail side in pixels.
      compression: gzip level (0-9) of the page's arrays.
    """

    path: Path
    title: str | None
    model: str | Path
    images: str | Path
    labels: Path | None
    max_images: int
    attention_images: int | str
    partial_images: int
    seed: int
    batch_size: int
    analysis: dict[str, Any]
    metrics: tuple[str, ...]
    default_metric: str | None
    default_kind: str
    thumbnail_size: int
    compression: int

    def site_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`jaxvit_interp.site.build_site` this spec fixes."""
        return {
            "title": self.title,
            "max_attention_images": (
                None if self.attention_images == ALL_IMAGES else self.attention_images
            ),
            "metrics": list(self.metrics),
            "default_metric": self.default_metric,
            "default_kind": self.default_kind,
            "thumbnail_size": self.thumbnail_size,
            "compression": self.compression,
        }


# key -> (type, default); a default of ... marks a required key.
_TOP: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "title": (str, None),
    "model": (str, ...),
    "images": (str, ...),
    "labels": (str, None),
    "max_images": (int, 300),
    "attention_images": ((int, str), "all"),
    "partial_images": (int, None),
}
_TABLES: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "analysis": {"seed": (int, 0), "batch_size": (int, 64)},
    "views": {
        "metrics": (list, list(METRIC_NAMES)),
        "default_metric": (str, None),
        "default_kind": (str, "cls"),
        "thumbnail_size": (int, THUMBNAIL_SIZE),
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
    """A ``builtin:`` name as is, or a path resolved against the spec's folder that exists."""
    if value.startswith("builtin:") and builtin_ok:
        if value not in BUILTINS:
            raise SiteSpecError(
                f"{where}: {key} = {value!r} is not a built-in (known: {', '.join(BUILTINS)})"
            )
        return value
    path = (where.parent / value).resolve()
    if not path.exists():
        raise SiteSpecError(f"{where}: {key} = {value!r}: no such file or folder ({path})")
    if folder is True and not path.is_dir():
        raise SiteSpecError(f"{where}: {key} = {value!r} must be a folder ({path})")
    if folder is False and not path.is_file():
        raise SiteSpecError(f"{where}: {key} = {value!r} must be a file ({path})")
    return path


def load_site_spec(path: str | Path) -> SiteSpec:
    """Read and check a site spec; raises :class:`SiteSpecError` naming the bad key or file."""
    where = Path(path)
    if not where.is_file():
        raise SiteSpecError(f"site spec {where} does not exist")
    try:
        raw = tomllib.loads(where.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SiteSpecError(f"{where}: not valid TOML: {err}") from None
    top = _read(where, raw, _TOP)
    tables = {}
    analysis_table = raw.get("analysis", {})
    if isinstance(analysis_table, dict):
        # Beyond the keys read here, [analysis] takes any AnalysisSettings field, checked there.
        from jaxvit_interp.pipeline.settings import AnalysisSettings

        extra = {k: v for k, v in analysis_table.items() if k not in _TABLES["analysis"]}
        try:
            AnalysisSettings.from_dict(extra)
        except (TypeError, ValueError) as err:
            message = str(err).replace("unknown analysis setting(s): ", "unknown key 'analysis.")
            if message != str(err):
                message += "'"
            raise SiteSpecError(f"{where}: {message}") from None
    for name, schema in _TABLES.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise SiteSpecError(f"{where}: {name} must be a table ([{name}]), got {table!r}")
        if name == "analysis":
            table = {k: v for k, v in table.items() if k in schema}
        tables[name] = _read(where, table, schema, prefix=f"{name}.")
    analysis, views = tables["analysis"], tables["views"]

    max_images = _positive(where, "max_images", top["max_images"])
    attention_images = top["attention_images"]
    if attention_images != ALL_IMAGES:
        if isinstance(attention_images, str):
            raise SiteSpecError(
                f"{where}: attention_images must be {ALL_IMAGES!r} or a count, got "
                f"{attention_images!r}"
            )
        _positive(where, "attention_images", attention_images)
    partial_images = top["partial_images"]
    if partial_images is None:
        partial_images = min(
            max_images, DEFAULT_PARTIAL if attention_images == ALL_IMAGES else attention_images
        )
    partial_images = _positive(where, "partial_images", partial_images)
    counts = (("attention_images", attention_images), ("partial_images", partial_images))
    for key, value in counts:
        if value != ALL_IMAGES and value > max_images:
            raise SiteSpecError(f"{where}: {key} = {value} exceeds max_images = {max_images}")
    _positive(where, "analysis.batch_size", analysis["batch_size"])
    _positive(where, "views.thumbnail_size", views["thumbnail_size"])
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
        attention_images=attention_images,
        partial_images=partial_images,
        seed=analysis["seed"],
        batch_size=analysis["batch_size"],
        analysis={**analysis_table, **analysis},
        metrics=tuple(metrics),
        default_metric=default_metric,
        default_kind=views["default_kind"],
        thumbnail_size=views["thumbnail_size"],
        compression=views["compression"],
    )
