// The comparison page's per-image panel (site/comparison_images.py): when an image is chosen in
// the menu, each run's column is redrawn from the run's compact tables: its photo, its rollout
// map (D4's overlay: scaled to its maximum) and each explanation map (F1's: scaled to its own
// range), decoded from uint8 codes as lo + code (hi - lo) / 255, and its prediction in words.

const LEVELS = 255;

// Map `at` of `length` codes, read back into values.
function decode(codes, at, length, lo, hi) {
  return Array.from({length}, (_, p) => lo + codes[at * length + p] * (hi - lo) / LEVELS);
}

// The strip of photos: the page holding image j, j outlined (comparison_images.strip_data;
// `layout`: the photos' shape, the images a page and the gap between them).
function drawStrip(strip, photos, layout, j, count, ndarray) {
  const [TH, TW] = layout.shape, STRIP = layout.page, GAP = layout.gap;
  const start = Math.floor(j / STRIP) * STRIP;
  const slots = Array.from({length: Math.min(STRIP, count - start)}, (_, i) => start + i);
  const rgba = photos.data.rgba, width = TW / Math.max(TH, TW);
  const image = slots.map((k) => ndarray(new Uint32Array(rgba.buffer,
    rgba.byteOffset + k * TH * TW * 4, TH * TW), {dtype: "uint32", shape: [TH, TW]}));
  strip.data = {image, slot: slots, x: slots.map((_, i) => i * (1 + GAP)),
    y: slots.map(() => 0), dw: slots.map(() => width), dh: slots.map(() => TH / Math.max(TH, TW)),
    cx: slots.map((_, i) => i * (1 + GAP) + width / 2),
    line: slots.map((k) => k === j ? 2.5 : 0)};
}

export default function drawImages({choice, runs, strip, strip_photos, strip_layout}) {
  const {ndarray} = Bokeh.require("core/util/ndarray");
  const j = Number(choice.value);
  if (strip) drawStrip(strip, strip_photos, strip_layout, j, choice.options.length, ndarray);
  for (const run of runs) {
    const t = run.table.data;
    const [GH, GW] = run.grid, P = GH * GW;
    const [TH, TW] = run.photo_shape;
    const rgba = run.photos.data.rgba, k = t.photo[j];
    const pixels = new Uint32Array(rgba.buffer, rgba.byteOffset + k * TH * TW * 4, TH * TW);
    run.photo.data = {image: [ndarray(pixels, {dtype: "uint32", shape: [TH, TW]})],
                      x: [0], y: [0], dw: [GW], dh: [GH]};
    const cells = {...run.cells.data};
    const codes = run.rollout.data.code;
    const heat = codes.length ? decode(codes, j, P, t.rollout_lo[j], t.rollout_hi[j])
      : new Array(P).fill(0);
    const top = Math.max(0, ...heat);
    run.mapper.high = top > 0 ? top : 1;
    cells.heat = heat;
    cells.alpha = heat.map((v) => top > 0 ? 0.1 + 0.75 * v / top : 0.1);
    const row = t.explain_row[j], M = run.methods;
    const range = run.explain_range.data;
    for (let m = 0; m < M; m++) {
      if (row < 0) {
        cells[`heat_${m}`] = new Array(P).fill(0);
        cells[`alpha_${m}`] = new Array(P).fill(0);
        continue;
      }
      const at = row * M + m, lo = range.lo[at], hi = range.hi[at];
      const values = decode(run.explain.data.code, at, P, lo, hi);
      const mapper = run.explain_mappers[m];
      mapper.low = lo;
      mapper.high = hi > lo ? hi : lo + 1;
      cells[`heat_${m}`] = values;
      cells[`alpha_${m}`] = values.map((v) => hi > lo ? 0.1 + 0.75 * (v - lo) / (hi - lo) : 0.1);
    }
    run.cells.data = cells;
    run.text.text = t.text[j];
    run.note.text = run.notes[row >= 0 ? 1 : 0];
  }
}
