"""The page's behaviour: CustomJS only, so the file works with no server.

State lives in the shared sources' selections, so every view that draws an entity shows its
selection without extra code:

- the chosen image is ``images.selected`` (empty = all images, the global view);
- the chosen head is ``heads.selected`` (always one; an empty selection restores the last);
- the partial-pruning mode is ``partial_bars.selected`` and the query patch ``patches.selected``
  (empty = the CLS token, or the centre patch in a model without CLS).

One ``update`` callback, attached to every selection and widget, recomputes the display
sources from the entity tables (row layouts in :mod:`jaxvit_interp.site.sources`) and records the
resulting state in the ``state`` source. Text shown in HTML elements goes through Divs with
``render_as_text``; labels drawn on canvases (titles, axes, text glyphs) are never HTML.
"""

from __future__ import annotations

import json
from typing import Any

from bokeh.models import CustomJS
from bokeh.palettes import Viridis256

# Every text the page shows, as templates filled by the page's code and by
# :mod:`jaxvit_interp.site.initial` alike, so both always say the same thing.
TEXTS: dict[str, str] = {
    "scope_global": "mean over all images",
    "scope_local": "image {id}",
    "image_info_global": "All {n} images (global view). Click an image or search to make the "
    "views local to it.",
    "image_info_local": "Chosen image: {id} | label {label} | predicted {predicted} "
    "(p(label) = {prob})",
    "importance_title": "{metric} ({scope})",
    "partial_title": "p(label) after partial pruning: {head}",
    "partial_none": "This results bundle has no partial-pruning results.",
    "partial_global": "Mean over the {n} images with partial pruning; choose one of them for "
    "its own bars and top-5 predictions.",
    "partial_local": "Partial pruning for image {id}; click a bar for that mode's top-5 "
    "predictions.",
    "partial_not_computed": "Partial pruning was not computed for this image (only for the {n} "
    'images whose tooltip in A lists "partial pruning").',
    "top5_local": 'top-5 after pruning "{mode}"',
    "top5_global": "top-5: choose an image",
    "top5_not_computed": "top-5: not computed here",
    "entropy_title": "head entropy across layers ({scope})",
    "hop_title": "strength across neighbours: {head}",
    "entropy_hist_title": "entropy of {head} over all images",
    "embedding_title": "{kind} patterns ({scope}); chosen: {head}",
    "reps_title": "cluster representatives ({head}: #{cluster})",
    "image_title_global": "chosen image: click a patch to make it the query",
    "image_title_cls": "{head}; query: the CLS token",
    "image_title_patch": "{head}; query: patch (row {row}, col {col})",
    "matrix_title_none": "attention matrix (rows: query, columns: key)",
    "matrix_title_local": "attention of {head}, image {id}",
    "attention_global": "Choose an image in A: the {n} outlined images have stored attention.",
    "attention_not_stored": "Attention was not stored for this image (only for the {n} outlined "
    "images in A).",
    "attention_local": "",
    "attention_none": "This results bundle stores no attention matrices.",
}
KIND_NAMES = {"cls": "CLS", "patch": "patch"}

