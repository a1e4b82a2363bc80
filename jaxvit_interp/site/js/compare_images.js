// The comparison page's per-image panel (site/comparison_images.py): when an image is chosen in
// the menu, each run's column is redrawn from the run's compact tables: its photo (a JPEG data
// URL, which the browser decodes), its rollout map (D4's overlay: scaled to its maximum) and each
// explanation map (F1's: scaled to its own range), decoded from uint8 codes as
// lo + code (hi - lo) / 255, and its prediction in words.

const LEVELS = 255;

// Map `at` of `length` codes, read back into values.
function decode(codes, at, length, lo, hi) {
  return Array.from({length}, (_, p) => lo + codes[at * length + p] * (hi - lo) / LEVELS);
}

// The strip of photos: the page holding image j, j outlined (comparison_images.strip_data;
// `layout`: the photos' shape, the images a page and the gap between them).
function drawStrip(strip, photos, layout, j, count) {
  const [TH, TW] = layout.shape, STRIP = layout.page, GAP = layout.gap;
  const start = Math.floor(j / STRIP) * STRIP;
  const slots = Array.from({length: Math.min(STRIP, count - start)}, (_, i) => start + i);
  const w = TW / Math.max(TH, TW), h = TH / Math.max(TH, TW);
  const x = slots.map((_, i) => i * (1 + GAP));
  strip.data = {url: slots.map((k) => photos.data.jpeg[k]), slot: slots, x,
    y: slots.map(() => h), w: slots.map(() => w), h: slots.map(() => h),
    cx: x.map((v) => v + w / 2), cy: slots.map(() => h / 2),
    line: slots.map((k) => k === j ? 2.5 : 0)};
}

export default function drawImages({choice, runs, strip, strip_photos, strip_layout}) {
  const j = Number(choice.value);
  if (strip) drawStrip(strip, strip_photos, strip_layout, j, choice.options.length);
  for (const run of runs) {
    const t = run.table.data;
    const [GH, GW] = run.grid, P = GH * GW;
    run.photo.data = {url: [run.photos.data.jpeg[t.photo[j]]], x: [0], y: [GH], w: [GW], h: [GH]};
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
