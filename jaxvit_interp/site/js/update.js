// The page's state: one function reads the chosen image, head, pruning mode and query (the
// shared sources' selections), the metric menu and the pattern toggle, redraws every view from
// the results bundle's arrays and records the result in the `state` source. The page runs it
// once when the document is ready, which draws the opening state, and again after every change
// of a selection or widget.
//
// Every number shown is looked up, never computed here: the analysis computed it and the bundle
// carries it (means over images, histograms, most common clusters included). `value(part,
// name, coords)` finds an entry of any bundle array from the registry's dimensions, in the
// page's tables or, for what only the chosen image needs, in that image's record: a script
// that registers it (site/records.py), inline in a single-file site and loaded on demand in a
// folder site. A record that is loading, missing or damaged leaves the views on the values
// over all images, with a note saying why.
//
// `page` holds the models by name and two values from the build: `info` (sizes, names, modes,
// which parts exist, the registry, where each array lives) and `value_palette` (B1's colours,
// light to dark).
//
// Plot titles are one line on a canvas, which cuts what does not fit: an image id or class
// name in a title is shortened to `info.id_chars` / `info.name_chars` characters (the text
// boxes, which wrap, show them whole).

// Every text the page shows; `fill` replaces each {key}.
export const TEXTS = {
  scope_global: "mean over all images",
  scope_local: "image {id}",
  image_info_global: "All {n} images (global view). Click an image or search to make the views " +
    "local to it.",
  image_info_local: "Chosen image: {id} | label {label} | predicted {predicted} " +
    "(p(label) = {prob})",
  image_info_backbone: "Chosen image: {id}",
  importance_title: "{metric} ({scope})",
  partial_title: "p(label) after partial pruning: {head}",
  partial_none: "This results bundle has no partial-pruning results.",
  partial_global: "Mean over the {n} images with partial pruning; choose one of them for its own " +
    "bars and top-5 predictions.",
  partial_local: "Partial pruning for image {id}; click a bar for that mode's top-5 predictions.",
  partial_not_computed: "Partial pruning was not computed for this image (only for the {n} " +
    'images whose tooltip in A lists "partial pruning").',
  top5_local: 'top-5 after pruning "{mode}"',
  top5_global: "top-5: choose an image",
  top5_not_computed: "top-5: not computed here",
  entropy_title: "head entropy across layers ({scope})",
  hop_title: "strength across neighbours: {head}",
  special_title: "special tokens: {head}",
  entropy_hist_title: "entropy of {head} over all images",
  embedding_title: "{kind} patterns ({scope}); chosen: {head}",
  reps_title: "pattern clusters ({head}: #{cluster})",
  image_title_global: "chosen image: click a patch to make it the query",
  image_title_cls: "{head}; query: the CLS token",
  image_title_patch: "{head}; query: patch (row {row}, col {col})",
  matrix_title_none: "attention matrix (rows: query, columns: key)",
  matrix_title_local: "attention of {head}, image {id}",
  attention_global: "Choose an image in A: the {n} outlined images have stored attention.",
  attention_global_all: "Choose an image in A to see its attention.",
  attention_not_stored: "Attention was not stored for this image (only for the {n} outlined " +
    "images in A).",
  attention_local: "Stored as 8-bit codes of a root of each patch weight (special tokens: " +
    "float16). Worst error in this matrix: {error} absolute, {relative} relative (weights " +
    "from {share}/N = {floor} up); for this head over all images: {error_max}, {relative_max}.",
  attention_local_linear: "Stored as 8-bit codes with a step per row: worst absolute error " +
    "{error} in this matrix, {error_max} for this head over all images.",
  attention_none: "This results bundle stores no attention matrices.",
  record_loading: "Loading the data of image {id}...",
  record_missing: "The data of image {id} could not be loaded: {file} is missing. The views " +
    "show values over all images.",
  record_damaged: "The data of image {id} could not be read: {file} is damaged ({why}). The " +
    "views show values over all images.",
  rollout_title: "rollout ({scope})",
  rollout_bars_title: "layer contributions",
  scope_class: "mean over {n} images of class {name}",
  interaction_title: "pair interactions: {metric}",
  class_map_title: "{metric}: class mean - mean over all images{chosen}",
  class_map_chosen: "; chosen: {name}",
  top5_row: "{name}: {prob}",
  explain_local: "Image {id}: each method's map of what its label ({label}) rests on, over its " +
    "pixels (each map's heat scaled to its own range), and its curves.",
  explain_global: "{n} images were explained: {ids}. Choose one of them (click it in A or " +
    "search its id) for its maps; the curves are their means.",
  explain_not_explained: "Image {id} was not explained; the {n} explained images are {ids}. " +
    "Choose one of them (click it in A or search its id) for its maps; the curves are their means.",
  explain_curves_local: "{mode}: image {id}",
  explain_curves_global: "{mode}: mean over {n} explained images",
  explain_more_ids: "{ids} and {more} more",
  // Two lines: a metric of an ablation kind and a class scope are too long for one.
  explain_heads_x: "importance: {metric}\n{scope}",
  patching_mean: "activation patching: mean normalised score per head",
  patching_pair: "activation patching, pair {n}: {clean} -> {corrupt} (p(y) {p_clean} clean, " +
    "{p_corrupt} corrupted{unscored})",
  patching_unscored: "; too close to score",
};
// The explained images' ids F's note lists at most; a count says how many more there are.
const EXPLAIN_IDS = 12;
const KIND_NAMES = {cls: "CLS", patch: "patch"};

// ---- text and array helpers ------------------------------------------------------------------
export const fixed = (v, digits) => Number.isFinite(v) ? v.toFixed(digits) : "n/a";
export const sig = (v) => !Number.isFinite(v) ? "n/a" :
  (v !== 0 && (Math.abs(v) >= 1000 || Math.abs(v) < 0.01)) ? v.toExponential(1) : v.toPrecision(3);
