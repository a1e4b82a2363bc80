"""Results in a notebook: the linked site, and smaller views for one question, shown inline.

- :func:`show`: the whole site (the five linked views) of a results bundle;
- :func:`show_head`: one head: its attention pattern for an image (or its mean over the images
  with stored attention), its importance under every metric with its rank among the heads, its
  entropy and attention distance, and its attention strength at each hop;
- :func:`show_image`: one image: the photo, its attention rollout over it, what the model
  predicts;
- :func:`show_pruning_curves`: accuracy and mean ``p(label)`` as heads are removed (view E's).

Each takes a :class:`~jaxvit_interp.bundle.ResultsBundle` or the path of a run folder (the run
folder is the bundle), and names heads as the site does: ``(layer, head)`` counted from 0, as
every function of the package counts them, shown as ``L2 H1``.

How they display. Every view is a standalone page, BokehJS inline (as :func:`build_site` writes
the site), placed in an ``<iframe srcdoc="...">``. The site's page carries its own JavaScript (the
record registry, the CustomJS modules that look values up) and every image's record as inline
scripts, and reads its one Bokeh document as ``Bokeh.documents[0]``: in an iframe of its own it
runs exactly as the file does, beside any other output. The same holds in Jupyter, JupyterLab,
VS Code and Colab, which all render an ``text/html`` output's iframes and scripts (Colab and
VS Code in a frame per output, where Bokeh's own notebook output would need BokehJS loaded again
in every cell anyway), with no server, kernel extension or network: everything is inside the
output, so a notebook exported as HTML keeps every view working. The price is BokehJS (about
1.3 MB) once per view shown, and the site's whole data in the notebook (``max_attention_images``
keeps a large run's page small).
"""

from __future__ import annotations

import html
import numbers
import os
import tempfile
from pathlib import Path

import numpy as np

from jaxvit_interp.attention_codes import decode_stored
from jaxvit_interp.bundle import ResultsBundle, load_bundle, special_tokens
from jaxvit_interp.errors import InputError
from jaxvit_interp.importance.aggregate import head_ranks
from jaxvit_interp.quantities import metric
from jaxvit_interp.summary import number

# Heights in pixels of each view's frame; the frame is as wide as the notebook's output and
# scrolls what does not fit (the site's views wrap to the width).
SITE_HEIGHT = 1300
HEAD_HEIGHT = 380
IMAGE_HEIGHT = 360
CURVES_HEIGHT = 420
# Most image ids an error message lists.
LISTED_IDS = 5

__all__ = ["show", "show_head", "show_image", "show_pruning_curves"]


class InlinePage:
    """A standalone HTML page that a notebook shows in an iframe of its own.

    Attributes:
      page: the whole page (BokehJS and any data inline).
      height: the frame's height in pixels.
      title: the frame's accessible name.
    """

    def __init__(self, page: str, height: int, title: str):
        self.page, self.height, self.title = page, int(height), title

    def _repr_html_(self) -> str:
        # srcdoc holds the page as an attribute value: escaped, quotes included; the browser
        # unescapes it. No sandbox attribute: the page's scripts must run.
        return (
            f'<iframe srcdoc="{html.escape(self.page, quote=True)}" '
            f'title="{html.escape(self.title, quote=True)}" class="jaxvit-view" '
            f'style="width:100%;height:{self.height}px;border:1px solid #d6d9de" '
            'loading="eager"></iframe>'
        )

    def __repr__(self) -> str:
        return f"<{self.title}: a page of {len(self.page):,} characters>"


def show(
    bundle: ResultsBundle | str | os.PathLike, *, height: int = SITE_HEIGHT, **options
) -> None:
    """Show the whole site of ``bundle`` inline: every view, linked, as the published page.

    Args:
      bundle: a results bundle, or the path of a run folder.
      height: the frame's height in pixels (the page scrolls inside it).
      options: what :func:`~jaxvit_interp.site.document.build_site` takes (``title``,
        ``max_attention_images``, ``metrics``, ``default_metric``, ``default_kind``,
        ``thumbnail_size``); the page is always one file, its records inline.
    """
    from jaxvit_interp.site.document import build_site

    bundle = _as_bundle(bundle)
    if "layout" in options:
        raise InputError("show() writes the site as one page: it takes no layout option")
    with tempfile.TemporaryDirectory(prefix="jaxvit-notebook-") as folder:
        path = build_site(bundle, folder, layout="single", **options)
        page = path.read_text(encoding="utf-8")
    _display(InlinePage(page, height, "jaxvit-interp site"))


