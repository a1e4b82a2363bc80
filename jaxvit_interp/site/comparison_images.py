"""The comparison page's per-image panel: each run's rollout, explanation maps and prediction for
one chosen image, side by side.

The images are those every run holds, matched by id (:func:`~jaxvit_interp.compare.
compare_images`), in the first run's order; a menu (its previous / next buttons, and a strip of
the photos of :data:`STRIP` images at a time, the chosen one's page) chooses one: a menu of 1,000
entries stays usable where 1,000 thumbnails side by side would not. For the chosen image each
run has a column: the image's photo under the run's rollout map, on the run's own patch grid, in
view D4's overlay style (the same palette, each map scaled to its own maximum); under it, in the
same plot (a page of several runs opens faster with fewer plots), a small map per explanation
method where the run has the explanations part and the image is one it explained (view F1's
style, each map scaled to its own range); and the prediction in words (class, probability, and
whether it is the label where the run knows it). When the runs share no image, each column shows
its own run's first images, and the panel says so (and has no strip).

Everything the page needs for every image is stored once, compactly, in named
``ColumnDataSource`` columns (BokehJS decodes NumPy arrays of these types as typed arrays):

- the menu ``images_select`` (its value: the chosen image's place) and the strip
  ``images_strip``: an entry per image shown, its id (runs sharing no image: its
  place, and each run's own id in ``text``);
- ``images_run_{r}``: a row per image for run ``r``: its row in the run (``image``), its
  prediction in words (``text``), the rollout map's range (``rollout_lo``, ``rollout_hi``), its
  row among the explained images shown (``explain_row``, -1: not explained) and its photo's row
  in the photos table (``photo``);
- ``images_rollout_{r}``: ``code``, uint8, a map of ``gh * gw`` codes per image, row-major;
- ``images_explain_{r}`` (``code``, uint8, ``method * gh * gw`` per explained image) and
  ``images_explain_range_{r}`` (``lo``, ``hi``, float32, a row per explained image and method);
- ``images_photos``: ``jpeg``, the photos as JPEG ``data:`` URLs (the analysis's thumbnails,
  at most :data:`PHOTO_SIZE` pixels a side, quality :data:`PHOTO_QUALITY`; the browser decodes
  them natively; at 48 px a photo measured 2.0-3.4 kB, against 12.3 kB of base64 packed RGBA,
  the single-model page's thumbnails' encoding), once for every run when the runs share the images (the first
  run's), one table per run (``images_photos_{r}``) when not.

A map is coded to its own range: ``code = round(255 (v - lo) / (hi - lo))``, read back as
``lo + code (hi - lo) / 255`` (:func:`encode_maps`, :func:`decode_maps`), within ``(hi - lo) /
510`` of the stored value; a constant map is all ``lo``. The page's code (``js/compare_images.js``)
decodes the chosen image's maps when it is chosen; the first image is drawn at build time.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    Column,
    ColumnDataSource,
    CustomJS,
    Div,
    HoverTool,
    LinearColorMapper,
    Range1d,
    Select,
    TapTool,
)
from bokeh.transform import dodge

from jaxvit_interp.bundle import ResultsBundle
from jaxvit_interp.compare import ImageComparison, RunImages, compare_images
from jaxvit_interp.site.callbacks import js_code
from jaxvit_interp.site.records import jpeg_data_url
from jaxvit_interp.site.sources import pack_thumbnails
from jaxvit_interp.site.views.common import FONT, patch_cells, plot, text_box
from jaxvit_interp.site.views.pattern import HEAT_PALETTE

# The photos' longest side in pixels (the analysis's thumbnails' size) and their JPEG quality:
# 2-3.5 kB an image as a data URL at 48 px, stored once for all runs.
PHOTO_SIZE = 48
PHOTO_QUALITY = 90
# A run's rollout panel in pixels a side (the grid's longer side).
ROLLOUT_PX = 200
# The chooser's strip: photos a page, their side in pixels, and the gap between them (a share).
STRIP = 12
STRIP_PX = 56
STRIP_GAP = 0.12
# Explanation maps a row, under the rollout and as wide; the pixels a letter of their names takes.
EXPLAIN_ACROSS = 3
LABEL_CHAR_PX = 5.5
LEVELS = 255
NO_EXPLANATIONS = "no explanations part in this run"


def encode_maps(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps ``[..., gh, gw]`` -> ``(codes uint8 [..., gh * gw], lo float32 [...], hi float32
    [...])``, each map coded to its own finite range; values that are not finite are coded as
    ``lo``."""
    maps = np.asarray(maps, np.float64)
    flat = maps.reshape(*maps.shape[:-2], -1)
    finite = np.isfinite(flat)
    any_finite = finite.any(axis=-1)
    lo = np.where(any_finite, np.min(np.where(finite, flat, np.inf), axis=-1), 0.0)
    hi = np.where(any_finite, np.max(np.where(finite, flat, -np.inf), axis=-1), 0.0)
    lo, hi = lo.astype(np.float32), hi.astype(np.float32)
    span = (hi.astype(np.float64) - lo)[..., None]
    scaled = np.where(finite, flat - lo[..., None], 0.0) / np.where(span > 0, span, 1.0)
    codes = np.clip(np.rint(scaled * LEVELS), 0, LEVELS).astype(np.uint8)
    return codes, lo, hi


