// eval.py's report: every network of the sweep, the frontier, the budget pick and its commands.
const ROWS = DATA.rows;
const BY_ID = new Map(ROWS.map((r) => [r.cfg_id, r]));
const HAS_TOP1 = ROWS.length > 0 && "top1" in ROWS[0];
const HAS_LATENCY = ROWS.length > 0 && "latency_ms" in ROWS[0];
// FLOPs in G or M, whichever reads better for this SN-Net
const FLOPS_UNIT = ROWS.some((r) => r.flops >= 1e9) ? [1e9, "GFLOPs (10^9 FLOPs per image)"] : [1e6, "MFLOPs (10^6 FLOPs per image)"];
const COST_AXIS = {flops: FLOPS_UNIT[1], latency_ms: "latency (ms per forward)"};

// ---- the rules of snnet/evaluate/pareto.py, step for step -------------------------------
/** The non-dominated rows by cost ascending (ties: the lowest cfg_id), as pareto_frontier. */
function paretoFrontier(rows, cost, metric) {
  const ordered = [...rows].sort((a, b) => a[cost] - b[cost] || b[metric] - a[metric] || a.cfg_id - b.cfg_id);
  const frontier = [];
  for (const r of ordered) if (!frontier.length || r[metric] > frontier[frontier.length - 1][metric]) frontier.push(r);
  return frontier;
}

/** The costliest frontier row within budget (null when none fits), as pick_for_budget. */
function pickForBudget(rows, budget, cost) {
  const fitting = paretoFrontier(rows, cost, "top1").filter((r) => r[cost] <= budget);
  return fitting.length ? fitting[fitting.length - 1] : null;
}

/** eval.py's pick for --budget-flops and/or --budget-latency (null: nothing fits). */
function pick(rows, budgetFlops, budgetLatency) {
  if (budgetLatency !== null) {
    const within = rows.filter((r) => r.latency_ms <= budgetLatency);
    if (budgetFlops === null) return pickForBudget(rows, budgetLatency, "latency_ms");
    if (!within.length) return null;
    return pickForBudget(within, budgetFlops, "flops");
  }
  return pickForBudget(rows, budgetFlops, "flops");
}

/** The FLOPs text --budget-flops reads, as snnet.evaluate.pareto.parse_flops: "2.5G" -> 2.5e9. */
function parseFlops(text) {
  const match = /^\s*(\d*\.?\d+(?:e[-+]?\d+)?)\s*([kmgt]?)\s*(?:flops)?\s*$/i.exec(text);
  if (!match) return null;
  return parseFloat(match[1]) * {"": 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12}[match[2].toLowerCase()];
}

/** `value` rounded UP to 4 significant digits, as text (with a K/M/G suffix for FLOPs). */
function budgetText(value, flops) {
  const [scale, suffix] = !flops ? [1, ""] : value >= 1e9 ? [1e9, "G"] : value >= 1e6 ? [1e6, "M"] : [1e3, "K"];
  const mantissa = value / scale;
  const decimals = Math.max(0, 3 - Math.floor(Math.log10(mantissa)));
  const rounded = Math.ceil(mantissa * Math.pow(10, decimals) - 1e-7) / Math.pow(10, decimals);
  return rounded.toFixed(decimals).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "") + suffix;
}

window.snnetReport = {paretoFrontier, pickForBudget, pick, parseFlops, budgetText};

// ---- the page ---------------------------------------------------------------------------
const state = {cost: "flops", selected: null, picked: null, views: []};
const frontierIds = {
  flops: HAS_TOP1 ? new Set(paretoFrontier(ROWS, "flops", "top1").map((r) => r.cfg_id)) : new Set(),
  latency_ms: HAS_TOP1 && HAS_LATENCY ? new Set(paretoFrontier(ROWS, "latency_ms", "top1").map((r) => r.cfg_id)) : new Set(),
};

function label(r) {
  const acc = HAS_TOP1 ? `, top-1 ${r.top1.toFixed(2)}%` : "";
  return `cfg_id ${r.cfg_id}: ${r.name} (${formatFlops(r.flops)} FLOPs${acc})`;
}

function details(id) {
  state.selected = id;
  const r = BY_ID.get(id);
  const box = document.getElementById("details");
  box.textContent = "";
  const rows = [
    ["cfg_id", r.cfg_id], ["name", r.name], ["kind", r.is_anchor ? "anchor" : "stitched network"],
    ["FLOPs", `${formatFlops(r.flops)} (${r.flops.toLocaleString("en-US")})`], ["params", formatParams(r.params)],
  ];
  if (HAS_TOP1) rows.push(["top-1", `${r.top1.toFixed(2)}%`], ["top-5", `${r.top5.toFixed(2)}%`]);
  if (HAS_LATENCY) rows.push(["latency", `${r.latency_ms.toFixed(3)} ms`]);
  if (HAS_TOP1) rows.push(["on the frontier", frontierIds[state.cost].has(id) ? "yes" : "no (another network is cheaper and as accurate)"]);
  box.append(h("h2", {id: "details-title", text: `cfg_id ${r.cfg_id}`}),
    h("dl", {}, rows.map(([k, v]) => [h("dt", {text: k}), h("dd", {text: String(v)})])),
    h("div", {class: "drawing-wrap"}, drawingImage(r.svg, `route of cfg_id ${r.cfg_id}: ${r.name}`)),
    h("p", {class: "note", text: "The route: blocks of each anchor left to right (coloured by anchor), joined by stitching layers."}));
  for (const view of state.views) view.mark(id, "selected");
}

