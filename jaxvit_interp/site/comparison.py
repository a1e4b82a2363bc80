"""Several runs -> one offline comparison site: a comparison page and each run's own site.

Layout of ``out_dir``:

- ``index.html``: the comparison page (Bokeh, inline, nothing from the network): per layer on a
  relative depth axis, each run's mean head entropy, attention distance and mean hop; the spread
  of head importance per run; the attention patches pay each kind of special token; a table of
  each run's shape, the heads carrying half of the importance and the heads removable before
  accuracy falls (where the run has a head-set stage); and which images the runs share. One
  colour per run; every legend names the run and its checkpoint. Everything drawn is a summary
  of values the bundles hold (:mod:`jaxvit_interp.compare`), computed here once.
- ``images.html``: per image, each run's rollout, explanation maps and prediction side by side
  (:mod:`~jaxvit_interp.site.comparison_images`).
- ``patterns.html``: the runs' shared pattern space (:mod:`~jaxvit_interp.site.comparison_patterns`),
  where the site has one.
- ``models/<name>/``: each run's full single-model site, written by
  :func:`~jaxvit_interp.site.document.build_site` unchanged but for a link above its title back
  to the comparison (``back_link``); the page's model menu (the switcher) and its links open
  them. ``<name>`` is the run's name made safe for a folder.
- ``shared-patterns/``: the runs' shared pattern space (:mod:`jaxvit_interp.patterns.shared`),
  drawn by ``patterns.html``; built again for the same runs and settings, the site reads it
  back instead of training again.

The three comparison pages are separate files, linked from each other's heading, because each
panel is dozens of plots: one page holding all three took 4.3-4.8 s to open for five
ViT-B/16-sized runs (``benchmarks/compare_site_large.py``), each page alone opens within 3 s.

Every run is checked before anything is written: fewer than two runs, a folder that is not a
results bundle or one of a version this package does not read is refused with an error naming
the run. The model sites and the other pages are written first and ``index.html`` last, so a
reader never finds a comparison page whose links lead nowhere.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, CustomJS, Div, FactorRange, Legend, Select
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.resources import INLINE

from jaxvit_interp.bundle import BundleError, ResultsBundle, load_bundle
from jaxvit_interp.compare import SPECIAL_KINDS, RunSummary, match_images, summarize_run
from jaxvit_interp.errors import InputError
from jaxvit_interp.model.identity import identity_label
from jaxvit_interp.parallel import all_devices_mesh
from jaxvit_interp.patterns.shared import (
    SHARED_DIR,
    SharedPatternSettings,
    SharedPatternSpace,
    load_or_compute,
)
from jaxvit_interp.progress import ProgressArg
from jaxvit_interp.site.comparison_images import image_panel
from jaxvit_interp.site.comparison_patterns import shared_patterns_panel
from jaxvit_interp.site.document import INDEX_FILE, build_site
from jaxvit_interp.site.views.common import FONT
from jaxvit_interp.storage import write_text

MODELS_DIR = "models"
# The comparison's pages beside index.html: per image side by side, and the shared pattern space.
IMAGES_FILE = "images.html"
PATTERNS_FILE = "patterns.html"
# The per-layer profiles the page plots, with their axis titles.
LAYER_PLOTS = {
    "entropy": "mean head entropy (nats)",
    "distance": "mean attention distance (patches)",
    "hop": "mean hop of hop strength (patches)",
}
PLOT_WIDTH = 420
PLOT_HEIGHT = 300


def run_names(paths: list[str | Path]) -> list[str]:
    """Each run's name: its folder's name, made unique with ``-2``, ``-3``, ... in order."""
    names: list[str] = []
    for path in paths:
        base = Path(path).resolve().name or "run"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def load_runs(paths: list[str | Path]) -> tuple[list[str], list[ResultsBundle]]:
    """The names and loaded bundles of the run folders ``paths``; every one is read before any
    is used, and one that cannot be read is refused with an :class:`InputError` naming it."""
    if len(paths) < 2:
        raise InputError(f"a comparison needs at least two runs, got {len(paths)}")
    bundles = []
    for path in paths:
        if not Path(path).is_dir():
            raise InputError(f"run {path}: no such folder")
        try:
            bundles.append(load_bundle(path))
        except BundleError as err:
            raise InputError(f"run {path} cannot be compared: {err}") from None
    return run_names(paths), bundles


def _folder_name(name: str, taken: set[str]) -> str:
    """``name`` with only letters, digits, ``.``, ``_`` and ``-``, unique among ``taken``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "run"
    folder, n = safe, 2
    while folder in taken:
        folder, n = f"{safe}-{n}", n + 1
    taken.add(folder)
    return folder


