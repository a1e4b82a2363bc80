"""Results bundle -> one Bokeh document with the four linked views -> an offline site.

Two layouts, both opened straight from the disk (``file://``) or from any static host, with
nothing from the network:

- ``single``: one ``index.html`` carrying every image's record inline (small runs: the digits
  demo);
- ``folder``: ``index.html`` with the views and every table, and one record file per image in
  ``data-<build>/images/`` that the page loads when the image is chosen (thousands of ViT-B
  images with all their attention).

``layout="auto"`` writes one file while the whole page stays under :data:`SINGLE_FILE_LIMIT`
bytes, a folder beyond. Replacing a site is atomic for a reader: a folder site's records are
written into a temporary folder renamed into place under a new name, ``index.html`` (which names
that folder) is then renamed over the old one, and only then are the old records removed.
"""

from __future__ import annotations

import contextlib
import html
import os
import secrets
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.embed import file_html
from bokeh.events import DocumentReady
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, Div
from bokeh.resources import INLINE

from jaxvit_interp.bundle import ResultsBundle
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.identity import identity_label
from jaxvit_interp.quantities import METRIC_NAMES, THUMBNAIL_SIZE
from jaxvit_interp.site import callbacks
from jaxvit_interp.site.records import REGISTRY_SCRIPT, record_name
from jaxvit_interp.site.sources import (
    METRIC_INFO,
    PATTERN_KINDS,
    SiteData,
    make_sources,
    prepare_site_data,
)
from jaxvit_interp.site.views import (
    explanations,
    head_sets,
    importance,
    overview,
    pattern,
    strength,
)
from jaxvit_interp.site.views.common import FONT, Context, text_box, wrap
from jaxvit_interp.storage import write_text

INDEX_FILE = "index.html"
# BokehJS inflates gzip-compressed arrays in plain JavaScript, which costs more opening time
# than the bytes it saves on attention-sized arrays: arrays are stored uncompressed by default.
DEFAULT_COMPRESSION = 0
LAYOUTS = ("auto", "single", "folder")
# The largest page ``layout="auto"`` writes as one file: browsers slow down on larger pages and
# fail somewhere past 50-100 MB.
SINGLE_FILE_LIMIT = 30_000_000
# A folder site's records: DATA_PREFIX + a build id, then RECORDS_DIR.
DATA_PREFIX = "data-"
RECORDS_DIR = "images"


def _check_options(
    metrics, default_metric, default_kind, available: tuple[str, ...]
) -> tuple[list[str], str]:
    """The metrics the menu lists: those asked for (all by default) that the bundle has
    (``available``: a backbone without a classifier has ``layer`` and ``repr`` only)."""
    metrics = list(metrics) if metrics else list(METRIC_NAMES)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown or not metrics:
        raise InputError(
            f"unknown importance metric(s) {unknown}; expected some of {list(METRIC_NAMES)}"
        )
    shown = [m for m in metrics if m in available]
    if not shown:
        raise InputError(
            f"none of the metrics {metrics} is in this results bundle, which has {list(available)}"
        )
    if default_metric is not None and default_metric not in available:
        raise InputError(
            f"default metric {default_metric!r} is not in this results bundle, which has "
            f"{list(available)}"
        )
    default_metric = default_metric or shown[0]
    if default_metric not in shown:
        raise InputError(f"default metric {default_metric!r} is not among the metrics {metrics}")
    if default_kind is not None and default_kind not in PATTERN_KINDS:
        raise InputError(f"default pattern kind {default_kind!r}; expected one of {PATTERN_KINDS}")
    return shown, default_metric


def _initial_head(data, metric: str) -> int:
    """The most important head over all images under ``metric``: where a reader starts."""
    values = np.asarray(data.column("importance", f"{metric}_mean"), np.float64)
    if not np.isfinite(values).any():
        return 0
    if METRIC_INFO[metric]["important_high"]:
        return int(np.nanargmax(values))
    return int(np.nanargmin(values))


def _check_back_link(back_link) -> tuple[str, str] | None:
    """``(href, text)`` checked before any work: both are written into the page's header."""
    if back_link is None:
        return None
    if (
        not isinstance(back_link, (tuple, list))
        or len(back_link) != 2
        or not all(isinstance(part, str) and part for part in back_link)
    ):
        raise InputError(
            f"back_link must be (href, text), two non-empty strings; got {back_link!r}"
        )
    return back_link[0], back_link[1]