function drawPlot() {
  const cost = state.cost;
  const x = (r) => (cost === "flops" ? r.flops / FLOPS_UNIT[0] : r.latency_ms);
  const front = HAS_TOP1 ? paretoFrontier(ROWS, cost, "top1").map((r) => r.cfg_id) : [];
  const points = ROWS.map((r) => ({id: r.cfg_id, x: x(r), y: HAS_TOP1 ? r.top1 : r.params / 1e6, anchor: r.is_anchor,
    frontier: frontierIds[cost].has(r.cfg_id), label: label(r)}));
  const plot = scatterPlot(document.getElementById("plot"), {
    points, xLabel: COST_AXIS[cost], yLabel: HAS_TOP1 ? "top-1 accuracy (%)" : "parameters (millions)",
    lines: front.length ? [{ids: front}] : [], onShow: details,
    formatX: (v) => (cost === "flops" ? String(Number(v.toPrecision(6))) : v.toFixed(2)), formatY: (v) => String(Number(v.toPrecision(6))),
  });
  state.views = [plot, state.table].filter(Boolean);
  if (state.picked !== null) plot.mark(state.picked, "picked");
  if (state.selected !== null) plot.mark(state.selected, "selected");
}

function budgetControls() {
  const flopsLo = Math.min(...ROWS.map((r) => r.flops)), flopsHi = Math.max(...ROWS.map((r) => r.flops));
  const latLo = HAS_LATENCY ? Math.min(...ROWS.map((r) => r.latency_ms)) : 0;
  const latHi = HAS_LATENCY ? Math.max(...ROWS.map((r) => r.latency_ms)) : 0;
  // log scale: SN-Nets span an order of magnitude or more
  const at = (lo, hi, pos) => (hi > lo ? lo * Math.pow(hi / lo, pos / 1000) : lo);
  const slider = (id, text) => h("input", {type: "range", id, min: 0, max: 1000, step: 1, value: 1000, "aria-label": text});
  const flopsSlider = slider("budget-flops", "FLOPs budget");
  const latSlider = HAS_LATENCY ? slider("budget-latency", "latency budget") : null;
  const useFlops = h("input", {type: "checkbox", id: "use-flops", checked: true});
  const useLat = HAS_LATENCY ? h("input", {type: "checkbox", id: "use-latency"}) : null;
  const readout = h("p", {id: "budget-pick", "aria-live": "polite"});
  const commands = h("div", {id: "commands"});
  const flopsText = h("output", {id: "budget-flops-text", for: "budget-flops"});
  const latText = h("output", {id: "budget-latency-text", for: "budget-latency"});
  function update() {
    const fText = budgetText(at(flopsLo, flopsHi, Number(flopsSlider.value)), true);
    const lText = HAS_LATENCY ? budgetText(at(latLo, latHi, Number(latSlider.value)), false) : "";
    flopsText.textContent = fText;
    latText.textContent = lText ? lText + " ms" : "";
    const bf = useFlops.checked ? parseFlops(fText) : null;
    const bl = useLat && useLat.checked ? parseFloat(lText) : null;
    const flags = [...(bf !== null ? ["--budget-flops", fText] : []), ...(bl !== null ? ["--budget-latency", lText] : [])];
    commands.textContent = "";
    if (bf === null && bl === null) {
      readout.textContent = "Tick a budget to pick a network.";
      state.picked = null;
      for (const view of state.views) view.mark(null, "picked");
      return;
    }
    const chosen = pick(ROWS, bf, bl);
    state.picked = chosen ? chosen.cfg_id : null;
    for (const view of state.views) view.mark(state.picked, "picked");
    readout.dataset.cfgId = chosen ? chosen.cfg_id : "";
    if (!chosen) {
      readout.textContent = `No network fits ${flags.join(" ")}: eval.py would refuse it (raise the budget).`;
      return;
    }
    readout.textContent = `eval.py ${flags.join(" ")} picks cfg_id ${chosen.cfg_id}: ${chosen.name}, top-1 ` +
      `${chosen.top1.toFixed(2)}%, ${formatFlops(chosen.flops)} FLOPs` + (HAS_LATENCY ? `, ${chosen.latency_ms.toFixed(3)} ms` : "") + ".";
    const file = `cfg${chosen.cfg_id}.pt`;
    const lines = [
      ["Pick it and export it (TorchScript; .pt2 or .onnx also work):", `${DATA.commands.eval} ${flags.join(" ")} --export best --export-path ${file}`],
      ["Or export it by its cfg_id:", `${DATA.commands.eval} --export ${chosen.cfg_id} --export-path ${file}`],
      ["Classify images with the exported file (no snnet model code needed to load it):", `python predict.py --exported ${file} IMAGE_OR_DIR`],
    ];
    if (DATA.commands.predict) lines.push(["Or straight from the checkpoint:", `${DATA.commands.predict} --stitch ${chosen.cfg_id} IMAGE_OR_DIR`]);
    if (DATA.commands.note) commands.append(h("p", {class: "note", text: DATA.commands.note}));
    for (const [what, cmd] of lines) commands.append(h("p", {class: "note", text: what}), h("pre", {class: "command", text: cmd}));
    commands.append(h("p", {class: "note", text: "Every frontier network at once: eval.py's --export frontier."}));
  }
  for (const el of [flopsSlider, latSlider, useFlops, useLat].filter(Boolean)) {
    el.addEventListener("input", update);
    el.addEventListener("change", update);
  }
  const row = (check, what, slider_, out) => h("div", {}, h("label", {}, check, ` ${what}: `, out), slider_);
  const box = h("div", {class: "controls"}, row(useFlops, "FLOPs budget", flopsSlider, flopsText),
    HAS_LATENCY ? row(useLat, "latency budget", latSlider, latText) : null);
  return {box, readout, commands, update};
}

