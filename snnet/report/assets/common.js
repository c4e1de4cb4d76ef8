"use strict";
// Shared by every snnet report page: DOM helpers, number formats, a scatter plot, a sortable
// table. Plain browser JavaScript (no library, no network), for current Chromium and Firefox.
const DATA = JSON.parse(document.getElementById("data").textContent);
const SVG_NS = "http://www.w3.org/2000/svg";
// matplotlib's tab10, as snnet's PNG plots and route drawings
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
  "#17becf"];

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  return node;
}

function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child.nodeType ? child : String(child));
  }
  return node;
}

/** An HTML element: h("div", {class: "x", onclick: f}, child, "text", ...). */
function h(tag, attrs, ...children) {
  return appendAll(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element, as h. */
function svg(tag, attrs, ...children) {
  return appendAll(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

/** FLOPs as snnet.evaluate.pareto.format_flops writes them: 1.26G, 850.3M, 41.2K. */
function formatFlops(n) {
  if (n >= 999.95e6) return (n / 1e9).toFixed(2) + "G";
  if (n >= 999.95e3) return (n / 1e6).toFixed(1) + "M";
  return (n / 1e3).toFixed(1) + "K";
}

function formatParams(n) {
  return n >= 1e6 ? (n / 1e6).toFixed(2) + " M" : (n / 1e3).toFixed(1) + " K";
}

function fixed(digits) {
  return (v) => (v === null || v === undefined || v === "" ? "" : Number(v).toFixed(digits));
}

/** A route drawing (SVG text made by snnet.report.routes) as an image: its ids stay its own. It
 * shrinks to its box down to 70% of its size; a wider one (deep anchors) scrolls instead. */
function drawingImage(svgText, alt) {
  const img = h("img", {class: "drawing", alt: alt, src: "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svgText)});
  img.addEventListener("load", () => {
    const box = img.parentElement ? img.parentElement.clientWidth : 0;
    if (box && img.naturalWidth * 0.7 > box) img.style.width = Math.round(img.naturalWidth * 0.7) + "px";
  });
  return img;
}

function metaList(pairs) {
  const dl = document.getElementById("meta");
  for (const [term, value] of pairs) appendAll(dl, [h("dt", {text: term}), h("dd", {text: value})]);
}

/** About n round tick values covering [lo, hi]. */
function niceTicks(lo, hi, n) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function starPath(x, y, r) {
  const points = [];
  for (let i = 0; i < 10; i++) {
    const radius = i % 2 ? r * 0.45 : r;
    const angle = -Math.PI / 2 + (i * Math.PI) / 5;
    points.push(`${(x + radius * Math.cos(angle)).toFixed(1)},${(y + radius * Math.sin(angle)).toFixed(1)}`);
  }
  return "M" + points.join("L") + "Z";
}

/**
 * A scatter plot in `container` (emptied), sized to its width.
 * opts: points [{id, x, y, err?, anchor?, frontier?, colour?, label}], xLabel, yLabel, line (ids in order),
 * lines [{ids, colour}], onShow(id) (hover, focus, click, Enter), formatX, formatY.
 * Returns {dots: Map id -> element, mark(id, cls)}; arrow keys move between dots in x order.
 */
function scatterPlot(container, opts) {
  container.textContent = "";
  const width = Math.max(280, container.clientWidth || 640);
  const height = Math.round(Math.min(460, Math.max(260, width * 0.62)));
  const m = {left: 58, right: 14, top: 12, bottom: 46};
  const xs = opts.points.map((p) => p.x);
  const ys = opts.points.flatMap((p) => (p.err ? [p.y - p.err, p.y + p.err] : [p.y]));
  const pad = (lo, hi) => (hi > lo ? (hi - lo) * 0.06 : Math.abs(lo) * 0.1 || 1);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  [x0, x1] = [x0 - pad(x0, x1), x1 + pad(x0, x1)];
  [y0, y1] = [y0 - pad(y0, y1), y1 + pad(y0, y1)];
  const sx = (v) => m.left + ((v - x0) / (x1 - x0)) * (width - m.left - m.right);
  const sy = (v) => height - m.bottom - ((v - y0) / (y1 - y0)) * (height - m.top - m.bottom);
  const fx = opts.formatX || ((v) => String(v));
  const fy = opts.formatY || ((v) => String(v));
  const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, width: width, height: height, role: "group",
    "aria-label": `${opts.yLabel} against ${opts.xLabel}`});
  const grid = svg("g", {class: "grid"});
  const axes = svg("g", {class: "axis"});
  for (const t of niceTicks(x0, x1, Math.max(4, Math.floor(width / 110)))) {
    grid.append(svg("line", {x1: sx(t), x2: sx(t), y1: m.top, y2: height - m.bottom}));
    axes.append(svg("text", {x: sx(t), y: height - m.bottom + 16, "text-anchor": "middle", text: fx(t)}));
  }
  for (const t of niceTicks(y0, y1, 6)) {
    grid.append(svg("line", {x1: m.left, x2: width - m.right, y1: sy(t), y2: sy(t)}));
    axes.append(svg("text", {x: m.left - 6, y: sy(t) + 4, "text-anchor": "end", text: fy(t)}));
  }
  axes.append(svg("path", {d: `M${m.left},${m.top}V${height - m.bottom}H${width - m.right}`, fill: "none"}));
  axes.append(svg("text", {x: (m.left + width - m.right) / 2, y: height - 8, "text-anchor": "middle", text: opts.xLabel}));
  axes.append(svg("text", {transform: `translate(14,${(m.top + height - m.bottom) / 2}) rotate(-90)`,
    "text-anchor": "middle", text: opts.yLabel}));
  root.append(grid, axes);
  const byId = new Map(opts.points.map((p) => [p.id, p]));
  for (const line of opts.lines || []) {
    const d = line.ids.map((id, i) => `${i ? "L" : "M"}${sx(byId.get(id).x).toFixed(1)},${sy(byId.get(id).y).toFixed(1)}`);
    root.append(svg("path", {class: "frontier-line", d: d.join(""), style: line.colour ? `stroke:${line.colour}` : null}));
  }
  const tooltip = h("div", {class: "tooltip", hidden: true, role: "status"});
  const dots = new Map();
  const order = [...opts.points].sort((a, b) => a.x - b.x || a.y - b.y);
  const show = (p, el) => {
    tooltip.textContent = p.label;
    tooltip.hidden = false;
    const box = el.getBoundingClientRect(), outer = container.getBoundingClientRect();
    const left = Math.min(box.left - outer.left + 10, outer.width - 200);
    tooltip.style.left = Math.max(0, left) + "px";
    tooltip.style.top = Math.max(0, box.top - outer.top - 34) + "px";
    if (opts.onShow) opts.onShow(p.id);
  };
  for (const p of opts.points) {
    if (p.err) {
      root.append(svg("line", {x1: sx(p.x), x2: sx(p.x), y1: sy(p.y - p.err), y2: sy(p.y + p.err),
        stroke: p.colour || "#1f77b4", "stroke-width": 1.2}));
    }
    const cls = "dot" + (p.anchor ? " anchor" : "") + (p.frontier ? " frontier" : "");
    const common = {class: cls, tabindex: 0, role: "button", "aria-label": p.label, "data-id": p.id,
      style: p.colour ? `fill:${p.colour}` : null};
    const el = p.anchor
      ? svg("path", {...common, d: starPath(sx(p.x), sy(p.y), 10)})
      : svg("circle", {...common, cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: p.frontier ? 6 : 5});
    el.append(svg("title", {text: p.label}));
    el.addEventListener("mouseenter", () => show(p, el));
    el.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    el.addEventListener("focus", () => show(p, el));
    el.addEventListener("blur", () => { tooltip.hidden = true; });
    el.addEventListener("click", () => show(p, el));
    el.addEventListener("keydown", (e) => {
      const i = order.indexOf(p);
      const next = {ArrowRight: i + 1, ArrowUp: i + 1, ArrowLeft: i - 1, ArrowDown: i - 1}[e.key];
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); show(p, el); }
      if (next !== undefined && order[next]) { e.preventDefault(); dots.get(order[next].id).focus(); }
    });
    dots.set(p.id, el);
  }
  // frontier and anchors on top of the other networks
  const layer = (q) => (q.anchor ? 2 : q.frontier ? 1 : 0);
  for (const p of [...opts.points].sort((a, b) => layer(a) - layer(b))) root.append(dots.get(p.id));
  container.append(root, tooltip);
  const mark = (id, cls) => {
    for (const el of root.querySelectorAll("." + cls)) el.classList.remove(cls);
    if (dots.has(id)) dots.get(id).classList.add(cls);
  };
  return {dots, mark};
}

/**
 * A table sorted by clicking (or Enter on) a column header; rows select on click / Enter.
 * columns [{key, label, format?, num?, cls?}], rows with an id field `idKey`.
 */
function sortableTable(container, columns, rows, idKey, onSelect) {
  const tbody = h("tbody");
  const trs = new Map();
  for (const r of rows) {
    const tr = h("tr", {tabindex: 0, "data-id": r[idKey], onclick: () => onSelect(r[idKey]),
      onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onSelect(r[idKey]); } }},
    columns.map((c) => h("td", {class: c.num ? "num" : c.cls, text: c.format ? c.format(r[c.key], r) : r[c.key]})));
    trs.set(r[idKey], tr);
    tbody.append(tr);
  }
  let sorted = {key: null, dir: 1};
  const heads = columns.map((c) => {
    const th = h("th", {class: c.num ? "num" : null, scope: "col", "aria-sort": "none"});
    th.append(h("button", {type: "button", text: c.label, onclick: () => sortBy(c, th)}));
    return th;
  });
  function sortBy(column, th) {
    sorted = {key: column.key, dir: sorted.key === column.key ? -sorted.dir : 1};
    const value = (r) => (column.sortValue ? column.sortValue(r) : r[column.key]);
    const ordered = [...rows].sort((a, b) => {
      const [x, y] = [value(a), value(b)];
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return c * sorted.dir || a[idKey] - b[idKey];
    });
    for (const head of heads) head.setAttribute("aria-sort", "none");
    th.setAttribute("aria-sort", sorted.dir > 0 ? "ascending" : "descending");
    for (const r of ordered) tbody.append(trs.get(r[idKey]));
  }
  const table = h("table", {}, h("thead", {}, h("tr", {}, heads)), tbody);
  container.append(h("div", {class: "table-wrap"}, table));
  const mark = (id, cls) => {
    for (const tr of tbody.querySelectorAll("." + cls)) tr.classList.remove(cls);
    if (trs.has(id)) trs.get(id).classList.add(cls);
  };
  return {table, mark};
}

/** Re-run `draw` when the page's width changes (plots are drawn at their pixel size). */
function onResize(draw) {
  let width = window.innerWidth, timer = null;
  window.addEventListener("resize", () => {
    if (window.innerWidth === width) return;
    width = window.innerWidth;
    clearTimeout(timer);
    timer = setTimeout(draw, 120);
  });
}

/** Marks the page drawn, once the browser has laid it out for its first paint (ms since the
 * navigation started): tests and the open-time measurement wait for this. */
function ready() {
  requestAnimationFrame(() => setTimeout(() => { document.body.dataset.ready = String(Math.round(performance.now())); }, 0));
}