def show_head(
    bundle: ResultsBundle | str | os.PathLike,
    layer: int,
    head: int,
    *,
    image: int | str | None = None,
    height: int = HEAD_HEIGHT,
) -> None:
    """Show one head: its attention pattern, importance and attention strength.

    The pattern is the attention of the CLS token (in a model without one, of the centre
    patch, as the site's default query) over the patches. With ``image`` every number is that
    image's (its pattern needs stored attention: the run's ``attention_images``); without, the
    means over all images, and the pattern's mean over the images with stored attention.

    Args:
      bundle: a results bundle, or the path of a run folder.
      layer, head: the head, counted from 0 (the site's ``L{layer} H{head}``).
      image: an image's position in the bundle (int) or its id (str, as
        ``bundle.meta["image_ids"]``); None for the means.
      height: the frame's height in pixels.
    """
    bundle = _as_bundle(bundle)
    layer, head = _check_head(bundle, layer, head)
    index = None if image is None else _image_index(bundle, image)
    layout = _head_layout(bundle, layer, head, index)
    _display(_page(layout, height, f"head L{layer} H{head}"))


def show_image(
    bundle: ResultsBundle | str | os.PathLike, image: int | str, *, height: int = IMAGE_HEIGHT
) -> None:
    """Show one image: the photo, its attention rollout over it, and what the model predicts
    (its label, prediction and most likely classes).

    Args:
      bundle: a results bundle, or the path of a run folder.
      image: its position in the bundle (int) or its id (str, as ``bundle.meta["image_ids"]``).
      height: the frame's height in pixels.
    """
    bundle = _as_bundle(bundle)
    index = _image_index(bundle, image)
    layout = _image_layout(bundle, index)
    _display(_page(layout, height, f"image {bundle.meta['image_ids'][index]}"))


def show_pruning_curves(
    bundle: ResultsBundle | str | os.PathLike, *, height: int = CURVES_HEIGHT
) -> None:
    """Show the pruning curves (view E2, E3): accuracy and mean ``p(label)`` as heads are
    removed in importance order, greedily and in random orders, with how many heads can go.

    Args:
      bundle: a results bundle with the ``head_sets`` part (a run with ``set_images > 0``), or
        the path of such a run folder.
      height: the frame's height in pixels.
    """
    bundle = _as_bundle(bundle)
    if "head_sets" not in bundle.parts:
        raise InputError(
            "this results bundle has no pruning curves (no 'head_sets' part; it has "
            f"{sorted(bundle.parts)}): analyze with set_images > 0 (--set-images)"
        )
    layout = _curves_layout(bundle)
    _display(_page(layout, height, "pruning curves"))


# --- arguments --------------------------------------------------------------------------------


def _as_bundle(bundle) -> ResultsBundle:
    """A bundle as it is, or the one a run folder holds (a :class:`BundleError` naming the
    folder when it holds none)."""
    if isinstance(bundle, ResultsBundle):
        return bundle
    if isinstance(bundle, str | os.PathLike):
        return load_bundle(Path(bundle))
    raise InputError(
        f"expected a ResultsBundle or the path of a run folder, got {type(bundle).__name__} "
        f"{bundle!r}"
    )


def _whole_number(value, what: str) -> int:
    # bool is an int to Python, but True as a layer is a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _check_head(bundle: ResultsBundle, layer, head) -> tuple[int, int]:
    dims = bundle.dims()
    layer, head = _whole_number(layer, "layer"), _whole_number(head, "head")
    for what, value, count in (("layer", layer, dims["L"]), ("head", head, dims["H"])):
        if not 0 <= value < count:
            raise InputError(
                f"{what} {value} is out of range: the model has {count} {what}s, counted from "
                f"0 (0..{count - 1})"
            )
    return layer, head


def _image_index(bundle: ResultsBundle, image) -> int:
    """An image's position in the bundle from its position (int) or its id (str)."""
    ids = [str(i) for i in bundle.meta["image_ids"]]
    if isinstance(image, str):
        if image not in ids:
            shown = ", ".join(repr(i) for i in ids[:LISTED_IDS])
            more = ", ..." if len(ids) > LISTED_IDS else ""
            raise InputError(
                f"unknown image id {image!r}: the bundle's {len(ids)} images are {shown}{more} "
                "(or give an image's position, an int)"
            )
        return ids.index(image)
    index = _whole_number(image, "image")
    if not 0 <= index < len(ids):
        raise InputError(
            f"image {index} is out of range: the bundle has {len(ids)} images (0..{len(ids) - 1})"
        )
    return index


def _display(page: InlinePage) -> None:
    try:
        from IPython.display import display
    except ImportError as err:
        raise ImportError(
            "showing views inline needs IPython: pip install 'jaxvit-interp[notebook]'"
        ) from err
    display(page)