function tableColumns() {
  const cols = [
    {key: "cfg_id", label: "cfg_id", num: true},
    {key: "name", label: "name", cls: "name"},
    {key: "is_anchor", label: "anchor", format: (v) => (v ? "yes" : "")},
    {key: "flops", label: "FLOPs", num: true, format: formatFlops},
    {key: "params", label: "params", num: true, format: formatParams},
  ];
  if (HAS_TOP1) cols.push({key: "top1", label: "top-1 (%)", num: true, format: fixed(2)}, {key: "top5", label: "top-5 (%)", num: true, format: fixed(2)});
  if (HAS_LATENCY) cols.push({key: "latency_ms", label: "latency (ms)", num: true, format: fixed(3)});
  if (HAS_TOP1) cols.push({key: "frontier", label: "frontier", format: (_, r) => (frontierIds.flops.has(r.cfg_id) ? "yes" : ""),
    sortValue: (r) => (frontierIds.flops.has(r.cfg_id) ? 0 : 1)});
  return cols;
}

function main() {
  metaList(DATA.meta);
  const app = document.getElementById("app");
  app.textContent = "";
  const axisChoice = HAS_LATENCY ? h("div", {class: "toolbar", role: "radiogroup", "aria-label": "x axis"},
    "x axis:", ["flops", "latency_ms"].map((c) => h("label", {}, h("input", {type: "radio", name: "cost", value: c, checked: c === "flops",
      onchange: () => { state.cost = c; drawPlot(); if (state.selected !== null) details(state.selected); }}), c === "flops" ? " FLOPs" : " latency"))) : null;
  const legend = h("div", {class: "legend"}, h("span", {style: "--swatch:#1f77b4", text: "stitched network"}),
    HAS_TOP1 ? h("span", {style: "--swatch:#ff7f0e", text: "on the Pareto frontier (line)"}) : null,
    h("span", {style: "--swatch:#d62728", text: "anchor (star)"}), HAS_TOP1 ? h("span", {style: "--swatch:#000", text: "black ring: the budget's pick"}) : null);
  const how = h("p", {class: "note", text: `${ROWS.length} networks, one dot each. Hover, click or Tab to a dot (arrow keys move ` +
    "between dots) to see it beside the plot (below it on a narrow screen); the table at the end sorts by any column."});
  const budget = HAS_TOP1 ? budgetControls() : null;
  const side = h("div", {}, h("div", {class: "panel details", id: "details"}, h("p", {class: "note", text: "No network selected yet."})),
    budget ? h("div", {class: "panel", id: "budget"}, h("h2", {text: "Budget"}),
      h("p", {class: "note", text: "The most accurate network within the budget, by eval.py's rule (the costliest frontier network that fits)."}),
      budget.box, budget.readout, budget.commands) : h("p", {class: "note", text: "No accuracies in this sweep (--flops-only): no frontier, no budget picking."}));
  const tableBox = h("div", {id: "table"});
  app.append(h("section", {}, h("h2", {text: HAS_TOP1 ? "Accuracy against cost" : "Parameters against FLOPs"}), axisChoice, legend, how,
    h("div", {class: "layout"}, h("div", {class: "panel"}, h("div", {class: "plot", id: "plot"})), side)),
    h("section", {}, h("h2", {text: "All networks"}), tableBox));
  state.table = sortableTable(tableBox, tableColumns(), ROWS, "cfg_id", (id) => {
    details(id);
    document.getElementById("details").scrollIntoView({block: "nearest"});
  });
  drawPlot();
  if (budget) budget.update();
  onResize(drawPlot);
  ready();
}

main();
