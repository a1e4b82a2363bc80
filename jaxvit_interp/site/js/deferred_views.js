// Views drawn after the opening state. BokehJS builds, lays out and draws every view of a page
// before it shows any, and views E and F (dozens of plots) made a ViT-B/16 site take twice as
// long to open; so the page opens with A-D and E and F join the `views` row once the opening
// state is on screen. Their models are in the document from the start, held in the row's `tags`:
// the page's code updates them before they are drawn, and clicks in A-D work meanwhile.
//
// `window.jaxvitDeferred.pending` (set in the page's head) counts the views still to come; it
// drops to 0 once they are drawn, which is what tests and benchmarks wait for.

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(resolve));

function findView(views, model) {
  for (const view of views) {
    if (view.model === model) return view;
    const found = view.child_views ? findView(view.child_views, model) : null;
    if (found) return found;
  }
  return null;
}

export default async function drawDeferred({views, state}) {
  // The opening state: the page's code has run and no image record is on its way.
  while (!(state.data.image?.length && !(window.jaxvitRecords?.pending > 0))) await nextFrame();
  await nextFrame();
  await nextFrame();
  views.children = [...views.children, ...views.tags];
  const view = findView(Object.values(Bokeh.index), views);
  if (view) await view.ready;
  await nextFrame();
  await nextFrame();
  window.jaxvitDeferred.pending = 0;
}
