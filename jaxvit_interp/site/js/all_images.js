// Back to the global view; the last search's message no longer describes what is shown.
export default function showAllImages({images, search_status}) {
  images.selected.indices = [];
  search_status.text = "";
}
