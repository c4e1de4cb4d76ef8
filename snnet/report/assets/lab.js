// lab.py's report: stitching matrices per adapter kind, trajectories, top-1 against depth and FLOPs.
const CELLS = DATA.cells;
const POINTS = DATA.points.map((p) => ({...p, id: `${p.route}|${p.adapter}`}));
const ADAPTERS = [...new Set(POINTS.map((p) => p.adapter))];
const PAIRS = [...new Set(POINTS.map((p) => p.pair_name))];
const ADAPTER_COLOUR = new Map(ADAPTERS.map((a, i) => [a, PALETTE[i % 10]]));
const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
const state = {selected: null, views: []};

function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
  const rgb = (hex) => [1, 3, 5].map((k) => parseInt(hex.slice(k, k + 2), 16));
  const [a, b] = [rgb(VIRIDIS[i]), rgb(VIRIDIS[i + 1])];
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}

function pointLabel(p) {
  return `${p.route}, ${p.adapter}: top-1 ${p.mean.toFixed(2)} ± ${p.std.toFixed(2)}% over ${p.seeds} seed(s) at lr ${p.lr}`;
}

function cellsOf(p) {
  return CELLS.filter((c) => c.route === p.route && c.adapter === p.adapter);
}

/** The front block x back block matrix of one adapter kind and anchor pair. */
function matrix(points, lo, hi) {
  const fronts = [...new Set(points.map((p) => p.front_block))].sort((a, b) => a - b);
  const backs = [...new Set(points.map((p) => p.back_block))].sort((a, b) => a - b);
  const size = 44, m = {left: 64, top: 8, bottom: 44};
  const width = m.left + backs.length * size + 8, height = m.top + fronts.length * size + m.bottom;
  const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, width, height, role: "group",
    "aria-label": `top-1 by front block and back block, ${points[0].adapter}, ${points[0].pair_name}`});
  const rects = new Map();
  for (const p of points) {
    const x = m.left + backs.indexOf(p.back_block) * size;
    const y = m.top + (fronts.length - 1 - fronts.indexOf(p.front_block)) * size;
    const t = hi > lo ? (p.mean - lo) / (hi - lo) : 0.5;
    const rect = svg("rect", {class: "cell-rect", x, y, width: size, height: size, fill: viridis(t), tabindex: 0,
      role: "button", "aria-label": pointLabel(p), "data-id": p.id}, svg("title", {text: pointLabel(p)}));
    const show = () => select(p.id);
    rect.addEventListener("mouseenter", show);
    rect.addEventListener("focus", show);
    rect.addEventListener("click", show);
    root.append(rect, svg("text", {x: x + size / 2, y: y + size / 2 + 4, "text-anchor": "middle", "pointer-events": "none",
      style: `fill:${t < 0.5 ? "#fff" : "#000"};font-size:11px`, text: p.mean.toFixed(1)}));
    rects.set(p.id, rect);
  }
  backs.forEach((b, i) => root.append(svg("text", {x: m.left + i * size + size / 2, y: m.top + fronts.length * size + 14,
    "text-anchor": "middle", text: b})));
  fronts.forEach((f, i) => root.append(svg("text", {x: m.left - 6, y: m.top + (fronts.length - 1 - i) * size + size / 2 + 4,
    "text-anchor": "end", text: f})));
  root.append(svg("text", {x: m.left + (backs.length * size) / 2, y: height - 6, "text-anchor": "middle", text: "back block"}));
  root.append(svg("text", {transform: `translate(12,${m.top + (fronts.length * size) / 2}) rotate(-90)`, "text-anchor": "middle",
    text: "front block"}));
  const mark = (id, cls) => {
    for (const el of root.querySelectorAll("." + cls)) el.classList.remove(cls);
    if (rects.has(id)) rects.get(id).classList.add(cls);
  };
  return {root, mark};
}

function select(id) {
  state.selected = id;
  const p = POINTS.find((q) => q.id === id);
  const cells = cellsOf(p);
  const box = document.getElementById("details");
  box.textContent = "";
  box.append(h("h2", {text: p.route}), h("dl", {}, [
    ["adapter", p.adapter], ["anchors", p.pair_name], ["best lr", p.lr], ["top-1", `${p.mean.toFixed(2)} ± ${p.std.toFixed(2)}% (mean ± std over ${p.seeds} seed(s))`],
    ["FLOPs", formatFlops(p.flops)], ["blocks", `front ends after block ${p.front_block}, back enters at block ${p.back_block} of ${p.back_depth}`],
  ].map(([k, v]) => [h("dt", {text: k}), h("dd", {text: String(v)})])),
  h("h3", {text: "Its cells"}),
  h("div", {class: "table-wrap"}, h("table", {}, h("thead", {}, h("tr", {}, ["cell", "lr", "seed", "LS top-1", "top-1", "best"].map((t) => h("th", {text: t})))),
    h("tbody", {}, cells.map((c) => h("tr", {}, [c.cell, c.lr, c.seed, c.ls_top1.toFixed(2), c.top1.toFixed(2), c.best_top1.toFixed(2)].map((v) => h("td", {class: "num", text: v}))))))),
  h("h3", {text: "Trajectories: validation top-1 after each epoch"}), h("div", {class: "plot", id: "trajectory"}));
  const points = [], lines = [];
  cells.forEach((c, i) => {
    const ids = [];
    for (const t of DATA.trajectories[c.cell] || []) {
      const pid = `c${c.cell}e${t.epoch}`;
      ids.push(pid);
      points.push({id: pid, x: t.epoch + 1, y: t.val_top1, colour: PALETTE[i % 10],
        label: `cell ${c.cell} (lr ${c.lr}, seed ${c.seed}), epoch ${t.epoch + 1}: val top-1 ${t.val_top1.toFixed(2)}%, train loss ${Number(t.train_loss).toFixed(3)}`});
    }
    lines.push({ids, colour: PALETTE[i % 10]});
  });
  if (points.length) {
    scatterPlot(document.getElementById("trajectory"), {points, lines, xLabel: "epoch", yLabel: "validation top-1 (%)",
      formatX: (v) => String(Number(v.toPrecision(6))), formatY: (v) => String(Number(v.toPrecision(6)))});
  }
  for (const view of state.views) view.mark(id, "selected");
}

