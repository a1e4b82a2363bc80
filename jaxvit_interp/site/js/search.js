// Find an image by id (exact, else contained) or by label; choose the most confident match.
export default function findImage({images, search, search_status}) {
  const q = search.value.trim().toLowerCase();
  const d = images.data, n = d.id.length;
  const outline = Array.from(d.base_outline);
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
}