def _page(layout, height: int, title: str) -> InlinePage:
    """A Bokeh layout as a standalone page: BokehJS inline, nothing from the network."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    return InlinePage(file_html(layout, resources=INLINE, title=title), height, title)


# --- what each view computes from the bundle: arrays looked up, never recomputed -------------


def query_token(bundle: ResultsBundle) -> int:
    """The token whose attention a head's pattern shows: CLS, or the centre patch of a model
    without CLS (the site's default query)."""
    config = bundle.meta["config"]
    has_cls, first_patch = special_tokens(config)
    if has_cls:
        return 0
    dims = bundle.dims()
    return first_patch + (dims["gh"] // 2) * dims["gw"] + dims["gw"] // 2


def head_pattern(
    bundle: ResultsBundle, layer: int, head: int, image: int | None
) -> tuple[np.ndarray | None, str]:
    """``(map [gh, gw] or None, what it is)``: the query token's attention over the patches for
    ``image``, or its mean over the images with stored attention (None where there is none)."""
    dims = bundle.dims()
    stored = bundle.parts.get("attention")
    if stored is None:
        return None, "no attention stored in this run (analyze with attention_images > 0)"
    rows = np.asarray(stored["image_index"], np.int64)
    if image is not None:
        picked = np.flatnonzero(rows == image)[:1]
        if len(picked) == 0:
            return None, (
                f"no attention stored for image {bundle.meta['image_ids'][image]!r} (the run "
                f"stored it for {len(rows)} images; analyze with a larger attention_images)"
            )
        what = f"image {bundle.meta['image_ids'][image]!r}"
    else:
        picked, what = np.arange(len(rows)), f"mean over {len(rows)} images with stored attention"
    if len(picked) == 0:
        return None, "no attention stored in this run (analyze with attention_images > 0)"
    query = query_token(bundle)
    attention = decode_stored(stored, bundle.attention_code, (picked, layer, head, query))
    patches = attention[:, dims["X"] :].reshape(len(picked), dims["gh"], dims["gw"])
    return patches.mean(axis=0), what


def head_numbers(bundle: ResultsBundle, layer: int, head: int, image: int | None) -> dict:
    """The head's importance under each metric with its rank (1 = most important of all
    heads), its entropy and attention distance, for ``image`` or as means over the images;
    columns of a table."""
    importance, strength = bundle["importance"], bundle["strength"]
    rows: dict[str, list] = {"quantity": [], "value": [], "rank": []}
    for name in bundle.metrics:
        values = importance[name][image] if image is not None else importance[f"{name}_mean"]
        ranks = head_ranks(values, higher_is_more_important=metric(name).important_high)
        rows["quantity"].append(f"{name}: {metric(name).title}")
        rows["value"].append(number(values[layer, head]))
        rows["rank"].append(f"{ranks[layer, head] + 1} of {values.size}")
    for name, title in (("head_entropy", "attention entropy"), ("distance", "attention distance")):
        values = strength[name][image] if image is not None else strength[f"{name}_mean"]
        rows["quantity"].append(title)
        rows["value"].append(number(values[layer, head]))
        rows["rank"].append("")
    return rows


def head_strength(bundle: ResultsBundle, layer: int, head: int, image: int | None) -> np.ndarray:
    """The head's attention strength at each Chebyshev hop ``[K]``."""
    strength = bundle["strength"]
    values = strength["strength"][image] if image is not None else strength["strength_mean"]
    return np.asarray(values[layer, head], np.float64)


# --- the layouts ------------------------------------------------------------------------------


def _heatmap(values: np.ndarray, title: str, size: int = 220):
    from bokeh.models import ColorBar, LinearColorMapper
    from bokeh.palettes import Viridis256

    from jaxvit_interp.site.views.common import plot

    gh, gw = values.shape
    p = plot(
        title, None, None, frame_width=size, frame_height=round(size * gh / gw),
        x_range=(0, gw), y_range=(0, gh), tools="hover",
        tooltips=[("weight", "@image{0.0000}")],
    )  # fmt: skip
    mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=float(np.nanmax(values)) or 1.0)
    # Row 0 of the grid at the top, as the image is drawn.
    p.image(image=[values[::-1].astype(np.float32)], x=0, y=0, dw=gw, dh=gh, color_mapper=mapper)
    p.add_layout(ColorBar(color_mapper=mapper, width=10, major_label_text_font_size="9px"), "right")
    p.axis.visible = False
    return p


def _head_layout(bundle: ResultsBundle, layer: int, head: int, image: int | None):
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, DataTable, TableColumn

    from jaxvit_interp.site.views.common import plot, text_box

    name = f"L{layer} H{head}"
    pattern, what = head_pattern(bundle, layer, head, image)
    label = "CLS" if query_token(bundle) == 0 else "the centre patch"
    if pattern is None:
        left = text_box(None, None, f"{name}: {what}", width=260)
    else:
        left = _heatmap(pattern, f"{name}: attention of {label} ({what})")
        left.name = "head_pattern"
    numbers_source = ColumnDataSource(head_numbers(bundle, layer, head, image))
    table = DataTable(
        source=numbers_source,
        columns=[
            TableColumn(field="quantity", title="quantity", width=250),
            TableColumn(field="value", title="value", width=70),
            TableColumn(field="rank", title="rank (1 = most important)", width=120),
        ],
        width=440,
        height=300,
        index_position=None,
        name="head_numbers",
    )
    hops = head_strength(bundle, layer, head, image)
    p = plot(f"{name}: attention strength per hop", 300, 300, name="head_strength")
    p.vbar(x=np.arange(len(hops)), top=hops, width=0.8, color="#4c72b0")
    p.xaxis.axis_label = "hop (Chebyshev distance in patches)"
    p.yaxis.axis_label = "strength"
    where = "image " + repr(bundle.meta["image_ids"][image]) if image is not None else "all images"
    heading = text_box(None, None, f"Head {name} ({where})", styles={"font-weight": "600"})
    return column(heading, row(left, table, p))


def _image_layout(bundle: ResultsBundle, index: int):
    from bokeh.layouts import column, row
    from bokeh.models import Range1d

    from jaxvit_interp.site.sources import pack_thumbnails
    from jaxvit_interp.site.views.common import plot, text_box

    images = bundle["images"]
    ident = bundle.meta["image_ids"][index]
    pixels = images["pixels"] if "pixels" in images else images["thumbnails"]
    rgba = pack_thumbnails(np.asarray(pixels[index : index + 1]), max_size=None)[0]
    h, w = rgba.shape
    size = 260
    photo = plot(
        f"image {ident!r}", None, None, frame_width=size, frame_height=round(size * h / w),
        x_range=Range1d(0, w), y_range=Range1d(0, h), name="image_photo",
    )  # fmt: skip
    photo.image_rgba(image=[rgba[::-1]], x=0, y=0, dw=w, dh=h)
    photo.axis.visible = False
    if "rollout" in bundle.parts:
        rollout = np.asarray(bundle["rollout"]["map"][index], np.float64)
        from bokeh.models import LinearColorMapper
        from bokeh.palettes import Inferno256

        mapper = LinearColorMapper(palette=Inferno256, low=0.0, high=float(np.nanmax(rollout)) or 1)
        overlay = plot(
            "attention rollout over it", None, None, frame_width=size,
            frame_height=round(size * h / w), x_range=photo.x_range, y_range=photo.y_range,
            name="image_rollout",
        )  # fmt: skip
        overlay.image_rgba(image=[rgba[::-1]], x=0, y=0, dw=w, dh=h)
        overlay.image(
            image=[rollout[::-1].astype(np.float32)], x=0, y=0, dw=w, dh=h,
            color_mapper=mapper, global_alpha=0.6,
        )  # fmt: skip
        overlay.axis.visible = False
        second = overlay
    else:
        second = text_box(None, None, "no rollout in this run", width=size)
    children = [photo, second]
    caption = f"image {ident!r}"
    names = [str(c) for c in bundle.meta["class_names"]]
    if names:
        probs = np.asarray(images["probs"][index], np.float64)
        label, predicted = int(images["labels"][index]), int(images["predictions"][index])
        caption += (
            f": label {names[label]!r} (p = {number(probs[label])}), predicted "
            f"{names[predicted]!r} (p = {number(probs[predicted])})"
        )
        top = np.argsort(-probs, kind="stable")[:5][::-1]
        bars = plot(
            "most likely classes", 280, 300, y_range=[names[c] for c in top],
            x_range=Range1d(0, 1), name="image_classes",
        )  # fmt: skip
        bars.hbar(y=[names[c] for c in top], right=probs[top], height=0.7, color="#4c72b0")
        bars.xaxis.axis_label = "probability"
        children.append(bars)
    return column(text_box(None, None, caption, styles={"font-weight": "600"}), row(*children))


def _curves_layout(bundle: ResultsBundle):
    from bokeh.layouts import column, row

    from jaxvit_interp.site.views import head_sets
    from jaxvit_interp.site.views.common import Context, text_box

    # View E's own figures: their context only registers the models it makes.
    context = Context(data=None, sources={})
    figures, caption = head_sets.pruning_curve_figures(
        context, bundle["head_sets"], bundle.meta.get("head_sets") or {}
    )
    return column(row(*figures), text_box(None, None, caption, width=680))