def _back_link(href: str, text: str) -> Div:
    """The link above the title back to the page that holds this site (a comparison's)."""
    return Div(
        text=f'<a href="{html.escape(href)}" style="font:12px {FONT};color:#0969da">'
        f"&larr; {html.escape(text)}</a>",
        styles={"margin": "4px 8px 0 8px"},
        name="back_link",
    )


def _header(ctx: Context, title: str, bundle: ResultsBundle, back_link=None):
    info = ctx.info
    where = identity_label(bundle.meta.get("checkpoint"))
    classes = (
        f"{len(info['class_names'])} classes"
        if info["has_classifier"]
        else "a backbone without a classifier (metrics: " + ", ".join(info["metrics"]) + ")"
    )
    # Every special token by the name C4 gives it (strength.special_token_names).
    specials = info["special_tokens"]
    tokens = (
        f" + {len(specials)} special token{'s' * (len(specials) > 1)} ({', '.join(specials)})"
        if specials
        else ""
    )
    stored = f"attention stored for {info['num_attention']} images" + (
        f", partial pruning for {info['num_partial']}" if info["has_classifier"] else ""
    )
    summary = (
        f"{info['num_images']} images, {classes} | ViT with "
        f"{info['num_layers']} layers x {info['num_heads']} heads, "
        f"{info['grid'][0]}x{info['grid'][1]} patches{tokens} | model: {where} | {stored}"
    )
    heading = text_box(
        ctx,
        "site_title",
        title,
        styles={"font": f"600 20px {FONT}", "color": "#1f2328", "margin": "4px 8px 0 8px"},
    )
    sub = text_box(
        ctx,
        "site_summary",
        summary,
        styles={"font": f"12px {FONT}", "color": "#555", "margin": "0 8px"},
    )
    guide = Div(
        text=(
            f'<div style="font:12px {FONT};color:#555;margin:0 8px">Click an image (A) to make '
            "B, C and D local to it; click a head in B, C or D to choose it everywhere; click a "
            "patch (D) to see where it looks; click a class in E to make B local to its images, "
            "or a pair of heads to choose it. Hover any mark for its values.</div>"
        )
    )
    if back_link is None:
        return column(heading, sub, guide)
    return column(_back_link(*back_link), heading, sub, guide)


def build_document(
    bundle: ResultsBundle,
    *,
    title: str | None = None,
    max_attention_images: int | None = None,
    metrics: list[str] | None = None,
    default_metric: str | None = None,
    default_kind: str | None = None,
    thumbnail_size: int | None = THUMBNAIL_SIZE,
    back_link: tuple[str, str] | None = None,
) -> Document:
    """The site as a validated Bokeh ``Document`` (all behaviour in CustomJS).

    Args:
      bundle: a results bundle (validated again here).
      title: page and heading title; defaults to the checkpoint's name.
      max_attention_images: keep the attention of at most this many images of the bundle's
        attention subset (the biggest part of the file).
      metrics / default_metric: the importance metrics the menu lists, and the one shown first.
      default_kind: ``"cls"`` or ``"patch"``: the pattern kind D shows first.
      thumbnail_size: shrink thumbnails to at most this many pixels a side.
      back_link: ``(href, text)`` of a link drawn above the title, back to the page this site
        belongs to (a comparison's model sites link to the comparison page); None: no link, the
        page of ``site RUN``.
    """
    metrics, default_metric = _check_options(metrics, default_metric, default_kind, bundle.metrics)
    back_link = _check_back_link(back_link)
    data = prepare_site_data(
        bundle, max_attention_images=max_attention_images, thumbnail_size=thumbnail_size
    )
    return _document(bundle, data, title, metrics, default_metric, default_kind, back_link)


