// compose.py's report: the composed candidates, their scores and drawings, and the pool.
const CANDIDATES = DATA.candidates;
const POOL = DATA.pool;
const BY_RANK = new Map(CANDIDATES.map((c) => [c.rank, c]));
const state = {selected: null, views: []};

function candidateLabel(c) {
  return `rank ${c.rank}: ${c.name} (score ${c.score.toFixed(4)}, top-1 ${c.top1.toFixed(2)}%, ${formatFlops(c.flops)} FLOPs)`;
}

function select(rank, scroll) {
  state.selected = rank;
  const c = BY_RANK.get(rank);
  const box = document.getElementById("details");
  box.textContent = "";
  const junctions = String(c.junction_scores).split(";").filter(Boolean).map((v) => Number(v).toFixed(4)).join(", ");
  box.append(h("h2", {text: `rank ${c.rank}`}), h("dl", {}, [
    ["name", c.name], ["score", `${c.score.toFixed(4)} (the product of its junctions' CKA)`], ["junction CKA", junctions],
    ["fragments", String(c.fragments).split(";").join(" > ")], ["FLOPs", formatFlops(c.flops)], ["params", formatParams(c.params)],
    ["top-1", `${c.top1.toFixed(2)}% (${DATA.fit} classifier)`], ["fit + evaluation", `${c.seconds.toFixed(2)} s`],
  ].map(([k, v]) => [h("dt", {text: k}), h("dd", {text: v})])),
  c.svg ? h("div", {class: "drawing-wrap"}, drawingImage(c.svg, `drawing of rank ${c.rank}`)) : null);
  for (const view of state.views) view.mark(rank, "selected");
  for (const card of document.querySelectorAll(".card")) card.classList.toggle("selected", Number(card.dataset.id) === rank);
  if (scroll) box.scrollIntoView({block: "nearest"});
}

function drawPlots() {
  const flopsUnit = [...CANDIDATES, ...POOL].some((r) => r.flops >= 1e9) ? [1e9, "GFLOPs (10^9 FLOPs per image)"] : [1e6, "MFLOPs (10^6 FLOPs per image)"];
  const pool = POOL.map((p) => ({id: `pool${p.network}`, x: p.flops / flopsUnit[0], y: p.top1, anchor: true,
    label: `pool network ${p.network}: ${p.name} (top-1 ${p.top1.toFixed(2)}%, ${formatFlops(p.flops)} FLOPs)`}));
  const byFlops = scatterPlot(document.getElementById("plot-flops"), {
    points: [...CANDIDATES.map((c) => ({id: c.rank, x: c.flops / flopsUnit[0], y: c.top1, label: candidateLabel(c)})), ...pool],
    xLabel: flopsUnit[1], yLabel: "top-1 accuracy (%)", onShow: (id) => typeof id === "number" && select(id),
    formatX: (v) => String(Number(v.toPrecision(6))), formatY: (v) => String(Number(v.toPrecision(6))),
  });
  const byScore = scatterPlot(document.getElementById("plot-score"), {
    points: CANDIDATES.map((c) => ({id: c.rank, x: c.score, y: c.top1, label: candidateLabel(c)})),
    xLabel: "score (product of the junctions' linear CKA)", yLabel: "top-1 accuracy (%)", onShow: select,
    formatX: (v) => v.toFixed(3), formatY: (v) => String(Number(v.toPrecision(6))),
  });
  state.views = [byFlops, byScore, state.table];
  if (state.selected !== null) for (const view of state.views) view.mark(state.selected, "selected");
}

function main() {
  metaList(DATA.meta);
  const app = document.getElementById("app");
  app.textContent = "";
  const tableBox = h("div", {id: "table"});
  const cards = h("div", {class: "cards", id: "drawings"}, CANDIDATES.map((c) => h("figure", {class: "card", tabindex: 0, "data-id": c.rank,
    onclick: () => select(c.rank, true), onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(c.rank, true); } }},
  c.svg ? drawingImage(c.svg, `drawing of rank ${c.rank}: ${c.name}`) : h("p", {class: "note", text: "no drawing"}),
  h("figcaption", {class: "note", text: candidateLabel(c)}))));
  app.append(
    h("section", {}, h("h2", {text: "Candidates"}),
      h("p", {class: "note", text: `${CANDIDATES.length} networks composed from the pool's fragments without training, ` +
        "best score first; red stars: the pool's own networks, fitted the same way. Hover, click or Tab to a dot."}),
      h("div", {class: "layout"}, h("div", {}, h("div", {class: "panel"}, h("h3", {text: "top-1 against FLOPs"}), h("div", {class: "plot", id: "plot-flops"})),
        h("div", {class: "panel"}, h("h3", {text: "top-1 against score"}), h("div", {class: "plot", id: "plot-score"}))),
      h("div", {class: "panel details", id: "details"}, h("p", {class: "note", text: "No candidate selected yet."})))),
    h("section", {}, h("h2", {text: "All candidates"}), tableBox),
    h("section", {}, h("h2", {text: "Drawings"}), h("p", {class: "note", text: "Fragments left to right, coloured by pool network; " +
      "each junction labelled with its CKA."}), cards),
    h("section", {}, h("h2", {text: "The pool"}), h("div", {id: "pool-table"})));
  state.table = sortableTable(tableBox, [
    {key: "rank", label: "rank", num: true}, {key: "name", label: "name", cls: "name"},
    {key: "score", label: "score", num: true, format: fixed(4)}, {key: "flops", label: "FLOPs", num: true, format: formatFlops},
    {key: "params", label: "params", num: true, format: formatParams}, {key: "top1", label: "top-1 (%)", num: true, format: fixed(2)},
    {key: "seconds", label: "seconds", num: true, format: fixed(2)},
  ], CANDIDATES, "rank", (rank) => select(rank, true));
  sortableTable(document.getElementById("pool-table"), [
    {key: "network", label: "network", num: true}, {key: "name", label: "name", cls: "name"},
    {key: "flops", label: "FLOPs", num: true, format: formatFlops}, {key: "params", label: "params", num: true, format: formatParams},
    {key: "top1", label: "top-1 (%)", num: true, format: fixed(2)},
  ], POOL, "network", () => {});
  drawPlots();
  onResize(drawPlots);
  ready();
}

main();
