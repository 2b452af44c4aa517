// Charts drawn as SVG: the confusion-matrix heat map, training curves, horizontal bar charts, score bars.

import { h, s } from "./dom.js";

const BLUES = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];

/** A colour on a white-to-blue scale for t in [0, 1]. */
export function blue(t) {
  const x = Math.max(0, Math.min(1, t)) * (BLUES.length - 1);
  const i = Math.min(Math.floor(x), BLUES.length - 2);
  const f = x - i;
  const c = BLUES[i].map((v, k) => Math.round(v + f * (BLUES[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function truncate(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

/**
 * The confusion matrix (rows: true label, columns: predicted) as a heat map. Each cell is shaded by its
 * share of the row (recall), so classes with few test images read the same as large ones; the count is
 * written in the cell.
 */
export function confusionHeatmap(labels, matrix) {
  const n = labels.length;
  const cell = Math.max(22, Math.min(56, Math.floor(520 / Math.max(1, n))));
  const longest = Math.min(14, Math.max(1, ...labels.map((l) => String(l).length)));
  const left = 30 + longest * 7;
  const top = 40 + longest * 5;
  const width = left + n * cell + 20;
  const height = top + n * cell + 40;
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", id: "confusion-heatmap",
    "aria-label": `confusion matrix of ${n} classes`,
  });
  svg.append(s("text", { x: left + (n * cell) / 2, y: 12, "text-anchor": "middle", "font-size": 12, fill: "#5f6b7a" }, "predicted"));
  svg.append(s("text", {
    x: 12, y: top + (n * cell) / 2, "text-anchor": "middle", "font-size": 12, fill: "#5f6b7a",
    transform: `rotate(-90 12 ${top + (n * cell) / 2})`,
  }, "true"));
  labels.forEach((label, j) => {
    const x = left + j * cell + cell / 2;
    svg.append(s("text", {
      x, y: top - 6, "font-size": 11, "text-anchor": "start", transform: `rotate(-45 ${x} ${top - 6})`,
    }, s("title", {}, label), truncate(label, 14)));
  });
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    svg.append(s("text", {
      x: left - 6, y: top + i * cell + cell / 2 + 4, "font-size": 11, "text-anchor": "end",
    }, s("title", {}, labels[i]), truncate(labels[i], 14)));
    row.forEach((count, j) => {
      const share = count / total;
      const g = s("g", { class: "cell", "data-true": labels[i], "data-pred": labels[j], "data-count": count });
      g.append(s("rect", {
        x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1, fill: blue(share),
        stroke: i === j ? "#1d2330" : "none", "stroke-width": i === j ? 0.6 : 0,
      }, s("title", {}, `true ${labels[i]}, predicted ${labels[j]}: ${count} (${(100 * share).toFixed(0)}% of row)`)));
      if (cell >= 22) {
        g.append(s("text", {
          x: left + j * cell + cell / 2, y: top + i * cell + cell / 2 + 4, "font-size": Math.min(12, cell / 2.4),
          "text-anchor": "middle", fill: share > 0.55 ? "#fff" : "#1d2330", "pointer-events": "none",
        }, String(count)));
      }
      svg.append(g);
    });
  });
  // the colour scale
  const scaleY = top + n * cell + 16;
  for (let k = 0; k <= 20; k++) {
    svg.append(s("rect", { x: left + k * 8, y: scaleY, width: 8, height: 8, fill: blue(k / 20) }));
  }
  svg.append(s("text", { x: left - 6, y: scaleY + 8, "font-size": 10, "text-anchor": "end", fill: "#5f6b7a" }, "0%"));
  svg.append(s("text", { x: left + 21 * 8 + 4, y: scaleY + 8, "font-size": 10, fill: "#5f6b7a" }, "100% of the true class"));
  return h("div", { className: "chart" }, svg);
}

/**
 * Line chart of several series over epochs: series = [{name, color, points: [[x, y], ...]}].
 */
export function lineChart(series, { title, yLabel, id, yMin = null, yMax = null } = {}) {
  const width = 460;
  const height = 240;
  const m = { l: 48, r: 12, t: 24, b: 34 };
  const pts = series.flatMap((ser) => ser.points).filter(([, y]) => y !== null && Number.isFinite(y));
  const xs = pts.map(([x]) => x);
  const ys = pts.map(([, y]) => y);
  const x0 = Math.min(...xs, 1);
  const x1 = Math.max(...xs, x0 + 1);
  let y0 = yMin ?? Math.min(...ys, 0);
  let y1 = yMax ?? Math.max(...ys, 1e-9);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, id, role: "img", "aria-label": title || "chart" });
  if (title) svg.append(s("text", { x: m.l, y: 14, "font-size": 12, "font-weight": 600 }, title));
  for (let k = 0; k <= 4; k++) {
    const v = y0 + (k / 4) * (y1 - y0);
    svg.append(s("line", { x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v), stroke: "#e6e9ee" }));
    svg.append(s("text", { x: m.l - 6, y: Y(v) + 4, "font-size": 10, "text-anchor": "end", fill: "#5f6b7a" }, v.toFixed(2)));
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 10));
  for (let x = Math.ceil(x0); x <= x1; x += step) {
    svg.append(s("text", { x: X(x), y: height - m.b + 14, "font-size": 10, "text-anchor": "middle", fill: "#5f6b7a" }, String(x)));
  }
  svg.append(s("text", { x: (m.l + width - m.r) / 2, y: height - 4, "font-size": 11, "text-anchor": "middle", fill: "#5f6b7a" }, "epoch"));
  if (yLabel) {
    svg.append(s("text", { x: 10, y: (m.t + height - m.b) / 2, "font-size": 11, "text-anchor": "middle", fill: "#5f6b7a",
      transform: `rotate(-90 10 ${(m.t + height - m.b) / 2})` }, yLabel));
  }
  for (const ser of series) {
    const good = ser.points.filter(([, y]) => y !== null && Number.isFinite(y));
    if (!good.length) continue;
    svg.append(s("polyline", {
      points: good.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), fill: "none", stroke: ser.color, "stroke-width": 2,
      class: "series", "data-name": ser.name,
    }));
    for (const [x, y] of good) svg.append(s("circle", { cx: X(x), cy: Y(y), r: 2.5, fill: ser.color }, s("title", {}, `${ser.name} epoch ${x}: ${y.toFixed(4)}`)));
  }
  const legend = h("div", { className: "legend" }, series.map((ser) => h("span", { style: { "--c": ser.color } }, ser.name)));
  legend.querySelectorAll("span").forEach((el, i) => el.style.setProperty("--c", series[i].color));
  return h("div", { className: "chart" }, svg, legend);
}

