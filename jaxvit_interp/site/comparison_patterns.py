"""The comparison page's shared pattern space: every run's heads in one embedding.

For each pattern kind of a :class:`~jaxvit_interp.patterns.shared.SharedPatternSpace` the panel
draws:

- the embedding: each head's mean 2-D position over its images, one colour per run (the legend
  names the run);
- the pattern-kind table: per run and cluster, how many heads have that cluster as their most
  common one, layer by layer with the layer's relative depth; above it, each cluster's
  representative pattern on the common grid;
- per run, its ``L x H`` head grid coloured by each head's cluster. Choosing (tapping) a head in
  one run's grid selects its nearest heads in every other run (in the autoencoder's latent
  space, :func:`~jaxvit_interp.patterns.shared.nearest_heads`) and all of them in the embedding.

Every value is computed here, in Python; the page's code only looks the neighbours up. Named
models (``doc.get_model_by_name``): ``shared_patterns_note``, and per kind ``shared_<kind>_heads``
(the embedding's source, run by run in the order of the kind's runs, each run's heads
``layer * H + head``), ``shared_<kind>_grid_<run>`` (run ``<run>``'s grid, the same head order),
``shared_<kind>_table`` and ``shared_<kind>_clusters``.
"""

from __future__ import annotations

import html

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, CustomJS, Div, Legend, LegendItem, TapTool
from bokeh.palettes import Set3_12
from bokeh.plotting import figure

from jaxvit_interp.patterns.shared import SharedPatternSpace
from jaxvit_interp.site.views.common import FONT

# Side of one head's cell in a run's grid, in pixels.
CELL = 22
MAP_SIZE = 420

# On a selection in one grid: the nearest heads in the others, and all of them in the map. A
# selection this code sets is recorded, so that its own change event (which Bokeh may deliver
# after this returns) is recognised and passed over rather than setting the others in turn.
_SELECT_JS = """
const pending = (window.__jviSharedPending ??= {});
const picked = Array.from(grids[me].selected.indices);
const tag = `${kind}:${me}`;
const said = pending[tag];
delete pending[tag];
if (said === JSON.stringify(picked)) { return; }
const inMap = picked.map((h) => offsets[me] + h);
for (let other = 0; other < grids.length; other++) {
  if (other === me) { continue; }
  const near = new Set();
  for (const h of picked) { for (const n of nearest[me][other][h]) { near.add(n); } }
  const chosen = Array.from(near).sort((a, b) => a - b);
  for (const n of chosen) { inMap.push(offsets[other] + n); }
  if (JSON.stringify(Array.from(grids[other].selected.indices)) !== JSON.stringify(chosen)) {
    pending[`${kind}:${other}`] = JSON.stringify(chosen);
    grids[other].selected.indices = chosen;
  }
}
heads.selected.indices = inMap;
"""


def _cluster_colour(c: int) -> str:
    """A cluster's colour: pastels, apart from the runs' Category10 colours."""
    return Set3_12[c % len(Set3_12)]


def _note(space: SharedPatternSpace) -> Div:
    g = space.grid
    how = "Reused from" if space.reused else "Computed and stored in"
    parts = [
        f"Patterns of every run on a common {g[0]}x{g[1]} grid, one autoencoder per kind "
        f"trained on all of them, clustered once: a cluster is the same kind of pattern in "
        f"every model. Up to {space.settings.images_per_run} attention images a run, those "
        "every run has first." + (f" {how} {space.directory}." if space.directory else "")
    ]
    lacking = space.missing.get("attention")
    if lacking:
        parts.append(f"No stored attention, so no patterns: {', '.join(lacking)}.")
    if "cls" in space.missing:
        parts.append(f"No CLS token, so no CLS patterns: {', '.join(space.missing['cls'])}.")
    parts.extend(n[0].upper() + n[1:] + "." for n in space.notes)
    return Div(
        text=f'<div style="font:12px {FONT};color:#555;max-width:1200px">'
        + " ".join(html.escape(p) for p in parts)
        + "</div>",
        name="shared_patterns_note",
    )


def _table(space: SharedPatternSpace, kind: str, labels, colours) -> Div:
    s = space.kinds[kind]
    counts, depths = space.table(kind), space.depths(kind)
    head = "".join(f"<th align=left>cluster {c}</th>" for c in range(s.k))
    rows = []
    for r, table, depth in zip(s.runs, counts, depths):
        cells = []
        for c in range(s.k):
            layers = [f"{layer} ({depth[layer]:.2f}): {n}" for layer, n in enumerate(table[c]) if n]
            total = int(table[c].sum())
            cells.append(f"<b>{total}</b>" + (f"<br>{'<br>'.join(layers)}" if layers else ""))
        name = f'<span style="color:{colours[r]}">&#9632;</span> {html.escape(labels[r])}'
        rows.append(f"<tr><td>{name}</td>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    caption = (
        "Heads whose most common cluster it is, and in which layers: layer (relative depth): heads"
    )
    return Div(
        text=f'<div style="font:12px {FONT}">{caption}</div>'
        f'<table style="font:11px {FONT};border-collapse:collapse" cellpadding="3">'
        f"<tr><th align=left>run</th>{head}</tr>{''.join(rows)}</table>",
        name=f"shared_{kind}_table",
    )


