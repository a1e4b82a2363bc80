// Find an image by id (exact, else contained) or by label; choose the most confident match (the
// first for a backbone, which has no labels nor probabilities). The found image is kept in the
// message's tags: the page clears the message once another image is chosen.
export default function findImage({images, search, search_status, has_classifier}) {
  const q = search.value.trim().toLowerCase();
  const d = images.data, n = d.id.length;
  const outline = Array.from(d.base_outline);
  const chosen = images.selected.indices.length ? images.selected.indices[0] : -1;
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
    if (id.includes(q) || (has_classifier && label.includes(q))) matches.push(i);
  }
  for (const i of matches) outline[i] = 3;
  images.data = {...d, outline};
  if (exact < 0 && !matches.length) {
    search_status.tags = [chosen];
    search_status.text = has_classifier
      ? `No image has an id or label containing "${search.value.trim()}".`
      : `No image has an id containing "${search.value.trim()}".`;
    return;
  }
  let best = exact;
  if (best < 0) {
    best = matches[0];
    if (has_classifier) for (const i of matches) if (d.prob[i] > d.prob[best]) best = i;
  }
  search_status.tags = [best];
  search_status.text = exact >= 0 ? `Found image ${d.id[best]}.`
    : `${matches.length} image(s) match "${search.value.trim()}" (outlined); showing the ` +
      `${has_classifier ? "most confident" : "first"}, ${d.id[best]}.`;
  images.selected.indices = [best];
}