/** Horizontal bars: rows = [{name, value, note}], value in [0, 1] shown as a percentage. */
export function barChart(rows, { id, title, max = 1 } = {}) {
  const rowH = 26;
  const left = 170;
  const width = 560;
  const height = 28 + rows.length * rowH;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, id, role: "img", "aria-label": title || "bar chart" });
  if (title) svg.append(s("text", { x: 0, y: 14, "font-size": 12, "font-weight": 600 }, title));
  rows.forEach((row, i) => {
    const y = 24 + i * rowH;
    const w = Math.max(0, ((row.value ?? 0) / max) * (width - left - 90));
    svg.append(s("text", { x: left - 8, y: y + 15, "font-size": 12, "text-anchor": "end" }, truncate(row.name, 24)));
    svg.append(s("rect", { x: left, y: y + 3, width: w, height: rowH - 8, fill: i === 0 ? "#2f6fdf" : "#8fb1ea", rx: 3, class: "bar", "data-name": row.name }));
    svg.append(s("text", { x: left + w + 6, y: y + 15, "font-size": 11, fill: "#1d2330" },
      `${row.value === null || row.value === undefined ? "–" : (100 * row.value).toFixed(1) + "%"}${row.note ? "  " + row.note : ""}`));
  });
  return h("div", { className: "chart" }, svg);
}

/** One labelled score bar (HTML), e.g. a class probability. */
export function scoreBar(name, value) {
  const pct = Math.max(0, Math.min(1, value)) * 100;
  return h("div", { className: "bar score" },
    h("span", { className: "name", title: name }, name),
    h("span", { className: "track" }, h("span", { className: "fill", style: { width: `${pct}%`, display: "block" } })),
    h("span", { className: "val" }, `${pct.toFixed(1)}%`));
}
