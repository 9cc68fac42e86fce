// Charts of the loopwatch console: each page's data comes from its /api/ twin, drawn with Plotly.
"use strict";

const COLORS = { drift: "#c0392b", warning: "#e67e22", ok: "#27ae60" };
const LAYOUT = { margin: { l: 50, r: 20, t: 10, b: 40 }, height: 260, showlegend: true,
                 legend: { orientation: "h" } };
const CONFIG = { displaylogo: false, responsive: true };

function marked(series, verdict) {
  // The windows with this verdict, as markers on the statistic line.
  const x = [], y = [];
  series.verdict.forEach((v, i) => { if (v === verdict) { x.push(series.window_start[i]); y.push(series.statistic[i]); } });
  return { x, y, mode: "markers", name: verdict, marker: { color: COLORS[verdict], size: 9 } };
}

function drawSegment(view) {
  Plotly.newPlot("chart-events", [{ x: view.window_start, y: view.events, type: "bar", name: "events" }],
                 LAYOUT, CONFIG);
  view.detectors.forEach((d, i) => {
    const traces = [
      // Lines with markers: a segment seen in one window still shows its point.
      { x: d.window_start, y: d.statistic, mode: "lines+markers", name: "statistic", line: { color: "#2c3e50" } },
      { x: d.window_start, y: d.threshold, mode: "lines+markers", name: "threshold",
        line: { dash: "dash", color: "#7f8c8d" }, marker: { symbol: "line-ew-open", size: 12 } },
      marked(d, "warning"),
      marked(d, "drift"),
    ];
    Plotly.newPlot(`chart-${i}`, traces, LAYOUT, CONFIG);
    const names = Object.keys(d.measurements);
    if (names.length) {
      Plotly.newPlot(`chart-${i}-m`, names.map((n) => ({ x: d.window_start, y: d.measurements[n], mode: "lines+markers", name: n })),
                     LAYOUT, CONFIG);
    }
  });
}

function drawDeadLetters(view) {
  const traces = view.series.map((s) => ({ x: s.minute, y: s.count, type: "bar", name: s.reason }));
  Plotly.newPlot("chart-deadletters", traces, { ...LAYOUT, barmode: "stack" }, CONFIG);
}

const DRAW = { segment: drawSegment, deadletters: drawDeadLetters };

document.addEventListener("DOMContentLoaded", async () => {
  const page = document.body.dataset.page;
  const charts = document.getElementById("charts");
  if (!charts || !DRAW[page]) return;
  const response = await fetch(charts.dataset.api, { credentials: "same-origin" });
  if (!response.ok) {
    charts.insertAdjacentText("afterbegin", `could not load the chart data: ${response.status}`);
    return;
  }
  DRAW[page](await response.json());
  charts.dataset.drawn = "true";  // what a test (or a person's script) can wait for
});