def _check_runs(bundles: list[ResultsBundle], names: list[str] | None) -> list[str]:
    """The runs' names (``run-1``, ... by default), after every bundle has been validated."""
    if len(bundles) < 2:
        raise InputError(f"a comparison needs at least two runs, got {len(bundles)}")
    names = list(names) if names is not None else [f"run-{i + 1}" for i in range(len(bundles))]
    if len(names) != len(bundles) or len(set(names)) != len(names):
        raise InputError(f"the runs need one distinct name each; got {names} for {len(bundles)}")
    for name, bundle in zip(names, bundles):
        if not isinstance(bundle, ResultsBundle):
            raise InputError(f"run {name} is not a results bundle ({type(bundle).__name__})")
        try:
            bundle.validate()
        except BundleError as err:
            raise InputError(f"run {name} cannot be compared: {err}") from None
    return names


def _legend_label(name: str, bundle: ResultsBundle) -> str:
    return f"{name}: {identity_label(bundle.meta.get('checkpoint'))}"


def _layer_figures(labels, summaries: list[RunSummary], colours) -> list:
    """One figure per profile of :data:`LAYER_PLOTS`, a line per run over relative depth; the
    data source of run ``i`` is named ``layers_{i}``."""
    sources = [
        ColumnDataSource({k: list(v) for k, v in s.layers.items()}, name=f"layers_{i}")
        if s.layers is not None
        else None
        for i, s in enumerate(summaries)
    ]
    figures = []
    for field, title in LAYER_PLOTS.items():
        fig = figure(
            width=PLOT_WIDTH,
            height=PLOT_HEIGHT,
            title=title,
            x_axis_label="relative depth (layer + 0.5) / layers",
            x_range=(0, 1),
            name=f"compare_{field}",
            tools="pan,wheel_zoom,reset,save,hover",
            tooltips=[("depth", "@depth{0.00}"), (field, f"@{field}{{0.000}}")],
        )
        items = []
        for label, source, colour in zip(labels, sources, colours):
            if source is None:
                continue
            line = fig.line("depth", field, source=source, color=colour, line_width=2)
            dots = fig.scatter("depth", field, source=source, color=colour, size=6)
            items.append((label, [line, dots]))
        fig.add_layout(Legend(items=items, label_text_font_size="10px"), "below")
        figures.append(fig)
    return figures


def _spread_figure(labels, summaries: list[RunSummary], colours):
    """Share of the importance carried by the most important heads, a line per run; run ``i``'s
    data source is named ``spread_{i}``."""
    fig = figure(
        width=PLOT_WIDTH,
        height=PLOT_HEIGHT,
        title="spread of head importance",
        x_axis_label="fraction of heads, most important first",
        y_axis_label="share of the total |mean importance|",
        x_range=(0, 1),
        y_range=(0, 1.02),
        name="compare_spread",
        tools="pan,wheel_zoom,reset,save,hover",
        tooltips=[("heads", "@fraction{0.00}"), ("share", "@share{0.00}")],
    )
    items = []
    for i, (label, summary, colour) in enumerate(zip(labels, summaries, colours)):
        if summary.spread is None:
            continue
        source = ColumnDataSource(
            {k: list(v) for k, v in summary.spread.items()}, name=f"spread_{i}"
        )
        line = fig.line("fraction", "share", source=source, color=colour, line_width=2)
        items.append((f"{label} ({summary.metric})", [line]))
    fig.add_layout(Legend(items=items, label_text_font_size="10px"), "below")
    return fig