function drawPlots() {
  const box = document.getElementById("against");
  box.textContent = "";
  const plotBox = (title, div) => box.append(h("div", {class: "panel"}, h("h3", {text: title}), div));
  const views = [];
  const fmt = (v) => String(Number(v.toPrecision(6)));
  for (const pair of PAIRS) {
    const div = h("div", {class: "plot"});
    plotBox(`top-1 against destination depth: ${pair}`, div);
    views.push(scatterPlot(div, {points: POINTS.filter((p) => p.pair_name === pair).map((p) => ({id: p.id, x: p.back_block / p.back_depth,
      y: p.mean, err: p.std, colour: ADAPTER_COLOUR.get(p.adapter), label: pointLabel(p)})),
    xLabel: "destination depth (back entry block / back depth)", yLabel: "top-1 (%), mean ± std over seeds", onShow: select, formatX: fmt, formatY: fmt}));
  }
  const div = h("div", {class: "plot"});
  plotBox("top-1 against FLOPs (all anchor pairs)", div);
  views.push(scatterPlot(div, {points: POINTS.map((p) => ({id: p.id, x: p.flops / 1e6, y: p.mean, err: p.std,
    colour: ADAPTER_COLOUR.get(p.adapter), label: pointLabel(p)})), xLabel: "MFLOPs (10^6 FLOPs per image)",
  yLabel: "top-1 (%), mean ± std over seeds", onShow: select, formatX: fmt, formatY: fmt}));
  state.views = [...state.matrices, ...views, state.table];
  if (state.selected !== null) for (const view of state.views) view.mark(state.selected, "selected");
}

function main() {
  metaList(DATA.meta);
  const app = document.getElementById("app");
  app.textContent = "";
  if (!POINTS.length) {
    app.append(h("p", {text: "No finished cells yet."}));
    ready();
    return;
  }
  const lo = Math.min(...POINTS.map((p) => p.mean)), hi = Math.max(...POINTS.map((p) => p.mean));
  const matrices = h("div", {class: "matrices"});
  state.matrices = [];
  for (const adapter of ADAPTERS) {
    for (const pair of PAIRS) {
      const points = POINTS.filter((p) => p.adapter === adapter && p.pair_name === pair);
      if (!points.length) continue;
      const m = matrix(points, lo, hi);
      state.matrices.push(m);
      matrices.append(h("div", {class: "matrix panel"}, h("h3", {text: `${adapter}: ${pair}`}), h("div", {class: "drawing-wrap"}, m.root),
        h("p", {class: "note", text: `rows: the last block of ${points[0].front} run; columns: the block of ${points[0].back} entered`})));
    }
  }
  const legend = h("div", {class: "legend"}, ADAPTERS.map((a) => h("span", {style: `--swatch:${ADAPTER_COLOUR.get(a)}`, text: a})));
  const tableBox = h("div", {id: "table"});
  app.append(
    h("section", {}, h("h2", {text: "Stitching matrices"}), h("p", {class: "note", text: "Per adapter kind and anchor pair: " +
      `the front anchor's last block (rows) against the back anchor's entry block (columns), coloured by top-1 (%) from ${lo.toFixed(1)} ` +
      `(dark) to ${hi.toFixed(1)} (yellow), mean over seeds at the best learning rate. Hover, click or Tab to a cell.`}),
    h("div", {class: "layout"}, matrices, h("div", {class: "panel details", id: "details"}, h("p", {class: "note", text: "No cell selected yet."})))),
    h("section", {}, h("h2", {text: "Top-1 against depth and FLOPs"}), legend, h("div", {id: "against", class: "plots"})),
    h("section", {}, h("h2", {text: "All cells"}), tableBox));
  state.table = sortableTable(tableBox, [
    {key: "cell", label: "cell", num: true}, {key: "route", label: "route", cls: "name"}, {key: "adapter", label: "adapter"},
    {key: "lr", label: "lr", num: true}, {key: "seed", label: "seed", num: true},
    {key: "trainable_params", label: "trained params", num: true}, {key: "flops", label: "FLOPs", num: true, format: formatFlops},
    {key: "ls_top1", label: "LS top-1 (%)", num: true, format: fixed(2)}, {key: "top1", label: "top-1 (%)", num: true, format: fixed(2)},
    {key: "best_top1", label: "best (%)", num: true, format: fixed(2)}, {key: "seconds", label: "seconds", num: true, format: fixed(1)},
  ], CELLS, "cell", (cell) => {
    const c = CELLS.find((x) => x.cell === cell);
    select(`${c.route}|${c.adapter}`);
    document.getElementById("details").scrollIntoView({block: "nearest"});
  });
  // the table marks cells by their number: mark every cell of the selected route and adapter
  const tableMark = state.table.mark;
  state.table.mark = (id, cls) => {
    tableMark(null, cls);
    for (const c of CELLS) if (`${c.route}|${c.adapter}` === id) state.table.table.querySelector(`tr[data-id="${c.cell}"]`).classList.add(cls);
  };
  drawPlots();
  onResize(drawPlots);
  ready();
}

main();