UPDATE_JS = r"""
const info = __INFO__;
const T = __TEXTS__;
const KIND_NAMES = __KIND_NAMES__;
const viridis = __VIRIDIS__;
const L = info.num_layers, H = info.num_heads, LH = L * H, K = info.num_hops, N = info.num_tokens;
const GH = info.grid[0], GW = info.grid[1], P = GH * GW, FIRST = info.has_cls ? 1 : 0;
const modes = info.pruning_modes, M = modes.length;
const fmt = (v, d) => Number.isFinite(v) ? v.toFixed(d) : "n/a";
const sig = (v) => !Number.isFinite(v) ? "n/a" :
  (v !== 0 && (Math.abs(v) >= 1000 || Math.abs(v) < 0.01)) ? v.toExponential(1) : v.toPrecision(3);
const fill = (name, values) => T[name].replace(/\{(\w+)\}/g, (_, key) => String(values[key]));
// Changing a Div's text re-lays out the whole page, so unchanged texts are left alone.
const setText = (model, attr, text) => { if (model[attr] !== text) model[attr] = text; };
const last = (a) => a[a.length - 1];
// A typed view of `length` entries from `start` of a decoded column: no copy.
const slice = (col, Type, start, length) =>
  new Type(col.buffer, col.byteOffset + start * Type.BYTES_PER_ELEMENT, length);

// ---- the chosen image, head, mode and query: normalise odd selections, then re-run -------
const isel = images.selected.indices;
if (isel.length > 1) { images.selected.indices = [last(isel)]; return; }
const hsel = heads.selected.indices;
if (hsel.length !== 1) {
  heads.selected.indices = [hsel.length ? last(hsel) : state.data.head[0]];
  return;
}
const msel = partial_bars.selected.indices;
if (msel.length !== 1) {
  partial_bars.selected.indices = [msel.length ? last(msel) : state.data.mode[0]];
  return;
}
const psel = patches.selected.indices;
if (psel.length > 1) { patches.selected.indices = [last(psel)]; return; }

const img = images.data, hd = heads.data, ih = image_heads.data;
const image = isel.length ? isel[0] : -1;
const k = hsel[0];
const mode = msel[0];
const query = psel.length ? FIRST + psel[0] : info.default_query;
const metric = metric_select.value;
const kind = info.kinds.length
  ? info.kinds[Math.min(kind_toggle.active, info.kinds.length - 1)] : null;
const kindChanged = state.data.kind[0] !== (kind || "");
const base = image * LH;
const pick = (col, j) => image >= 0 ? ih[col][base + j] : hd["global_" + col][j];
const head = hd.name[k];
const scope = image >= 0 ? fill("scope_local", {id: img.id[image]}) : T.scope_global;

// ---- A: the chosen image ----------------------------------------------------------------------
setText(image_info, "text", image >= 0
  ? fill("image_info_local", {id: img.id[image], label: img.label[image],
                              predicted: img.predicted[image], prob: fmt(img.prob[image], 3)})
  : fill("image_info_global", {n: info.num_images}));

// ---- heads: metric value, entropy, pattern position ----------------------------------------
const value = new Array(LH), entropy = new Array(LH), pos_x = new Array(LH), pos_y = new Array(LH);
let lo = Infinity, hi = -Infinity;
for (let j = 0; j < LH; j++) {
  const v = pick(metric, j);
  value[j] = v;
  if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  entropy[j] = pick("head_entropy", j);
  pos_x[j] = kind ? pick(kind + "_x", j) : 0;
  pos_y[j] = kind ? pick(kind + "_y", j) : 0;
}
if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
if (!(hi > lo)) { const pad = 0.5 * (Math.abs(lo) || 1); lo -= pad; hi += pad; }
const importantHigh = info.metric_info[metric].important_high;
value_mapper.low = lo;
value_mapper.high = hi;
// Dark marks an important head whichever direction the metric runs.
value_mapper.palette = importantHigh ? viridis.slice().reverse() : viridis;
const text_color = value.map((v) => {
  const t = (v - lo) / (hi - lo);
  return (importantHigh ? t > 0.55 : t < 0.45) ? "#ffffff" : "#000000";
});
heads.data = {...hd, value, entropy, pos_x, pos_y, text_color,
  value_text: value.map(sig), metric: value.map(() => metric)};
setText(importance_title, "text", fill("importance_title", {metric, scope}));
setText(value_colorbar, "title", metric);

// ---- B2 and B3: partial pruning and top-5 --------------------------------------------------
const prow = image >= 0 ? img.partial_row[image] : -1;
{
  const probs = new Array(M).fill(NaN);
  let note;
  if (!info.has_partial) {
    note = T.partial_none;
  } else if (image >= 0 && prow < 0) {
    note = fill("partial_not_computed", {n: info.num_partial});
  } else if (image >= 0) {
    for (let m = 0; m < M; m++) probs[m] = partial.data.prob[(prow * LH + k) * M + m];
    note = fill("partial_local", {id: img.id[image]});
  } else {
    for (let m = 0; m < M; m++) {
      let sum = 0, n = 0;
      for (let s = 0; s < info.num_partial; s++) {
        const v = partial.data.prob[(s * LH + k) * M + m];
        if (Number.isFinite(v)) { sum += v; n += 1; }
      }
      probs[m] = n ? sum / n : NaN;
    }
    note = fill("partial_global", {n: info.num_partial});
  }
  partial_bars.data = {mode: modes, prob: probs.map((v) => Number.isFinite(v) ? v : 0),
                       label: probs.map((v) => info.has_partial ? fmt(v, 3) : ""),
                       head: modes.map(() => head)};
  setText(partial_note, "text", note);
  setText(partial_title, "text", fill("partial_title", {head}));
  const rank = [], prob = [], text = [], y = [];
  if (prow >= 0) {
    const TOPK = info.top_k;  // 5, or the class count when smaller
    for (let t = 0; t < TOPK; t++) {
      const r = ((prow * LH + k) * M + mode) * TOPK + t;
      const c = top5.data.class_index[r], p = top5.data.prob[r];
      rank.push(t + 1); y.push(TOPK - t); prob.push(p);
      text.push(`${info.class_names[c]}: ${sig(p)}`);
    }
  }
  top5_view.data = {rank, prob, text, y, head: rank.map(() => head)};
  setText(top5_title, "text", prow >= 0 ? fill("top5_local", {mode: modes[mode]})
    : image >= 0 ? T.top5_not_computed : T.top5_global);
}

// ---- C: strength -------------------------------------------------------------------------------
{
  const strength = new Array(K), mass = new Array(K), hop = new Array(K);
  const row0 = image >= 0 ? (base + k) * K : k * K;
  const src = image >= 0 ? hops.data : head_hops.data;
  for (let t = 0; t < K; t++) {
    hop[t] = t;
    strength[t] = src.strength[row0 + t];
    mass[t] = src.mass[row0 + t];
  }
  hop_bars.data = {hop, strength, mass, head: hop.map(() => head)};
  setText(hop_title, "text", fill("hop_title", {head}));
  setText(entropy_title, "text", fill("entropy_title", {scope}));
  const bins = info.entropy_bins, width = info.max_entropy * 1.0001 / bins;
  const count = new Array(bins).fill(0);
  for (let i = 0; i < info.num_images; i++) {
    const v = ih.head_entropy[i * LH + k];
    if (Number.isFinite(v)) count[Math.max(0, Math.min(bins - 1, Math.floor(v / width)))] += 1;
  }
  const left = count.map((_, b) => b * width), right = count.map((_, b) => (b + 1) * width);
  entropy_hist.data = {left, right, count, head: count.map(() => head)};
  setText(entropy_hist_title, "text", fill("entropy_hist_title", {head}));
  if (image >= 0) entropy_span.location = ih.head_entropy[base + k];
  entropy_span.visible = image >= 0;
}

// ---- D1: pattern embedding and cluster representatives --------------------------------------
if (kind) {
  const d = density.data, r = d.kind.indexOf(kind);
  if (kindChanged) {
    density_view.data = {image: [d.image[r]], x: [d.x[r]], y: [d.y[r]], dw: [d.dw[r]],
                         dh: [d.dh[r]]};
    const e = info.extents[kind];
    embedding_x_range.start = e[0]; embedding_x_range.end = e[1];
    embedding_y_range.start = e[2]; embedding_y_range.end = e[3];
  }
  const n = info.num_images, xs = new Array(n), ys = new Array(n), size = new Array(n);
  for (let i = 0; i < n; i++) {
    xs[i] = ih[kind + "_x"][i * LH + k]; ys[i] = ih[kind + "_y"][i * LH + k];
    size[i] = i === image ? 11 : 5;
  }
  head_images.data = {x: xs, y: ys, size, color: img.color, id: img.id, label: img.label};
  setText(embedding_title, "text", fill("embedding_title", {kind: KIND_NAMES[kind], scope, head}));
  const rp = representatives.data, cluster = pick(kind + "_cluster", k);
  const rows = [];
  for (let j = 0; j < rp.kind.length; j++) if (rp.kind[j] === kind) rows.push(j);
  const col = (name) => rows.map((j) => rp[name][j]);
  const xs2 = col("x"), dw = col("dw"), dh = col("dh");
  reps_view.data = {image: col("image"), x: xs2, y: col("y"), dw, dh, cluster: col("cluster"),
    members: col("count"), count: rows.map((j) => `#${rp.cluster[j]}: ${rp.count[j]}`),
    label_x: xs2.map((x, j) => x + dw[j] / 2)};
  const at = rows.findIndex((j) => rp.cluster[j] === cluster);
  reps_highlight.data = at < 0 ? {x: [], y: [], w: [], h: []} :
    {x: [xs2[at] + dw[at] / 2], y: [dh[at] / 2], w: [dw[at] + 0.7], h: [dh[at] + 0.7]};
  setText(reps_title, "text", fill("reps_title", {head, cluster}));
  if (kindChanged && rows.length) {
    const h0 = Math.max(...dh);
    reps_x_range.start = -0.6; reps_x_range.end = xs2[xs2.length - 1] + dw[dw.length - 1] + 0.6;
    reps_y_range.start = -Math.max(1.2, 0.35 * h0); reps_y_range.end = h0 + 0.6;
  }
}

// ---- D2, D3, D5: the image, the query's attention, the matrix and its histogram -------------
{
  const empty = {image: [], x: [], y: [], dw: [], dh: []};
  const heat = new Array(P).fill(0), alpha = new Array(P).fill(0);
  const arow = image >= 0 ? img.attention_row[image] : -1;
  const {ndarray} = Bokeh.require("core/util/ndarray");
  // A view into the flat pixel column: no copy (see sources.py for the row layout).
  const [TH, TW] = info.thumbnail_shape, rgba = thumbnails.data.rgba;
  thumb.data = image >= 0 ? {
    image: [ndarray(slice(rgba, Uint32Array, image * TH * TW, TH * TW),
                    {dtype: "uint32", shape: [TH, TW]})],
    x: [0], y: [0], dw: [GW], dh: [GH]} : empty;
  if (query >= FIRST) {
    const p = query - FIRST, row = Math.floor(p / GW), col = p % GW;
    query_marker.data = {x: [col + 0.5], y: [GH - row - 0.5]};
    setText(image_title, "text", image >= 0 ? fill("image_title_patch", {head, row, col})
      : T.image_title_global);
  } else {
    query_marker.data = {x: [], y: []};
    setText(image_title, "text", image >= 0 ? fill("image_title_cls", {head})
      : T.image_title_global);
  }
  if (arow >= 0) {
    // The chosen head's [N, N] block of the flat attention column.
    const mat = slice(attention.data.value, Uint16Array, (arow * LH + k) * N * N, N * N);
    const scale = info.attention_scale;
    let hmax = 0;
    for (let p = 0; p < P; p++) {
      heat[p] = mat[query * N + FIRST + p] / scale;
      hmax = Math.max(hmax, heat[p]);
    }
    for (let p = 0; p < P; p++) alpha[p] = hmax > 0 ? 0.1 + 0.75 * heat[p] / hmax : 0.1;
    heat_mapper.high = hmax > 0 ? hmax : 1;
    const flat = new Float32Array(N * N);
    let mmax = 0;
    for (let t = 0; t < N * N; t++) { flat[t] = mat[t] / scale; mmax = Math.max(mmax, flat[t]); }
    matrix_view.data = {image: [ndarray(flat, {dtype: "float32", shape: [N, N]})],
                        x: [0], y: [0], dw: [N], dh: [N], head: [head]};
    matrix_mapper.high = mmax > 0 ? mmax : 1;
    query_band.top = query; query_band.bottom = query + 1;
    const bins = info.value_bins, width = (mmax > 0 ? mmax : 1) * 1.0001 / bins;
    const count = new Array(bins).fill(0);
    for (let t = 0; t < N * N; t++) count[Math.min(bins - 1, Math.floor(flat[t] / width))] += 1;
    value_hist.data = {left: count.map((_, b) => b * width),
                       right: count.map((_, b) => (b + 1) * width), count,
                       head: count.map(() => head)};
    setText(matrix_title, "text", fill("matrix_title_local", {head, id: img.id[image]}));
  } else {
    matrix_view.data = {...empty, head: []};
    value_hist.data = {left: [], right: [], count: [], head: []};
    setText(matrix_title, "text", T.matrix_title_none);
  }
  query_band.visible = arow >= 0;
  setText(attention_note, "text", arow >= 0 ? T.attention_local
    : info.num_attention === 0 ? T.attention_none : image >= 0
    ? fill("attention_not_stored", {n: info.num_attention})
    : fill("attention_global", {n: info.num_attention}));
  patches.data = {...patches.data, heat, alpha, head: heat.map(() => head)};
}

state.data = {image: [image], head: [k], mode: [mode], query: [query], metric: [metric],
              kind: [kind || ""]};
"""