def _special_figure(names, labels, summaries: list[RunSummary], colours):
    """Bars of each run's mass on each kind of special token; the data source is ``special``."""
    bars = [
        (kind, i) for kind in SPECIAL_KINDS for i, s in enumerate(summaries) if kind in s.special
    ]
    factors = [(kind, names[i]) for kind, i in bars]
    source = ColumnDataSource(
        {
            "x": factors,
            "mass": [summaries[i].special[kind] for kind, i in bars],
            "run": [labels[i] for _, i in bars],
            "colour": [colours[i] for _, i in bars],
        },
        name="special",
    )
    fig = figure(
        width=PLOT_WIDTH,
        height=PLOT_HEIGHT,
        title="attention a patch pays special tokens",
        x_range=FactorRange(*factors) if factors else FactorRange("none"),
        y_axis_label="mean over layers and heads",
        name="compare_special",
        tools="save,hover",
        tooltips=[("run", "@run"), ("mass", "@mass{0.000}")],
    )
    fig.vbar(x="x", top="mass", width=0.8, source=source, color="colour")
    fig.xaxis.major_label_orientation = 0.8
    fig.y_range.start = 0
    return fig


def _table(names, bundles, summaries: list[RunSummary], colours) -> Div:
    """Each run's shape, its importance spread in words and its removable heads."""
    rows = []
    for name, bundle, summary, colour in zip(names, bundles, summaries, colours):
        config = bundle.meta["config"]
        heads = summary.num_layers * summary.num_heads
        half = "-"
        if summary.spread is not None and np.isfinite(summary.spread["share"]).all():
            # The share grows with k: the first k that reaches 1/2 is how many stay below it.
            carrying = int((summary.spread["share"] < 0.5).sum())
            half = f"{carrying} of {heads} ({summary.metric})"
        removable = "-"
        if summary.removable:
            removable = "; ".join(
                f"{order}: " + ", ".join(f"{n:g} at -{p:g} pt" for p, n in counts.items())
                for order, counts in summary.removable.items()
            )
        cells = [
            f'<span style="color:{colour}">&#9632;</span> {html.escape(name)}',
            html.escape(identity_label(bundle.meta.get("checkpoint"))),
            f"{summary.num_layers} x {summary.num_heads}",
            f"{config['patch_size'][0]} px, {config['image_size'][0]}x{config['image_size'][1]}",
            html.escape(", ".join(bundle.meta.get("special_tokens") or []) or "none"),
            half,
            removable,
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = [
        "run",
        "checkpoint",
        "layers x heads",
        "patch, image",
        "special tokens",
        "heads carrying half the importance",
        "heads removable before accuracy falls",
    ]
    return Div(
        text=f'<table style="font:12px {FONT};border-collapse:collapse" cellpadding="4">'
        "<tr>" + "".join(f"<th align=left>{h}</th>" for h in head) + "</tr>" + "".join(rows)
        + "</table>",
        name="compare_table",
    )  # fmt: skip


def _images_note(names, bundles) -> str:
    """Which images the runs share, and what the views then compare."""
    match = match_images([b.meta["image_ids"] for b in bundles])
    counts = ", ".join(f"{n}: {len(b.meta['image_ids'])}" for n, b in zip(names, bundles))
    if match.same:
        return f"Every run saw the same {len(match.shared)} images (matched by id)."
    if match.distributions_only:
        return (
            f"The runs share no image (images per run: {counts}): every view compares "
            "distributions over each run's own images, not the same images."
        )
    return (
        f"{len(match.shared)} images are in every run (images per run: {counts}); every view "
        "is a mean over each run's own images, so it compares distributions."
    )


def _switcher(names, folders) -> tuple[Select, Div]:
    """The model menu that opens a run's own site, and the same as plain links."""
    options = [("", "comparison (this page)")] + [
        (f"{MODELS_DIR}/{folder}/{INDEX_FILE}", name) for name, folder in zip(names, folders)
    ]
    select = Select(title="Show one model's site:", value="", options=options, name="switcher")
    select.js_on_change(
        "value", CustomJS(code="if (this.value) { window.location.href = this.value; }")
    )
    links = " | ".join(
        f'<a href="{MODELS_DIR}/{folder}/{INDEX_FILE}">{html.escape(name)}</a>'
        for name, folder in zip(names, folders)
    )
    return select, Div(text=f'<span style="font:12px {FONT}">{links}</span>', name="model_links")


def _styles(bundles: list[ResultsBundle], names: list[str]) -> tuple[list[str], list[str]]:
    """Each run's colour and legend label, the same on every page."""
    colours = [Category10_10[i % len(Category10_10)] for i in range(len(bundles))]
    return colours, [_legend_label(n, b) for n, b in zip(names, bundles)]


def _heading(title: str, current: str, patterns_page: bool) -> Div:
    """The page's title and the links to the comparison's other pages (``current`` unlinked)."""
    pages = [(INDEX_FILE, "summary"), (IMAGES_FILE, "per image, side by side")]
    if patterns_page:
        pages.append((PATTERNS_FILE, "shared pattern space"))
    links = " | ".join(
        f"<b>{label}</b>" if file == current else f'<a href="{file}">{label}</a>'
        for file, label in pages
    )
    return Div(
        text=f'<div style="font:600 20px {FONT};color:#1f2328">{html.escape(title)}</div>'
        f'<div style="font:13px {FONT};margin-top:4px">Pages: {links}</div>',
        name="compare_title",
    )


def _title(title: str | None, names: list[str]) -> str:
    """The pages' title: the caller's, or the runs' names."""
    return title or "Attention compared: " + ", ".join(names)


def _document(title: str, layout) -> Document:
    doc = Document()
    doc.title = title
    doc.add_root(layout)
    doc.validate()
    return doc


def build_comparison_document(
    bundles: list[ResultsBundle],
    names: list[str],
    folders: list[str],
    *,
    title: str | None = None,
    patterns_page: bool = False,
) -> Document:
    """The comparison's summary page (``index.html``) as a validated Bokeh ``Document``.

    Args:
      bundles: the runs, checked.
      names: each run's name (legends, table, menu).
      folders: each run's folder under ``models/`` (the menu's links).
      title: the page's title; by default, the runs' names.
      patterns_page: the site has a shared pattern space page to link to.
    """
    summaries = [summarize_run(b) for b in bundles]
    colours, labels = _styles(bundles, names)
    title = _title(title, names)
    note = Div(
        text=f'<div style="font:12px {FONT};color:#555">{html.escape(_images_note(names, bundles))}'
        "</div>",
        name="images_note",
    )
    select, links = _switcher(names, folders)
    layout = column(
        _heading(title, INDEX_FILE, patterns_page),
        note,
        row(select, links),
        _table(names, bundles, summaries, colours),
        row(*_layer_figures(labels, summaries, colours)),
        row(
            _spread_figure(labels, summaries, colours),
            _special_figure(names, labels, summaries, colours),
        ),
        name="comparison",
    )
    return _document(title, layout)


def build_images_document(
    bundles: list[ResultsBundle],
    names: list[str],
    *,
    title: str | None = None,
    patterns_page: bool = False,
) -> Document:
    """The comparison's per-image page (``images.html``): each run's rollout, explanation maps
    and prediction for a chosen image, side by side
    (:func:`~jaxvit_interp.site.comparison_images.image_panel`)."""
    colours, _ = _styles(bundles, names)
    title = _title(title, names)
    layout = column(
        _heading(title, IMAGES_FILE, patterns_page),
        image_panel(bundles, names, colours),
        name="comparison",
    )
    return _document(title, layout)


def build_patterns_document(
    space: SharedPatternSpace,
    bundles: list[ResultsBundle],
    names: list[str],
    *,
    title: str | None = None,
) -> Document:
    """The comparison's shared pattern space page (``patterns.html``)
    (:func:`~jaxvit_interp.site.comparison_patterns.shared_patterns_panel`)."""
    colours, labels = _styles(bundles, names)
    title = _title(title, names)
    layout = column(
        _heading(title, PATTERNS_FILE, True),
        shared_patterns_panel(space, labels, colours),
        name="comparison",
    )
    return _document(title, layout)


def build_comparison_site(
    bundles: list[ResultsBundle],
    out_dir: str | Path,
    *,
    names: list[str] | None = None,
    title: str | None = None,
    shared_patterns: bool = True,
    pattern_settings: SharedPatternSettings | None = None,
    progress: ProgressArg = False,
    note: Callable[[str], None] | None = None,
    **site_options: Any,
) -> Path:
    """Write the comparison site of several runs into ``out_dir`` (see the module's docstring).

    Args:
      bundles: at least two results bundles; each is validated before anything is written.
      out_dir: the site's folder (``index.html`` and ``models/``; other files are left alone).
      names: each run's name, distinct (default ``run-1``, ``run-2``, ...; the command names
        them after their folders, :func:`run_names`).
      title: the comparison page's title.
      shared_patterns: compute the runs' shared pattern space (or read it back from
        ``out_dir/shared-patterns/`` when it was computed there for the same runs and
        ``pattern_settings``) and draw it in ``patterns.html``; False: no such page.
      pattern_settings: how the shared pattern space is built
        (:class:`~jaxvit_interp.patterns.shared.SharedPatternSettings`; None: the defaults).
      progress: reports the shared pattern space's work
        (:func:`~jaxvit_interp.progress.start_progress`).
      note: told a line when the shared pattern space is reused, computed or left without a
        kind.
      site_options: given to :func:`~jaxvit_interp.site.document.build_site` for every run's
        own site (``layout``, ``max_attention_images``, ``compression``, ``thumbnail_size``).

    Returns:
      The path of the comparison page's ``index.html``.
    """
    names = _check_runs(bundles, names)
    taken: set[str] = set()
    folders = [_folder_name(n, taken) for n in names]
    out_dir = Path(out_dir)
    shared = None
    if shared_patterns:
        shared = load_or_compute(
            bundles,
            names,
            out_dir / SHARED_DIR,
            pattern_settings,
            mesh=all_devices_mesh(),
            progress=progress,
            note=note,
        )
    with_patterns = shared is not None
    pages = {
        INDEX_FILE: build_comparison_document(
            bundles, names, folders, title=title, patterns_page=with_patterns
        ),
        IMAGES_FILE: build_images_document(
            bundles, names, title=title, patterns_page=with_patterns
        ),
    }
    if with_patterns:
        pages[PATTERNS_FILE] = build_patterns_document(shared, bundles, names, title=title)
    elif (out_dir / PATTERNS_FILE).exists():
        (out_dir / PATTERNS_FILE).unlink()  # an earlier build's, of a space this one left out
    # Each model's site sits two folders below the page: its link back leads there.
    back = (f"../../{INDEX_FILE}", f"back to the comparison of {len(bundles)} models")
    for bundle, folder in zip(bundles, folders):
        build_site(bundle, out_dir / MODELS_DIR / folder, back_link=back, **site_options)
    # index.html last: its links lead to pages already written.
    for file in sorted(pages, key=lambda f: f == INDEX_FILE):
        doc = pages[file]
        written = write_text(out_dir / file, file_html(doc, resources=INLINE, title=doc.title))
    return written