def _clusters(space: SharedPatternSpace, kind: str):
    """Each cluster's representative pattern, side by side, under its cluster's colour."""
    s = space.kinds[kind]
    h, w = s.shape
    gap = 1
    fig = figure(
        width=max(200, min(1200, 70 * s.k)),
        height=110,
        title="each cluster's representative",
        x_range=(0, s.k * (w + gap)),
        y_range=(0, h + 2),
        tools="save",
        toolbar_location=None,
        name=f"shared_{kind}_clusters",
    )
    for c in range(s.k):
        fig.image(
            image=[np.asarray(s.representative[c], np.float32)[::-1]],
            x=c * (w + gap),
            y=0,
            dw=w,
            dh=h,
            palette="Greys256",
            level="image",
        )
        fig.rect(x=c * (w + gap) + w / 2, y=h + 1, width=w, height=0.8, color=_cluster_colour(c))
        fig.text(
            x=[c * (w + gap) + w / 2],
            y=[h + 1],
            text=[str(c)],
            text_align="center",
            text_baseline="middle",
            text_font_size="10px",
        )
    fig.axis.visible = False
    fig.grid.visible = False
    return fig


def _kind_panel(space: SharedPatternSpace, kind: str, labels, colours):
    s = space.kinds[kind]
    runs = s.runs
    heads_data: dict[str, list] = {
        k: [] for k in ("x", "y", "run", "layer", "head", "cluster", "colour")
    }
    offsets, grids = [], []
    head_clusters = space.head_clusters(kind)
    for at, r in enumerate(runs):
        L, H = space.dims[r]
        xy = s.head_positions(r, (L, H)).reshape(-1, 2)
        clusters = head_clusters[at].ravel()
        offsets.append(len(heads_data["x"]))
        layer, head = np.divmod(np.arange(L * H), H)
        heads_data["x"] += xy[:, 0].tolist()
        heads_data["y"] += xy[:, 1].tolist()
        heads_data["run"] += [labels[r]] * (L * H)
        heads_data["layer"] += layer.tolist()
        heads_data["head"] += head.tolist()
        heads_data["cluster"] += clusters.tolist()
        heads_data["colour"] += [colours[r]] * (L * H)
        grids.append(
            ColumnDataSource(
                {
                    "x": head.tolist(),
                    "y": layer.tolist(),
                    "layer": layer.tolist(),
                    "head": head.tolist(),
                    "cluster": clusters.tolist(),
                    "fill": [_cluster_colour(int(c)) for c in clusters],
                },
                name=f"shared_{kind}_grid_{r}",
            )
        )
    heads = ColumnDataSource(heads_data, name=f"shared_{kind}_heads")
    found = space.nearest(kind)
    nearest = [[found[(r, o)][0].tolist() if r != o else [] for o in runs] for r in runs]

    emb = figure(
        width=MAP_SIZE,
        height=MAP_SIZE,
        title=f"{kind} patterns: each head's mean position, by run",
        tools="pan,wheel_zoom,reset,save,hover,tap",
        tooltips=[
            ("run", "@run"),
            ("layer", "@layer"),
            ("head", "@head"),
            ("cluster", "@cluster"),
        ],
        name=f"shared_{kind}_map",
    )
    dots = emb.scatter(
        "x",
        "y",
        source=heads,
        color="colour",
        size=8,
        alpha=0.8,
        selection_line_color="black",
        selection_line_width=2,
        nonselection_alpha=0.25,
    )
    emb.add_layout(
        Legend(
            items=[
                LegendItem(label=labels[r], renderers=[dots], index=offsets[at])
                for at, r in enumerate(runs)
            ],
            label_text_font_size="10px",
        ),
        "below",
    )
    grid_figs = []
    for at, r in enumerate(runs):
        L, H = space.dims[r]
        fig = figure(
            width=max(130, 60 + CELL * H),
            height=max(120, 70 + CELL * L),
            title=labels[r],
            x_range=(-0.5, H - 0.5),
            y_range=(L - 0.5, -0.5),
            x_axis_label="head",
            y_axis_label="layer",
            tools="tap,reset",
            toolbar_location=None,
            tooltips=[("layer", "@layer"), ("head", "@head"), ("cluster", "@cluster")],
            name=f"shared_{kind}_gridfig_{r}",
        )
        fig.rect(
            "x",
            "y",
            0.92,
            0.92,
            source=grids[at],
            fill_color="fill",
            line_color=None,
            selection_line_color="black",
            selection_line_width=2,
            nonselection_fill_alpha=0.35,
        )
        fig.xaxis.ticker = list(range(H))
        fig.yaxis.ticker = list(range(L))
        fig.grid.visible = False
        fig.title.text_font_size = "10px"
        fig.title.text_color = colours[r]
        fig.select_one(TapTool).mode = "replace"
        grid_figs.append(fig)
    for at, source in enumerate(grids):
        source.selected.js_on_change(
            "indices",
            CustomJS(
                args=dict(
                    grids=grids, heads=heads, nearest=nearest, offsets=offsets, me=at, kind=kind
                ),
                code=_SELECT_JS,
            ),
        )
    hint = Div(
        text=f'<div style="font:12px {FONT};color:#555">Each run\'s heads (layers down, heads '
        f"across) coloured by cluster: choose a head to select its {space.settings.neighbours} "
        "nearest heads (mean latent) in every other run.</div>"
    )
    return column(
        Div(text=f'<div style="font:600 14px {FONT}">Shared {kind} pattern space</div>'),
        row(emb, column(_clusters(space, kind), _table(space, kind, labels, colours))),
        hint,
        row(*grid_figs),
        name=f"shared_{kind}",
    )


def shared_patterns_panel(space: SharedPatternSpace, labels: list[str], colours: list[str]):
    """The panel of ``space``: a note of what it holds and leaves out, then each kind's.

    Args:
      space: the runs' shared pattern space, its runs in the page's order.
      labels, colours: each run's legend label and colour, as the page's other views have them.
    """
    return column(
        Div(text=f'<div style="font:600 16px {FONT};color:#1f2328">Shared pattern space</div>'),
        _note(space),
        *(_kind_panel(space, kind, labels, colours) for kind in space.kinds),
        name="shared_patterns",
    )