def decode_maps(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """What :func:`encode_maps` coded, read back as the page reads it: ``[..., gh * gw]``."""
    lo = np.asarray(lo, np.float64)[..., None]
    hi = np.asarray(hi, np.float64)[..., None]
    return lo + np.asarray(codes, np.float64) * (hi - lo) / LEVELS


def prediction_text(run: RunImages, j: int, *, with_id: bool) -> str:
    """Run ``run``'s prediction for its ``j``-th image in words (and the image's id)."""
    head = f"image {run.ids[j]}: " if with_id else ""
    if run.predicted is None:
        return head + "a backbone without a classifier: no prediction"
    text = (
        f"predicted {run.class_names[run.predicted[j]]} "
        f"(p = {float(run.probability[j]):.3f})"  # type: ignore[index]
    )
    if run.label is None:
        return head + text + "; no label (the labels are the model's own predictions)"
    label = run.class_names[run.label[j]]
    verdict = "correct" if run.predicted[j] == run.label[j] else "wrong"
    return head + f"{text}; label {label}: {verdict}"


def photo_pixels(bundle: ResultsBundle, index, size: int = PHOTO_SIZE) -> np.ndarray:
    """``[n, h, w, 3]`` uint8: the photos of the bundle's images ``index`` as the panel stores
    them (before JPEG): their thumbnails shrunk to ``size`` a side as the single-model page
    shrinks them (:func:`~jaxvit_interp.site.sources.pack_thumbnails`)."""
    thumbnails = np.asarray(bundle["images"]["thumbnails"][np.asarray(index, np.int64)])
    packed = pack_thumbnails(thumbnails, size)
    return packed.view(np.uint8).reshape(*packed.shape, 4)[..., :3]  # little-endian: R first


def _photos(bundle: ResultsBundle, index, size: int) -> list[str]:
    """The photos of the bundle's images ``index`` as JPEG ``data:`` URLs."""
    return [jpeg_data_url(p, PHOTO_QUALITY) for p in photo_pixels(bundle, index, size)]


def panel_tables(
    bundles: list[ResultsBundle], comparison: ImageComparison, *, photo_size: int = PHOTO_SIZE
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The menu's entries and the panel's stored tables (source name -> columns; see the
    module's docstring)."""
    tables: dict[str, dict[str, Any]] = {}
    first = comparison.runs[0]
    if comparison.shared:
        menu = list(first.ids)
        tables["images_photos"] = {"jpeg": _photos(bundles[0], first.index, photo_size)}
    else:
        count = max(len(run.index) for run in comparison.runs)
        menu = [f"image {j + 1} of each run" for j in range(count)]
    count = len(menu)
    for r, (bundle, run) in enumerate(zip(bundles, comparison.runs, strict=True)):
        n = len(run.index)
        # A run with fewer images than the menu (runs sharing none) repeats its last one.
        at = np.minimum(np.arange(count), n - 1) if n else np.zeros(count, np.int64)
        if not comparison.shared:
            tables[f"images_photos_{r}"] = {"jpeg": _photos(bundle, run.index, photo_size)}
        table: dict[str, Any] = {
            "image": run.index[at].astype(np.int32),
            "text": [prediction_text(run, int(j), with_id=not comparison.shared) for j in at],
            "photo": at.astype(np.int32),
            "rollout_lo": np.zeros(count, np.float32),
            "rollout_hi": np.zeros(count, np.float32),
            "explain_row": np.full(count, -1, np.int32),
        }
        codes = np.zeros(0, np.uint8)
        if run.rollout is not None:
            codes, table["rollout_lo"], table["rollout_hi"] = encode_maps(run.rollout[at])
        tables[f"images_rollout_{r}"] = {"code": codes.reshape(-1)}
        explained = np.flatnonzero(run.explain_row[at] >= 0)
        table["explain_row"][explained] = np.arange(len(explained), dtype=np.int32)
        codes = np.zeros(0, np.uint8)
        lo = hi = np.zeros(0, np.float32)
        if run.explain_maps is not None:
            codes, lo, hi = encode_maps(run.explain_maps[at[explained]])
        tables[f"images_explain_{r}"] = {"code": codes.reshape(-1)}
        tables[f"images_explain_range_{r}"] = {"lo": lo.reshape(-1), "hi": hi.reshape(-1)}
        tables[f"images_run_{r}"] = table
    return menu, tables


def _cells(tables: dict, r: int, run: RunImages, j: int) -> dict[str, list]:
    """Run ``r``'s overlay columns for image ``j`` (what ``js/compare_images.js`` computes when
    an image is chosen): the rollout's ``heat`` and ``alpha`` (D4's), each method's
    ``heat_{m}`` and ``alpha_{m}`` (F1's)."""
    gh, gw = run.grid
    P = gh * gw
    table = tables[f"images_run_{r}"]
    code = tables[f"images_rollout_{r}"]["code"]
    heat = np.zeros(P)
    if len(code):
        heat = decode_maps(
            code[j * P : (j + 1) * P], table["rollout_lo"][j], table["rollout_hi"][j]
        )
    top = max(0.0, float(heat.max()))
    columns = {
        "heat": heat.tolist(),
        "alpha": (0.1 + 0.75 * heat / top if top > 0 else np.full(P, 0.1)).tolist(),
    }
    row_ = int(table["explain_row"][j])
    M = len(run.methods)
    ranges = tables[f"images_explain_range_{r}"]
    for m in range(M):
        heat, alpha = np.zeros(P), np.zeros(P)
        if row_ >= 0:
            at = row_ * M + m
            lo, hi = float(ranges["lo"][at]), float(ranges["hi"][at])
            codes = tables[f"images_explain_{r}"]["code"][at * P : (at + 1) * P]
            heat = decode_maps(codes, lo, hi)
            alpha = 0.1 + 0.75 * (heat - lo) / (hi - lo) if hi > lo else np.full(P, 0.1)
        columns[f"heat_{m}"], columns[f"alpha_{m}"] = heat.tolist(), alpha.tolist()
    return columns


def explained_count(bundle: ResultsBundle) -> int:
    """How many images the run explained (0 without the explanations part)."""
    part = bundle.parts.get("explanations")
    return 0 if part is None else len(part["image_index"])


def explain_note(count: int, explained: bool) -> str:
    """What a run's explanation panels say of an image (the page's code shows these strings)."""
    if not count:
        return NO_EXPLANATIONS
    return "" if explained else f"this image is not one of the {count} images the run explained"


def _photo_data(tables: dict, r: int, shared: bool, grid, j: int) -> dict[str, list]:
    """Run ``r``'s photo source while image ``j`` is chosen: its JPEG over the patch grid."""
    urls = tables["images_photos" if shared else f"images_photos_{r}"]["jpeg"]
    k = int(tables[f"images_run_{r}"]["photo"][j])
    return {"url": [urls[k]], "x": [0], "y": [grid[0]], "w": [grid[1]], "h": [grid[0]]}


def _explain_maps(p, run: RunImages, tables: dict, r: int, photo, cells) -> list:
    """Draw run ``r``'s explanation maps into its rollout plot ``p``, under the rollout map and
    as wide, :data:`EXPLAIN_ACROSS` a row, each over the photo in F1's style with its own colour
    mapper (in the rollout's plot rather than plots of their own: a page of several runs opens
    faster with fewer plots); returns the mappers (none for a run without the maps)."""
    if not run.methods:
        return []
    gh, gw = run.grid
    M = len(run.methods)
    px = ROLLOUT_PX / max(gh, gw)  # screen pixels a patch of the rollout map takes
    across, rows = min(M, EXPLAIN_ACROSS), -(-M // EXPLAIN_ACROSS)
    gap, label, header = 8 / px, 14 / px, 20 / px  # in the plot's units, patches
    shrink = (gw - (EXPLAIN_ACROSS - 1) * gap) / (EXPLAIN_ACROSS * gw)  # a map's patch
    width, height = gw * shrink, gh * shrink
    chars = max(4, int((width + gap) * px / LABEL_CHAR_PX))
    cells.data = {
        **cells.data,
        "sx": [(c + 0.5) * shrink for c in cells.data["col"]],
        "sy": [(gh - r_ - 0.5) * shrink for r_ in cells.data["row"]],
    }
    table, ranges = tables[f"images_run_{r}"], tables[f"images_explain_range_{r}"]
    row_ = int(table["explain_row"][0])
    names: dict[str, list] = {"x": [0.0], "y": [-0.9 * header], "text": ["explanation maps"]}
    mappers = []
    for m, method in enumerate(run.methods):
        x0 = (m % across) * (width + gap)
        top = -header - (m // across) * (label + height + gap) - label
        p.image_url(url="url", x=x0, y=top, w=width, h=height, anchor="top_left", source=photo)
        lo = float(ranges["lo"][row_ * M + m]) if row_ >= 0 else 0.0
        hi = float(ranges["hi"][row_ * M + m]) if row_ >= 0 else 1.0
        mapper = LinearColorMapper(palette=HEAT_PALETTE, low=lo, high=hi if hi > lo else lo + 1)
        g = p.rect(
            dodge("sx", x0), dodge("sy", top - height), shrink, shrink, source=cells,
            fill_color={"field": f"heat_{m}", "transform": mapper},
            fill_alpha=f"alpha_{m}", line_color="#ffffff", line_alpha=0.35,
        )  # fmt: skip
        p.add_tools(
            HoverTool(
                renderers=[g],
                tooltips=[
                    ("method", method),
                    ("patch (row, col)", "(@row, @col)"),
                    ("map", f"@heat_{m}{{0.0000}}"),
                ],
            )
        )
        mappers.append(mapper)
        names["x"].append(x0)
        names["y"].append(top + 0.1 * label)
        names["text"].append(method if len(method) <= chars else method[: chars - 1] + "…")
    p.text("x", "y", "text", source=ColumnDataSource(names), text_font_size="10px",
           text_color="#555", text_baseline="bottom")  # fmt: skip
    bottom = -header - rows * (label + height) - (rows - 1) * gap - gap
    p.y_range.start = bottom
    p.frame_height = int(round((gh - bottom) * px))
    return mappers


def strip_data(photos: list[str], shape, count: int, j: int) -> dict[str, list]:
    """The strip's columns while image ``j`` is chosen: the :data:`STRIP` photos of its page,
    side by side (``slot``: each one's place in the menu; ``line``: the chosen one's outline)."""
    th, tw = shape
    start = (j // STRIP) * STRIP
    slots = list(range(start, min(start + STRIP, count)))
    width, height = tw / max(th, tw), th / max(th, tw)
    return {
        "url": [photos[k] for k in slots],
        "x": [i * (1 + STRIP_GAP) for i in range(len(slots))],
        "y": [height] * len(slots),
        "w": [width] * len(slots),
        "h": [height] * len(slots),
        "cx": [i * (1 + STRIP_GAP) + width / 2 for i in range(len(slots))],
        "cy": [height / 2] * len(slots),
        "slot": slots,
        "line": [2.5 if k == j else 0.0 for k in slots],
    }


def _strip(choice: Select, stored: dict, shape, count: int, shared: bool):
    """The chooser's strip of the shared images' photos, a page of :data:`STRIP` at a time (the
    chosen image's page, outlined); clicking a photo chooses it. None when the runs share no
    image (each column then shows its own run's photos)."""
    if not shared:
        return None, {}
    source = ColumnDataSource(
        strip_data(stored["images_photos"].data["jpeg"], shape, count, 0),
        name="images_strip",
    )
    side = STRIP_PX
    p = plot(
        f"the {count} shared images, {STRIP} a page: click one to choose it",
        None,
        None,
        name="images_strip_plot",
        frame_width=int(STRIP * (1 + STRIP_GAP) * side),
        frame_height=side,
        x_range=Range1d(-STRIP_GAP / 2, STRIP * (1 + STRIP_GAP) - STRIP_GAP / 2),
        y_range=Range1d(0, 1),
    )
    p.xaxis.visible = p.yaxis.visible = False
    p.grid.visible = False
    p.image_url(url="url", x="x", y="y", w="w", h="h", anchor="top_left", source=source)
    # A box per photo takes the clicks (image glyphs are not hit-tested) and outlines the chosen.
    boxes = p.rect(
        "cx", "cy", "w", "h", source=source, fill_alpha=0, line_color="#1f77b4",
        line_width="line",
    )  # fmt: skip
    # Selection is only the click: nothing dims.
    boxes.nonselection_glyph = boxes.glyph.clone()
    boxes.selection_glyph = boxes.glyph.clone()
    p.add_tools(TapTool(renderers=[boxes]))
    source.selected.js_on_change(
        "indices",
        CustomJS(
            args={"choice": choice, "strip": source},
            code="const i = strip.selected.indices; if (i.length) {"
            " choice.value = String(strip.data.slot[i[0]]); strip.selected.indices = []; }",
        ),
    )
    return p, {
        "strip": source,
        "strip_photos": stored["images_photos"],
        "strip_layout": {"shape": list(shape), "page": STRIP, "gap": STRIP_GAP},
    }


def _text(name: str, text: str, width: int, **kwargs) -> Div:
    """A named Div that shows ``text`` literally (labels and ids from a bundle are never HTML)."""
    div = text_box(None, None, text, width=width, **kwargs)
    div.name = name
    return div


def image_panel(
    bundles: list[ResultsBundle],
    names: list[str],
    colours: list[str],
    *,
    photo_size: int = PHOTO_SIZE,
) -> Column:
    """The per-image panel of the comparison page (see the module's docstring)."""
    comparison = compare_images(bundles)
    ids, tables = panel_tables(bundles, comparison, photo_size=photo_size)
    stored = {name: ColumnDataSource(cols, name=name) for name, cols in tables.items()}
    choice = Select(
        title="Image:",
        value="0",
        options=[(str(j), i) for j, i in enumerate(ids)],
        name="images_select",
        width=260,
    )
    step = "const n = choice.options.length; choice.value = String((Number(choice.value) + {} + n) % n);"
    back = Button(label="previous", width=80, name="images_previous")
    forward = Button(label="next", width=80, name="images_next")
    back.js_on_click(CustomJS(args={"choice": choice}, code=step.format(-1)))
    forward.js_on_click(CustomJS(args={"choice": choice}, code=step.format(1)))
    shared = comparison.shared
    columns, runs_js = [], []
    for r, (bundle, name, colour, run) in enumerate(
        zip(bundles, names, colours, comparison.runs, strict=True)
    ):
        gh, gw = run.grid
        photos = stored["images_photos" if shared else f"images_photos_{r}"]
        photo = ColumnDataSource(
            _photo_data(tables, r, shared, run.grid, 0), name=f"images_photo_{r}"
        )
        first = _cells(tables, r, run, 0)
        cells = ColumnDataSource(patch_cells(gh, gw, **first), name=f"images_cells_{r}")
        scale = ROLLOUT_PX / max(gh, gw)
        p = plot(
            "attention rollout" if run.rollout is not None else "no rollout part in this run",
            None,
            None,
            name=f"images_rollout_plot_{r}",
            frame_width=int(gw * scale),
            frame_height=int(gh * scale),
            x_range=Range1d(0, gw),
            y_range=Range1d(0, gh),
        )
        p.xaxis.visible = p.yaxis.visible = False
        p.grid.visible = False
        p.image_url(url="url", x="x", y="y", w="w", h="h", anchor="top_left", source=photo)
        top = max(first["heat"]) if first["heat"] else 0.0
        mapper = LinearColorMapper(palette=HEAT_PALETTE, low=0, high=top if top > 0 else 1)
        cell = p.rect(
            "x", "y", 1, 1, source=cells, fill_color={"field": "heat", "transform": mapper},
            fill_alpha="alpha", line_color="#ffffff", line_alpha=0.35,
        )  # fmt: skip
        p.add_tools(
            HoverTool(
                renderers=[cell],
                tooltips=[("patch (row, col)", "(@row, @col)"), ("rollout", "@heat{0.0000}")],
            )
        )
        width = int(gw * scale) + 50
        mappers = _explain_maps(p, run, tables, r, photo, cells)
        # Two lines each, whatever they say: the runs' plots stay side by side at one height.
        text = _text(f"images_text_{r}", tables[f"images_run_{r}"]["text"][0], width, height=34)
        explained = int(tables[f"images_run_{r}"]["explain_row"][0]) >= 0
        count = explained_count(bundle)
        note = _text(f"images_explain_note_{r}", explain_note(count, explained), width, height=34)
        title = Div(
            text=f'<span style="font:600 13px {FONT}"><span style="color:{colour}">&#9632;</span> '
            f"{html.escape(name)}</span>",
            width=width,
        )
        columns.append(column(title, text, note, p, width=width))
        runs_js.append(
            {
                "table": stored[f"images_run_{r}"],
                "rollout": stored[f"images_rollout_{r}"],
                "explain": stored[f"images_explain_{r}"],
                "explain_range": stored[f"images_explain_range_{r}"],
                "photos": photos,
                "grid": [gh, gw],
                "methods": len(run.methods),
                # What the explanation panels say of an image not explained, and of one explained.
                "notes": [explain_note(count, False), explain_note(count, True)],
                "photo": photo,
                "cells": cells,
                "mapper": mapper,
                "explain_mappers": mappers,
                "text": text,
                "note": note,
            }
        )
    shape = photo_pixels(bundles[0], [0], photo_size).shape[1:3]
    strip, strip_args = _strip(choice, stored, shape, len(ids), shared)
    draw = CustomJS(
        args={"choice": choice, "runs": runs_js, **strip_args},
        code=js_code("compare_images"),
        module=True,
    )
    choice.js_on_change("value", draw)
    if shared:
        said = (
            f"Choose one of the {len(ids)} images every run holds (matched by id): each column "
            "shows that image's attention rollout in one run (on the run's own patch grid), its "
            "explanation maps where the run has them, and the run's prediction."
        )
    else:
        said = (
            "The runs share no image: each column shows its own run's first images (the menu "
            "chooses the first, second, ... image of every run), with the run's rollout, "
            "explanation maps and prediction."
        )
    heading = Div(
        text=f'<div style="font:600 15px {FONT};color:#2b2f36">Per image, side by side</div>',
    )
    return column(
        heading,
        _text("images_panel_note", said, 900),
        row(choice, column(Div(text="&nbsp;"), row(back, forward))),
        *([strip] if strip is not None else []),
        row(*columns),
        name="compare_images",
    )
