// With no patch chosen, the query is the CLS token.
export default function queryCls({patches}) {
  patches.selected.indices = [];
}