SEARCH_JS = r"""
// Find an image by id (exact, else contained) or by label; choose the most confident match.
const q = search.value.trim().toLowerCase();
const d = images.data, n = d.id.length;
const outline = d.attention_row.map((a) => a >= 0 ? 1.5 : 0);
if (!q) {
  images.data = {...d, outline};
  search_status.text = "";
  return;
}
let exact = -1;
const matches = [];
for (let i = 0; i < n; i++) {
  const id = String(d.id[i]).toLowerCase(), label = String(d.label[i]).toLowerCase();
  if (id === q) exact = i;
  if (id.includes(q) || label.includes(q)) matches.push(i);
}
for (const i of matches) outline[i] = 3;
images.data = {...d, outline};
if (exact < 0 && !matches.length) {
  search_status.text = `No image has an id or label containing "${search.value.trim()}".`;
  return;
}
let best = exact;
if (best < 0) {
  best = matches[0];
  for (const i of matches) if (d.prob[i] > d.prob[best]) best = i;
}
search_status.text = exact >= 0 ? `Found image ${d.id[best]}.`
  : `${matches.length} image(s) match "${search.value.trim()}" (outlined); showing the most ` +
    `confident, ${d.id[best]}.`;
images.selected.indices = [best];
"""

GLOBAL_JS = r"""
images.selected.indices = [];
search_status.text = "";
"""

CLS_QUERY_JS = r"""
patches.selected.indices = [];
"""


def update_callback(info: dict[str, Any], args: dict[str, Any]) -> CustomJS:
    """The callback that redraws every view from the current selections and widgets."""
    code = (
        UPDATE_JS.replace("__INFO__", json.dumps(info))
        .replace("__TEXTS__", json.dumps(TEXTS))
        .replace("__KIND_NAMES__", json.dumps(KIND_NAMES))
        .replace("__VIRIDIS__", json.dumps(list(Viridis256)))
    )
    return CustomJS(args=args, code=code)


def search_callback(args: dict[str, Any]) -> CustomJS:
    return CustomJS(args=args, code=SEARCH_JS)


def global_callback(args: dict[str, Any]) -> CustomJS:
    return CustomJS(args=args, code=GLOBAL_JS)


def cls_query_callback(args: dict[str, Any]) -> CustomJS:
    return CustomJS(args=args, code=CLS_QUERY_JS)