def _document(
    bundle, data: SiteData, title, metrics, default_metric, default_kind, back_link=None
) -> Document:
    sources = make_sources(data)
    ctx = Context(
        data=data,
        sources=sources,
        options={
            "metrics": metrics,
            "default_metric": default_metric,
            "default_kind": default_kind,
        },
    )
    if title is None:
        checkpoint = (bundle.meta.get("checkpoint") or {}).get("path") or "a Vision Transformer"
        title = f"How attention works in {Path(str(checkpoint)).name}"

    view_a = overview.build(ctx)
    view_b = importance.build(ctx)
    view_c = strength.build(ctx)
    view_d = pattern.build(ctx)
    view_e = head_sets.build(ctx, bundle)
    view_f = explanations.build(ctx)  # E and F with the bundle's parts only
    # E and F are drawn after the opening state (js/deferred_views.js): the page opens with A-D.
    # Held in the row's tags until then, they are in the document (its code updates them, and
    # `doc.get_model_by_name` finds them) without BokehJS building their views.
    deferred = [view for view in (view_e, view_f) if view is not None]
    views = wrap(view_a, column(view_b, view_c), view_d, name="views", tags=deferred)
    layout = column(_header(ctx, title, bundle, back_link), views, name="site")

    first = _initial_head(data, default_metric)
    modes = data.info["pruning_modes"]
    first_mode = modes.index("head") if "head" in modes else 0
    # The state is empty until the page's code first runs, on the document's ready event.
    state = ColumnDataSource(name="state", data={})
    # The page's record loader writes here when a record has arrived (or failed): a redraw.
    records = ColumnDataSource(name="records", data={"image": [], "status": [], "serial": []})
    models = {**sources, **ctx.models, "state": state, "records": records}
    models["heads"].selected.indices = [first]
    models["partial_bars"].selected.indices = [first_mode]

    update = callbacks.update_callback(data.info, models)
    for name in ("images", "heads", "patches", "partial_bars", "class_cells", "interaction_cells"):
        if name in models:  # E1 only with the bundle's head_sets part
            models[name].selected.js_on_change("indices", update)
    ctx.models["metric_select"].js_on_change("value", update)
    ctx.models["kind_toggle"].js_on_change("active", update)
    if "patching_pair" in ctx.models:  # B5's menu, with the bundle's patching part
        ctx.models["patching_pair"].js_on_change("value", update)
    records.js_on_change("data", update)
    search_args = {k: models[k] for k in ("images", "search", "search_status")}
    search_args["has_classifier"] = data.info["has_classifier"]
    ctx.models["search"].js_on_change("value", callbacks.search_callback(search_args))
    ctx.models["global_button"].js_on_event("button_click", callbacks.global_callback(search_args))
    if "cls_query_button" in ctx.models:
        ctx.models["cls_query_button"].js_on_event(
            "button_click", callbacks.cls_query_callback({"patches": models["patches"]})
        )

    doc = Document()
    doc.title = title
    doc.add_root(layout)
    doc.js_on_event(DocumentReady, update)
    if deferred:
        doc.js_on_event(DocumentReady, callbacks.deferred_views_callback(views, state))
    doc.validate()
    return doc


@contextlib.contextmanager
def _compression(level: int):
    """Bokeh's array compression level while the page is written, then the caller's again."""
    from bokeh.settings import SettingProvenance, settings

    if not 0 <= level <= 9:
        raise InputError(f"compression level must be 0..9 (gzip levels), got {level}")
    setting = settings.compression_level
    previous, provenance = setting.get_value_with_provenance()
    setting.set_value(level)
    try:
        yield
    finally:
        if provenance is SettingProvenance.USER_SET:
            setting.set_value(previous)
        else:
            setting.unset_value()