export const fill = (name, values) =>
  TEXTS[name].replace(/\{(\w+)\}/g, (_, key) => String(values[key]));
// Changing a Div's text re-lays out the whole page, so unchanged texts are left alone.
const setText = (model, attr, text) => { if (model[attr] !== text) model[attr] = text; };
const last = (a) => a[a.length - 1];
const repeat = (n, value) => new Array(n).fill(value);
// A typed view of `length` entries from `start` of a decoded column: no copy.
const slice = (col, Type, start, length) =>
  new Type(col.buffer, col.byteOffset + start * Type.BYTES_PER_ELEMENT, length);

// A histogram's axis of counts: from 0 to the largest count plus 5%, as Bokeh pads its own.
const fitCounts = (range, counts) => { range.end = 1.05 * Math.max(1, ...counts); };
// An axis from 0 to the largest finite value and `room` more (for labels over bars), or to 1
// when there is none: a fixed 0..1 hides the bars of a model that is never sure.
export function fitRange(range, values, room = 1.1) {
  const top = Math.max(0, ...Array.from(values).filter(Number.isFinite));
  range.start = 0;
  range.end = top > 0 ? room * top : 1;
}
// An image id (its end, which tells images apart) or a class name (its start) in a title.
export const shortId = (info, id) => String(id).length <= info.id_chars ? String(id)
  : "…" + String(id).slice(-(info.id_chars - 1));
export const shortName = (info, name) => String(name).length <= info.name_chars ? String(name)
  : String(name).slice(0, info.name_chars - 1) + "…";

// `count` equal bins of width `width` from 0; values past the last bin count in it.
function histogram(values, count, width) {
  const counts = repeat(count, 0);
  for (const v of values) {
    if (Number.isFinite(v)) counts[Math.max(0, Math.min(count - 1, Math.floor(v / width)))] += 1;
  }
  return {
    left: counts.map((_, b) => b * width), right: counts.map((_, b) => (b + 1) * width), counts,
  };
}

// ---- per-image records ------------------------------------------------------------------------

// The value of an IEEE float16 from its bits (exact in float32, as NumPy's float16 -> float32).
export function halfValue(bits) {
  const sign = bits & 0x8000 ? -1 : 1, e = (bits >> 10) & 0x1f, f = bits & 0x3ff;
  if (e === 0x1f) return f ? NaN : sign * Infinity;
  return sign * (e ? (1024 + f) * 2 ** (e - 25) : f * 2 ** -24);
}

// The [N, N] attention matrix whose rows start at row `base` of a decoded record's attention
// (attention_codes.py: decode_attention): row q is codes[q, :] * steps[q] (linear), or the X
// special tokens' float16 columns then codes[q, t]^p * steps[q] with p = exponents[q] (power).
// codes^p is exact in a double (p <= 4); its product with the step is rounded to a double and
// then into the float32 array, as NumPy rounds it.
export function attentionMatrix(attention, base, N) {
  const {code, X, steps, exponents, special, codes} = attention;
  const flat = new Float32Array(N * N);
  for (let q = 0; q < N; q++) {
    const step = steps[base + q], row = (base + q) * N;
    if (code === "linear") {
      for (let t = 0; t < N; t++) flat[q * N + t] = codes[row + t] * step;
      continue;
    }
    for (let t = 0; t < X; t++) flat[q * N + t] = halfValue(special[(base + q) * X + t]);
    const p = exponents[base + q];
    for (let t = X; t < N; t++) {
      const c = codes[row + t];
      let power = c * c;
      if (p >= 3) power *= c;
      if (p >= 4) power *= c;
      flat[q * N + t] = power * step;
    }
  }
  return flat;
}

// Created by the page's first script (site/records.py); record scripts register into it.
const registry = () => window.jaxvitRecords;
const TYPES = {float32: Float32Array, int32: Int32Array};
const recordFile = (info, i) => info.records.inline ? "the page's inline data"
  : `${info.records.folder}/${String(i).padStart(6, "0")}.js`;