def build_site(
    bundle: ResultsBundle | list[ResultsBundle] | tuple[ResultsBundle, ...],
    out_dir: str | Path,
    *,
    title: str | None = None,
    max_attention_images: int | None = None,
    compression: int = DEFAULT_COMPRESSION,
    layout: str = "auto",
    back_link: tuple[str, str] | None = None,
    **options: Any,
) -> Path:
    """Write the site into ``out_dir`` (``index.html``, plus its records folder when ``folder``).

    ``layout`` is ``"single"`` (one file), ``"folder"`` (records in files beside the page) or
    ``"auto"`` (one file up to :data:`SINGLE_FILE_LIMIT` bytes). ``compression`` is the gzip
    level (0-9) of the page's tables: 0 opens fastest. Other ``options`` go to
    :func:`build_document` (``metrics``, ``default_metric``, ``default_kind``,
    ``thumbnail_size``). ``back_link``: ``(href, text)`` of a link above the title back to
    the page the site belongs to (:func:`build_document`). Other files in ``out_dir`` are left
    alone. Returns the path of ``index.html``.

    Given a list of bundles, writes their comparison site instead
    (:func:`~jaxvit_interp.site.comparison.build_comparison_site`, its runs named ``run-1``,
    ``run-2``, ...; every option but ``back_link`` goes to each run's own site, ``title`` to the
    comparison pages).
    """
    if isinstance(bundle, (list, tuple)):
        from jaxvit_interp.site.comparison import build_comparison_site  # imports this module

        if back_link is not None:
            raise InputError("back_link is for one model's site, not a comparison of several")
        return build_comparison_site(
            list(bundle), out_dir, title=title, max_attention_images=max_attention_images,
            compression=compression, layout=layout, **options,
        )  # fmt: skip
    if layout not in LAYOUTS:
        raise InputError(f"site layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    metrics, default_metric = _check_options(
        options.pop("metrics", None), options.pop("default_metric", None),
        options.get("default_kind"), bundle.metrics,
    )  # fmt: skip
    thumbnail_size = options.pop("thumbnail_size", THUMBNAIL_SIZE)
    default_kind = options.pop("default_kind", None)
    if options:
        raise InputError(f"unknown site option(s): {', '.join(sorted(options))}")
    if not 0 <= compression <= 9:
        raise InputError(f"compression level must be 0..9 (gzip levels), got {compression}")
    back_link = _check_back_link(back_link)
    data = prepare_site_data(
        bundle, max_attention_images=max_attention_images, thumbnail_size=thumbnail_size
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build = secrets.token_hex(4)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{DATA_PREFIX}{build}."))
    try:
        records = staging / RECORDS_DIR
        records.mkdir()
        total = _write_records(data, records)
        if layout == "auto":
            layout = "single" if total <= SINGLE_FILE_LIMIT else "folder"
        data_dir = None
        if layout == "folder":
            data_dir = out_dir / f"{DATA_PREFIX}{build}"
            staging.rename(data_dir)  # complete before index.html names it
            data.info["records"].update(inline=False, folder=f"{data_dir.name}/{RECORDS_DIR}")
        doc = _document(bundle, data, title, metrics, default_metric, default_kind, back_link)
        with _compression(compression):
            page = file_html(doc, resources=INLINE, title=doc.title)
        # First in <head>, before BokehJS (whose inline code may spell "</head>" itself).
        charset = '<meta charset="utf-8">'
        head = REGISTRY_SCRIPT + deferred_script(doc)
        page = page.replace(charset, charset + "\n" + head, 1)
        if layout == "single":
            inline = "".join(
                f"<script>{(records / record_name(i)).read_text('utf-8')}</script>\n"
                for i in range(data.info["num_images"])
            )
            page = _before_last(page, "</body>", inline)
        path = write_text(out_dir / INDEX_FILE, page)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Only now that index.html names the new records (or none) may the old ones go.
    for old in out_dir.glob(f"{DATA_PREFIX}*"):
        if old.is_dir() and old != data_dir:
            shutil.rmtree(old, ignore_errors=True)
    for old in out_dir.glob(f".{DATA_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)  # left by an interrupted build
    return path


def deferred_script(doc: Document) -> str:
    """The page's count of views drawn after the opening state (those the ``views`` row holds in
    its tags, ``js/deferred_views.js``), set in its head, before BokehJS runs, so that whoever
    waits for them never reads it unset."""
    pending = len(doc.get_model_by_name("views").tags)
    return f"<script>window.jaxvitDeferred = {{pending: {pending}}};</script>\n"


def _before_last(text: str, marker: str, insert: str) -> str:
    at = text.rindex(marker)
    return text[:at] + insert + text[at:]


def _write_records(data: SiteData, folder: Path) -> int:
    """One record file per image in ``folder``; returns the bytes of the page's data.

    Records are encoded on a few threads: deflate and JPEG encoding, most of the work, run
    outside Python's lock; a few records at a time are in memory.
    """
    total, workers = 0, min(8, os.cpu_count() or 1)
    count = data.info["num_images"]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, count, 4 * workers):
            images = range(start, min(count, start + 4 * workers))
            for image, script in zip(images, pool.map(data.record, images), strict=True):
                (folder / record_name(image)).write_text(script, encoding="utf-8")
                total += len(script)
    return total


__all__ = ["INDEX_FILE", "LAYOUTS", "build_document", "build_site"]