function base64Bytes(text) {
  const s = atob(text), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
// The deflated bytes whose pieces are `parts`, inflated.
const inflate = async (parts) => new Uint8Array(await new Response(
  new Blob(parts).stream().pipeThrough(new DecompressionStream("deflate"))).arrayBuffer());

// The JPEG of the record, decoded by the browser, as packed RGBA rows (image_rgba's layout).
async function decodePixels(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  return {rgba: new Uint32Array(data.buffer), shape: [canvas.height, canvas.width]};
}

// Tell the page a record changed: writing the `records` source runs update again, soon (BokehJS
// runs callbacks asynchronously), so a record counts as pending until a task later. The serial
// number makes each write a change: BokehJS ignores a write of an equal value.
async function announce(page, i, r) {
  const reg = registry();
  reg.serial = (reg.serial ?? 0) + 1;
  page.records.data = {image: [i], status: [r.status], serial: [reg.serial]};
  await new Promise((resolve) => setTimeout(resolve, 0));
}

// The attention and pixels of a record decode in the background; the page redraws after each.
function decodeLater(page, i, r, raw) {
  const reg = registry();
  const work = async (key, decode) => {
    reg.pending += 1;
    try {
      r[key] = await decode();
    } catch (err) {
      r[`${key}_error`] = String(err && err.message || err);
    }
    await announce(page, i, r);
    reg.pending -= 1;
  };
  if (raw.attention !== undefined) {
    work("attention", async () => {
      const {L, H, N} = page.info.sizes, rows = L * H * N;
      // The power code's row exponents and special tokens' float16 columns (site/records.py);
      // linear codes (version-3 bundles) have neither.
      const power = page.info.attention_code === "power", X = power ? page.info.sizes.X : 0;
      const e = rows * 4, s = e + (power ? rows : 0), at = s + rows * X * 2;
      // Base64 pieces of the deflated bytes (site/records.py: attention_record).
      const bytes = await inflate(raw.attention.map(base64Bytes));
      if (bytes.length !== at + rows * N) throw new Error("attention of the wrong size");
      return {code: page.info.attention_code, X,
              steps: new Float32Array(bytes.buffer.slice(0, e)),
              exponents: new Uint8Array(bytes.buffer, e, s - e),
              special: new Uint16Array(bytes.buffer.slice(s, at)),
              codes: new Uint8Array(bytes.buffer, at, rows * N)};
    });
  }
  if (raw.pixels !== undefined) work("pixels", () => decodePixels(raw.pixels));
}

function decodeRecord(page, i, r, raw) {
  try {
    const values = {};
    for (const [key, layout] of Object.entries(page.info.records.arrays)) {
      const text = raw.values[key];
      if (text === undefined) continue;  // e.g. partial pruning of an image outside its subset
      const bytes = base64Bytes(text);
      values[key] = new TYPES[layout.dtype](bytes.buffer);
    }
    r.values = values;
    r.status = "ready";
  } catch (err) {
    r.status = "damaged";
    r.why = String(err && err.message || err);
    return;
  }
  decodeLater(page, i, r, raw);
}

// The record of image i, decoded or on its way: {status: "loading" | "ready" | "missing" |
// "damaged", values, attention, pixels}.
function record(page, i) {
  const reg = registry();
  let r = reg.decoded.get(i);
  if (r !== undefined) return r;
  r = {status: "loading", values: null, attention: null, pixels: null, why: ""};
  reg.decoded.set(i, r);
  const fail = (status, why) => { r.status = status; r.why = why; };
  if (reg.raw.has(i)) {
    decodeRecord(page, i, r, reg.raw.get(i));
  } else if (page.info.records.inline) {
    fail("missing", "");
  } else {
    reg.pending += 1;
    const tag = document.createElement("script");
    const done = async (status) => {
      tag.remove();
      if (status === "loaded" && reg.raw.has(i)) decodeRecord(page, i, r, reg.raw.get(i));
      else if (status === "loaded") fail("damaged", "it did not register its data");
      else fail("missing", "");
      await announce(page, i, r);
      reg.pending -= 1;
    };
    tag.onload = () => done("loaded");
    tag.onerror = () => done("error");
    tag.src = recordFile(page.info, i);
    document.head.appendChild(tag);
  }
  return r;
}

// ---- the bundle's arrays -----------------------------------------------------------------------

// Where array `part/name` keeps the entry at `coords` (e.g. {I: image, L: layer, H: head}): its
// dimensions come from the registry, their sizes from info.sizes, row-major as NumPy lays it out.
// A dimension missing from `coords` counts from 0, which gives the start of a block.
export function offset(info, part, name, coords) {
  let at = 0;
  for (const dim of info.registry.schema[part][name]) at = at * info.sizes[dim] + (coords[dim] ?? 0);
  return at;
}
// The flat column of bundle array `part/name` (each lives in the table of its dimensions).
const column = (page, part, name) => {
  const key = `${part}/${name}`;
  return page[page.info.tables[key]].data[key];
};
// An entry of a bundle array; a record's arrays are found in the record of image `coords.I`,
// laid out without their image dimension (NaN until it is decoded).
function value(page, part, name, coords) {
  const key = `${part}/${name}`, info = page.info;
  if (info.tables[key] !== "record") return column(page, part, name)[offset(info, part, name, coords)];
  const r = registry().decoded.get(coords.I), values = r && r.values && r.values[key];
  if (!values) return NaN;
  let at = 0;
  for (const dim of info.records.arrays[key].dims) at = at * info.sizes[dim] + (coords[dim] ?? 0);
  return values[at];
}
// The layer and head of head k, as coordinates.
const headAt = (info, k) => ({L: Math.floor(k / info.num_heads), H: k % info.num_heads});

// ---- the state --------------------------------------------------------------------------------

// The state the selections and widgets ask for; null after normalising a selection, whose change
// runs update again.
function readState(page) {
  const {info, images, heads, partial_bars, patches, state, metric_select, kind_toggle} = page;
  const previous = (col) => state.data[col]?.[0];  // the state is empty before the first run
  const isel = images.selected.indices;
  if (isel.length > 1) { images.selected.indices = [last(isel)]; return null; }
  const hsel = heads.selected.indices;
  if (hsel.length !== 1) {
    heads.selected.indices = [hsel.length ? last(hsel) : previous("head") ?? 0];
    return null;
  }
  const msel = partial_bars.selected.indices;
  if (msel.length !== 1) {
    partial_bars.selected.indices = [msel.length ? last(msel) : previous("mode") ?? 0];
    return null;
  }
  const psel = patches.selected.indices;
  if (psel.length > 1) { patches.selected.indices = [last(psel)]; return null; }
  // E4: a cell of the class map chooses a class and a head; E1: a cell chooses a pair of heads.
  // A newly chosen class leaves the chosen image (and a newly chosen image the class), so that
  // B shows one of them; a newly chosen pair makes its first head the chosen head, and choosing
  // a head outside the pair lets the pair go.
  // E1 exists only with the bundle's head_sets part: read as an optional member.
  const class_cells = page.class_cells, interaction_cells = page.interaction_cells;
  const LH = info.num_layers * info.num_heads;
  const csel = class_cells ? class_cells.selected.indices : [];
  if (csel.length > 1) { class_cells.selected.indices = [last(csel)]; return null; }
  const classCell = csel.length ? csel[0] : -1, prevCell = previous("class_cell") ?? -1;
  if (classCell >= 0 && classCell !== prevCell) {
    if (isel.length) { images.selected.indices = []; return null; }
    if (hsel[0] !== classCell % LH) { heads.selected.indices = [classCell % LH]; return null; }
  } else if (classCell >= 0 && isel.length && isel[0] !== previous("image")) {
    class_cells.selected.indices = []; return null;
  }
  const xsel = interaction_cells ? interaction_cells.selected.indices : [];
  if (xsel.length > 1) { interaction_cells.selected.indices = [last(xsel)]; return null; }
  const pairCell = xsel.length ? xsel[0] : -1;
  if (pairCell >= 0) {
    const pair = [interaction_cells.data.head_i[pairCell], interaction_cells.data.head_j[pairCell]];
    if (pairCell !== (previous("pair_cell") ?? -1)) {
      if (hsel[0] !== pair[0]) { heads.selected.indices = [pair[0]]; return null; }
    } else if (!pair.includes(hsel[0])) {
      interaction_cells.selected.indices = []; return null;
    }
  }

  const image = isel.length ? isel[0] : -1, k = hsel[0];
  const kinds = info.kinds;
  const kind = kinds.length ? kinds[Math.min(kind_toggle.active, kinds.length - 1)] : null;
  const hd = heads.data;
  const rec = image >= 0 ? record(page, image) : null;
  // The views are local to the chosen image once its record is read; until then (or when it
  // cannot be) they show the values over all images.
  const local = rec !== null && rec.status === "ready";
  const id = image >= 0 ? images.data.id[image] : "";
  // The chosen class's row of the class map, when no image is chosen.
  const classRow = classCell >= 0 && image < 0 ? Math.floor(classCell / LH) : -1;
  const cd = class_cells ? class_cells.data : null;
  return {
    image,
    classCell,
    classRow,
    pairCell,
    classScope: classRow >= 0 ? fill("scope_class", {n: cd.count[classCell],
      name: shortName(info, cd.class_name[classCell])}) : "",
    // B1's value of head j: the chosen image's, the chosen class's mean, or the mean over all.
    importance: (metric, j) => classRow >= 0 ? cd[`mean_${metric}`][classRow * LH + j]
      : local ? value(page, "importance", metric, {I: image, ...headAt(info, j)})
      : value(page, "importance", `${metric}_mean`, headAt(info, j)),
    rec,
    local,
    k,
    mode: msel[0],
    // No patch chosen: the CLS token, or the centre patch of a model without CLS.
    query: psel.length ? info.first_patch + psel[0] : info.default_query,
    metric: metric_select.value,
    kind,
    kindChanged: previous("kind") !== (kind || ""),
    previousClassCell: previous("class_cell") ?? -1,
    head: hd.name[k],
    // Until the chosen image's record is read the views show the values over all images (the
    // record note says why).
    scope: local ? fill("scope_local", {id: shortId(info, id)}) : TEXTS.scope_global,
    // What the chosen image's record says, when it is not (yet) read.
    recordNote: rec === null || local ? "" : fill(`record_${rec.status}`,
      {id, file: recordFile(info, image), why: rec.why}),
    // Head j's value of a per-image array for the chosen image, or its summary over all images
    // (the bundle's `${name}_mean`, or the array named by `overall`).
    pick: (part, name, j, extra = {}, overall = `${name}_mean`) => local
      ? value(page, part, name, {I: image, ...headAt(info, j), ...extra})
      : value(page, part, overall, {...headAt(info, j), ...extra}),
  };
}

// ---- views ------------------------------------------------------------------------------------

// A: what the chosen image is; a search's message goes once another image is chosen.
function drawImageInfo({info, images, image_info, search_status}, s) {
  const img = images.data, i = s.image;
  if (search_status.text && search_status.tags[0] !== i) search_status.text = "";
  const chosen = () => info.has_classifier
    ? fill("image_info_local", {id: img.id[i], label: img.label[i], predicted: img.predicted[i],
                                prob: fixed(img.prob[i], 3)})
    : fill("image_info_backbone", {id: img.id[i]});
  setText(image_info, "text", i >= 0
    ? [chosen(), s.recordNote].join(" ").trim()
    : fill("image_info_global", {n: info.num_images}));
}

// The shared heads source: B1's metric value, C1's entropy and D1's position of every head.
function drawHeads({info, heads, value_mapper, value_palette, importance_title, value_colorbar},
                   s) {
  const LH = info.num_layers * info.num_heads, {metric, kind} = s;
  const shown = new Array(LH), entropy = new Array(LH), pos_x = new Array(LH);
  const pos_y = new Array(LH);
  let lo = Infinity, hi = -Infinity;
  for (let j = 0; j < LH; j++) {
    const v = s.importance(metric, j);
    shown[j] = v;
    if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    entropy[j] = s.pick("strength", "head_entropy", j);
    pos_x[j] = kind ? s.pick("patterns", `${kind}_positions`, j, {xy: 0}) : 0;
    pos_y[j] = kind ? s.pick("patterns", `${kind}_positions`, j, {xy: 1}) : 0;
  }
  if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
  if (!(hi > lo)) { const pad = 0.5 * (Math.abs(lo) || 1); lo -= pad; hi += pad; }
  const importantHigh = info.metric_info[metric].important_high;
  value_mapper.low = lo;
  value_mapper.high = hi;
  // Dark marks an important head whichever direction the metric runs.
  value_mapper.palette = importantHigh ? value_palette.slice().reverse() : value_palette;
  const text_color = shown.map((v) => {
    const t = (v - lo) / (hi - lo);
    return (importantHigh ? t > 0.55 : t < 0.45) ? "#ffffff" : "#000000";
  });
  heads.data = {...heads.data, value: shown, entropy, pos_x, pos_y, text_color,
                value_text: shown.map(sig), metric: repeat(LH, metric)};
  setText(importance_title, "text",
          fill("importance_title", {metric, scope: s.classScope || s.scope}));
  // A further kind's or the direct attribution's name is longer than a short grid's colour
  // bar: the plot's title names it.
  setText(value_colorbar, "title", info.metrics.includes(metric) ? metric : "");
}

// B2: p(label) after each partial-pruning mode of the chosen head; B3: the chosen mode's top-5.
function drawPartial(page, s) {
  const {info, images, partial_bars, partial_note, partial_title, partial_y_range, top5_view,
         top5_title, top5_x_range} = page;
  const modes = info.pruning_modes, M = modes.length;
  const {image, k, head} = s, at = headAt(info, k);
  const row = image >= 0 ? images.data.partial_row[image] : -1;
  let probs = repeat(M, NaN), note;
  if (!info.has_partial) {
    note = TEXTS.partial_none;
  } else if (image >= 0 && row < 0) {
    note = fill("partial_not_computed", {n: info.num_partial});
  } else if (s.local) {
    probs = probs.map((_, m) => value(page, "partial", "prob", {I: image, ...at, M: m}));
    note = fill("partial_local", {id: images.data.id[image]});
  } else {
    probs = probs.map((_, m) => value(page, "partial", "prob_mean", {...at, M: m}));
    note = [fill("partial_global", {n: info.num_partial}), s.recordNote].join(" ").trim();
  }
  partial_bars.data = {mode: modes, prob: probs.map((v) => Number.isFinite(v) ? v : 0),
                       label: probs.map((v) => info.has_partial ? sig(v) : ""),
                       head: repeat(M, head)};
  fitRange(partial_y_range, probs, 1.2);  // room for the labels over the bars
  setText(partial_note, "text", note);
  setText(partial_title, "text", fill("partial_title", {head}));

  const rank = [], prob = [], text = [], name = [], y = [];
  if (row >= 0 && s.local) {
    const TOPK = info.top_k;
    for (let t = 0; t < TOPK; t++) {
      const where = {I: image, ...at, M: s.mode, T: t};
      const p = value(page, "partial", "top5_probs", where);
      rank.push(t + 1); y.push(TOPK - t); prob.push(p);
      name.push(info.class_names[value(page, "partial", "top5_classes", where)]);
      text.push(fill("top5_row", {name: shortName(info, last(name)), prob: sig(p)}));
    }
  }
  top5_view.data = {rank, prob, text, name, y, head: repeat(rank.length, head)};
  fitRange(top5_x_range, prob);
  setText(top5_title, "text", row >= 0 && s.local ? fill("top5_local", {mode: modes[s.mode]})
    : image >= 0 ? TEXTS.top5_not_computed : TEXTS.top5_global);
}

// C1's title, C2: the chosen head's strength per hop; C3: its entropy over all images.
function drawStrength(page, s) {
  const {info, hop_bars, hop_title, entropy_title, entropy_hist, entropy_hist_title,
         entropy_hist_y_range, entropy_span} = page;
  const K = info.num_hops, {image, k, head} = s, at = headAt(info, k);
  const hop = Array.from({length: K}, (_, t) => t);
  hop_bars.data = {hop, strength: hop.map((t) => s.pick("strength", "strength", k, {K: t})),
                   mass: hop.map((t) => s.pick("strength", "mass", k, {K: t})),
                   head: repeat(K, head)};
  setText(hop_title, "text", fill("hop_title", {head}));
  setText(entropy_title, "text", fill("entropy_title", {scope: s.scope}));
  // The head's entropy over all images, as the bundle's histogram bins it.
  const edges = column(page, "strength", "entropy_bin_edges"), bins = edges.length - 1;
  const counts = Array.from({length: bins},
                            (_, b) => value(page, "strength", "entropy_histogram", {...at, B: b}));
  entropy_hist.data = {left: Array.from(edges.slice(0, bins)), right: Array.from(edges.slice(1)),
                       count: counts, head: repeat(bins, head)};
  fitCounts(entropy_hist_y_range, counts);
  setText(entropy_hist_title, "text", fill("entropy_hist_title", {head}));
  if (s.local) {
    entropy_span.location = value(page, "strength", "head_entropy", {I: image, ...at});
  }
  entropy_span.visible = s.local;
  if (info.has_special) drawSpecial(page, s);
}

// C4: the chosen head's attention to and from each special token.
function drawSpecial({info, special_bars, special_title, special_y_range}, s) {
  const names = info.special_tokens, {k, head} = s;
  const to = names.map((_, t) => s.pick("strength", "special_to", k, {X: t}));
  const from = names.map((_, t) => s.pick("strength", "special_from", k, {X: t}));
  special_bars.data = {token: names, to, from, head: repeat(names.length, head)};
  fitRange(special_y_range, [...to, ...from]);
  setText(special_title, "text", fill("special_title", {head}));
}

// D1: the heads in the pattern embedding, the chosen head on each image, and the cluster
// representatives with the chosen head's cluster outlined.
function drawEmbedding(page, s) {
  const {info, images, embedding, density, representatives, density_view, head_images,
         embedding_title,
         embedding_x_range, embedding_y_range, reps_view, reps_highlight, reps_title,
         reps_x_range, reps_y_range} = page;
  const {kind, k, head} = s;
  if (!kind) return;
  if (s.kindChanged) {
    const d = density.data, r = d.kind.indexOf(kind);
    density_view.data = {image: [d.image[r]], x: [d.x[r]], y: [d.y[r]], dw: [d.dw[r]],
                         dh: [d.dh[r]]};
    const e = info.extents[kind];
    embedding_x_range.start = e[0]; embedding_x_range.end = e[1];
    embedding_y_range.start = e[2]; embedding_y_range.end = e[3];
  }
  // The chosen head on each image of the page's sample (every image up to a few hundred).
  const {L, H} = info.sizes, at = headAt(info, k), sample = info.embedding_images;
  const flat = embedding.data[kind], n = sample.length;
  const position = (xy) => Array.from({length: n},
    (_, r) => flat[((r * L + at.L) * H + at.H) * 2 + xy]);
  const img = images.data, pick = (col) => Array.from(sample, (i) => col[i]);
  head_images.data = {x: position(0), y: position(1),
                      size: Array.from(sample, (i) => i === s.image ? 11 : 5),
                      color: pick(img.color), id: pick(img.id), label: pick(img.label)};
  setText(embedding_title, "text",
          fill("embedding_title", {kind: KIND_NAMES[kind], scope: s.scope, head}));

  const rp = representatives.data;
  const cluster = s.pick("patterns", `${kind}_clusters`, k, {}, `${kind}_head_cluster`);
  const rows = [];
  for (let j = 0; j < rp.kind.length; j++) if (rp.kind[j] === kind) rows.push(j);
  const col = (name) => rows.map((j) => rp[name][j]);
  const x = col("x"), y = col("y"), dw = col("dw"), dh = col("dh");
  // Two-line captions: the cluster over its size, narrow enough for a representative's width.
  reps_view.data = {image: col("image"), x, y, dw, dh, cluster: col("cluster"),
    members: col("count"), count: rows.map((j) => `#${rp.cluster[j]}\n${rp.count[j]}`),
    label_x: col("label_x"), label_y: col("label_y")};
  const c = rows.findIndex((j) => rp.cluster[j] === cluster);
  reps_highlight.data = c < 0 ? {x: [], y: [], w: [], h: []} :
    {x: [x[c] + dw[c] / 2], y: [y[c] + dh[c] / 2], w: [dw[c] + 0.7], h: [dh[c] + 0.7]};
  setText(reps_title, "text", fill("reps_title", {head, cluster}));
  if (s.kindChanged && rows.length) {
    [reps_x_range.start, reps_x_range.end, reps_y_range.start, reps_y_range.end] =
      info.strips[kind];
  }
}

// D2: the chosen image (its record's pixels at the model's input resolution, the page's
// thumbnail until they arrive) with the query's attention over its patches; D3: the chosen
// head's attention matrix; D5: the histogram of its values.
function drawAttention(page, s) {
  const {info, images, thumbnails, patches, thumb, query_marker, heat_mapper,
         matrix_view, matrix_mapper, query_band, value_hist, value_hist_x_range, value_hist_y_range,
         image_title, matrix_title, attention_note} = page;
  const {image, k, head, query, rec} = s;
  const [GH, GW] = info.grid, P = GH * GW, N = info.num_tokens, FIRST = info.first_patch;
  const empty = {image: [], x: [], y: [], dw: [], dh: []};
  const heat = repeat(P, 0), alpha = repeat(P, 0);
  const stored = image >= 0 && images.data.attention_row[image] >= 0;
  const {ndarray} = Bokeh.require("core/util/ndarray");
  const [TH, TW] = info.thumbnail_shape;
  const pixels = rec && rec.pixels;
  thumb.data = image < 0 ? empty : {
    image: [pixels ? ndarray(pixels.rgba, {dtype: "uint32", shape: pixels.shape})
      : ndarray(slice(thumbnails.data.rgba, Uint32Array, image * TH * TW, TH * TW),
                {dtype: "uint32", shape: [TH, TW]})],
    x: [0], y: [0], dw: [GW], dh: [GH]};
  if (query >= FIRST) {
    const p = query - FIRST, r = Math.floor(p / GW), c = p % GW;
    query_marker.data = {x: [c + 0.5], y: [GH - r - 0.5]};
    setText(image_title, "text", image >= 0 ? fill("image_title_patch", {head, row: r, col: c})
      : TEXTS.image_title_global);
  } else {
    query_marker.data = {x: [], y: []};
    setText(image_title, "text", image >= 0 ? fill("image_title_cls", {head})
      : TEXTS.image_title_global);
  }
  const attention = stored && s.local ? rec.attention : null;
  if (attention) {
    // The chosen head's [N, N] block.
    const at = headAt(info, k);
    const flat = attentionMatrix(attention, (at.L * info.num_heads + at.H) * N, N);
    let mmax = 0;
    for (const v of flat) mmax = Math.max(mmax, v);
    let hmax = 0;
    for (let p = 0; p < P; p++) {
      heat[p] = flat[query * N + FIRST + p];
      hmax = Math.max(hmax, heat[p]);
    }
    for (let p = 0; p < P; p++) alpha[p] = hmax > 0 ? 0.1 + 0.75 * heat[p] / hmax : 0.1;
    heat_mapper.high = hmax > 0 ? hmax : 1;
    matrix_view.data = {image: [ndarray(flat, {dtype: "float32", shape: [N, N]})],
                        x: [0], y: [0], dw: [N], dh: [N], head: [head]};
    matrix_mapper.high = mmax > 0 ? mmax : 1;
    query_band.top = query; query_band.bottom = query + 1;
    const bins = info.value_bins;
    const {left, right, counts} = histogram(flat, bins, (mmax > 0 ? mmax : 1) * 1.0001 / bins);
    value_hist.data = {left, right, count: counts, head: repeat(bins, head)};
    value_hist_x_range.end = last(right);
    fitCounts(value_hist_y_range, counts);
    setText(matrix_title, "text",
            fill("matrix_title_local", {head, id: shortId(info, images.data.id[image])}));
  } else {
    matrix_view.data = {...empty, head: []};
    value_hist.data = {left: [], right: [], count: [], head: []};
    setText(matrix_title, "text", TEXTS.matrix_title_none);
  }
  query_band.visible = attention !== null;
  let note;
  if (info.num_attention === 0) {
    note = TEXTS.attention_none;
  } else if (image < 0) {
    note = info.num_attention < info.num_images ? fill("attention_global", {n: info.num_attention})
      : TEXTS.attention_global_all;
  } else if (!stored) {
    note = fill("attention_not_stored", {n: info.num_attention});
  } else if (!s.local) {
    note = s.recordNote;
  } else if (rec.attention_error) {
    note = fill("record_damaged", {id: images.data.id[image], file: recordFile(info, image),
                                   why: rec.attention_error});
  } else if (!attention) {
    note = fill("record_loading", {id: images.data.id[image]});
  } else {
    const at = headAt(info, k), linear = info.attention_code === "linear";
    // Linear codes (version-3 bundles) kept no relative error; their note names none.
    const percent = (name, coords) => linear ? "" : `${sig(100 * value(page, "attention", name,
                                                                       coords))}%`;
    note = fill(linear ? "attention_local_linear" : "attention_local", {
      error: sig(value(page, "attention", "error", {I: image, ...at})),
      error_max: sig(value(page, "attention", "error_max", at)),
      relative: percent("relative_error", {I: image, ...at}),
      relative_max: percent("relative_error_max", at),
      share: info.relative_floor, floor: sig(info.relative_floor / N),
    });
  }
  setText(attention_note, "text", note);
  patches.data = {...patches.data, heat, alpha, head: repeat(P, head)};
}

// D4: the chosen image's attention rollout map over its pixels (the thumb source D2 draws, in
// D2's overlay style) and each layer's contribution; their means over all images when no image
// is chosen or its record is not read. Absent when the bundle has no rollout part.
function drawRollout(page, s) {
  const {info, rollout_cells, rollout_mapper, rollout_bars, rollout_bars_y_range, rollout_title,
         rollout_bars_title} = page;
  if (!info.has_rollout) return;
  const [GH, GW] = info.grid, P = GH * GW, L = info.num_layers;
  const at = (name, coords) => s.local
    ? value(page, "rollout", name, {I: s.image, ...coords})
    : value(page, "rollout", `${name}_mean`, coords);
  const heat = Array.from({length: P}, (_, p) => at("map", {gh: Math.floor(p / GW), gw: p % GW}));
  const hmax = Math.max(0, ...heat.filter(Number.isFinite));
  rollout_mapper.high = hmax > 0 ? hmax : 1;
  rollout_cells.data = {...rollout_cells.data, heat,
                        alpha: heat.map((v) => hmax > 0 ? 0.1 + 0.75 * v / hmax : 0.1)};
  const layer = Array.from({length: L}, (_, l) => l);
  const contribution = layer.map((l) => at("contribution", {L: l}));
  rollout_bars.data = {layer, contribution, label: contribution.map(sig)};
  fitRange(rollout_bars_y_range, contribution);
  setText(rollout_title, "text", fill("rollout_title", {scope: s.scope}));
  setText(rollout_bars_title, "text", TEXTS.rollout_bars_title);
}

// A diverging colour range, symmetric around 0, over the finite values.
function symmetric(mapper, values) {
  let m = 0;
  for (const v of values) if (Number.isFinite(v)) m = Math.max(m, Math.abs(v));
  mapper.low = -(m > 0 ? m : 1); mapper.high = m > 0 ? m : 1;
}

// E1: the interactions under the chosen metric (kl for kl, prob_drop otherwise) and B1's outline
// of the chosen pair; E4: the class map under the metric the chosen one maps to (prob_drop for
// prob, whose class means show the model's confidence in each class rather than its heads), the
// chosen class's images outlined in A.
function drawHeadSets(page, s) {
  const {info, images, heads, pair_marks, class_cells, class_top, class_top_all, class_mapper,
         class_map_title} = page;
  const {metric} = s;
  // E1 exists only with the bundle's head_sets part.
  const interaction_cells = page.interaction_cells, interaction_mapper = page.interaction_mapper;
  const interaction_title = page.interaction_title;
  if (interaction_cells) {
    const field = metric === "kl" ? "kl" : "prob_drop", d = interaction_cells.data;
    const values = Array.from(d[field]);
    interaction_cells.data = {...d, value: values};
    symmetric(interaction_mapper, values);
    setText(interaction_title, "text", fill("interaction_title", {metric: field}));
  }
  const pair = s.pairCell >= 0 ? [interaction_cells.data.head_i[s.pairCell],
                                  interaction_cells.data.head_j[s.pairCell]] : [];
  pair_marks.data = {x: pair.map((j) => heads.data.head[j]), y: pair.map((j) => heads.data.layer[j])};
  if (!class_cells) return;
  const shown = info.metric_info[metric].class_map;
  const d = class_cells.data, values = Array.from(d[`spec_${shown}`]);
  class_cells.data = {...d, value: values};
  symmetric(class_mapper, values);
  class_top.data = {x: class_top_all.data[`${shown}_x`], y: class_top_all.data[`${shown}_y`]};
  const name = s.classCell >= 0 ? d.class_name[s.classCell] : null;
  setText(class_map_title, "text", fill("class_map_title", {metric: shown,
    chosen: name === null ? "" : fill("class_map_chosen", {name: shortName(info, name)})}));
  if (s.classCell !== s.previousClassCell) {
    // Outline the class's images in A (search outlines its matches the same way).
    const img = images.data;
    const outline = Array.from(img.base_outline, (b, i) => name !== null && img.label[i] === name ? 3 : b);
    images.data = {...img, outline};
  }
}

// F: the chosen image's explanation maps over its pixels (the thumb source D2 draws, in D4's
// overlay style) and its deletion and insertion curves when it is one of the explained images;
// else no maps and the mean curves over the explained images (built with the page), and a note
// naming those images. The head panels' x axis names B1's metric and scope, whose values
// (the heads source's `value`) they draw. Absent when the bundle has no explanations part.
function drawExplanations(page, s) {
  const {info, images, thumb} = page;
  const facts = info.explanations;
  if (!facts) return;
  // F's models exist only with the bundle's explanations part: read as optional members.
  const explain_photo = page.explain_photo, explain_cells = page.explain_cells;
  const explain_curves = page.explain_curves, explain_mean_curves = page.explain_mean_curves;
  const explain_note = page.explain_note;
  const {methods, modes} = facts, n = facts.image_index.length;
  const row = s.image >= 0 ? facts.image_index.indexOf(s.image) : -1;
  const [, GW] = info.grid, P = info.grid[0] * GW;
  explain_photo.data = row >= 0 ? {...thumb.data} : {image: [], x: [], y: [], dw: [], dh: []};
  const cells = {...explain_cells.data};
  methods.forEach((_, m) => {
    const heat = Array.from({length: P}, (_, p) => row < 0 ? NaN : value(page, "explanations",
      "maps", {S_explain: row, method: m, gh: Math.floor(p / GW), gw: p % GW}));
    const finite = heat.filter(Number.isFinite);
    const lo = finite.length ? Math.min(...finite) : 0, hi = finite.length ? Math.max(...finite) : 1;
    const mapper = page[`explain_mapper_${m}`];
    mapper.low = lo; mapper.high = hi > lo ? hi : lo + 1;
    cells[`heat_${m}`] = heat;
    cells[`alpha_${m}`] = heat.map((v) => !Number.isFinite(v) ? 0
      : hi > lo ? 0.1 + 0.75 * (v - lo) / (hi - lo) : 0.1);
  });
  explain_cells.data = cells;
  const id = s.image >= 0 ? images.data.id[s.image] : "";
  if (row >= 0) {
    const steps = explain_mean_curves.data.x.length, curves = {x: explain_mean_curves.data.x};
    modes.forEach((mode, d) => {
      const at = (t) => ({S_explain: row, di: d, "steps+1": t});
      methods.forEach((method, m) => {
        curves[`${mode}/${method}`] = Array.from({length: steps},
          (_, t) => value(page, "explanations", "curves", {...at(t), method: m}));
      });
      curves[`${mode}/random`] = Array.from({length: steps},
        (_, t) => value(page, "explanations", "random_curves", at(t)));
    });
    explain_curves.data = curves;
  } else {
    explain_curves.data = {...explain_mean_curves.data};
  }
  for (const mode of modes) {
    setText(page[`explain_curves_title_${mode}`], "text", row >= 0
      ? fill("explain_curves_local", {mode, id: shortId(info, id)})
      : fill("explain_curves_global", {mode, n}));
    page[`explain_heads_x_axis_${mode}`].axis_label =
      fill("explain_heads_x", {metric: s.metric, scope: s.classScope || s.scope});
  }
  const listed = facts.image_index.slice(0, EXPLAIN_IDS).map((i) => images.data.id[i]).join(", ");
  const ids = n > EXPLAIN_IDS ? fill("explain_more_ids", {ids: listed, more: n - EXPLAIN_IDS})
    : listed;
  const label = row >= 0 ? info.class_names[facts.labels[row]] : "";
  setText(explain_note, "text", row >= 0 ? fill("explain_local", {id, label})
    : s.image >= 0 ? fill("explain_not_explained", {id, n, ids}) : fill("explain_global", {n, ids}));
}

// B5: every head's patching scores, both directions: their means over the scored pairs, or the
// pair chosen in the menu. Rewritten only when the choice changes (the state records it): a
// change of the heads source redraws every view that draws heads.
function drawPatching(page) {
  const {info, images, heads} = page;
  // Only a bundle with the patching part has B5 (the page's models are looked up, not taken).
  const patching_pair = page.patching_pair, patching_title = page.patching_title;
  if (!patching_pair) return;
  const LH = info.num_layers * info.num_heads, choice = patching_pair.value;
  if (page.state.data.patching_pair?.[0] === choice) return;
  const pair = choice === "mean" ? null : Number(choice);
  const columns = {};
  for (const direction of ["denoising", "noising"]) {
    const shown = new Array(LH);
    for (let j = 0; j < LH; j++) {
      shown[j] = pair === null
        ? value(page, "patching", `${direction}_score_mean`, headAt(info, j))
        : value(page, "patching", `${direction}_score`, {P: pair, ...headAt(info, j)});
    }
    columns[`patching_shown_${direction}`] = shown;
  }
  heads.data = {...heads.data, ...columns};
  if (pair === null) { setText(patching_title, "text", fill("patching_mean", {})); return; }
  const at = (cc) => value(page, "patching", "pairs", {P: pair, cc});
  setText(patching_title, "text", fill("patching_pair", {
    n: pair + 1, clean: images.data.id[at(0)], corrupt: images.data.id[at(1)],
    p_clean: fixed(value(page, "patching", "prob_clean", {P: pair}), 3),
    p_corrupt: fixed(value(page, "patching", "prob_corrupt", {P: pair}), 3),
    unscored: value(page, "patching", "defined", {P: pair}) ? "" : TEXTS.patching_unscored,
  }));
}

export default function update(page) {
  const s = readState(page);
  if (s === null) return;
  drawImageInfo(page, s);
  drawHeads(page, s);
  drawPatching(page);
  drawPartial(page, s);
  drawStrength(page, s);
  drawEmbedding(page, s);
  drawAttention(page, s);
  drawRollout(page, s);
  drawHeadSets(page, s);
  drawExplanations(page, s);
  page.state.data = {image: [s.image], head: [s.k], mode: [s.mode], query: [s.query],
                     metric: [s.metric], kind: [s.kind || ""], class_cell: [s.classCell],
                     pair_cell: [s.pairCell], patching_pair: [page.patching_pair?.value ?? ""]};
}
