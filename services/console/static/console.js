// Charts of the loopwatch console: each page's data comes from its /api/ twin, drawn with Plotly.
"use strict";

const COLORS = { drift: "#c0392b", warning: "#e67e22", ok: "#27ae60" };
const LAYOUT = { margin: { l: 50, r: 20, t: 10, b: 40 }, height: 260, showlegend: true,
                 legend: { orientation: "h" } };
const CONFIG = { displaylogo: false, responsive: true };

function marked(series, verdict) {
  // The windows with this verdict, as markers on the statistic line: the verdict is what stands out.
  const x = [], y = [];
  series.verdict.forEach((v, i) => { if (v === verdict) { x.push(series.window_start[i]); y.push(series.statistic[i]); } });
  return { x, y, mode: "markers", name: verdict, marker: { color: COLORS[verdict], size: 11 } };
}

const MINUTE = 60 * 1000;

function xaxis(times) {
  // Plotly zooms one point (or a few seconds) to sub-millisecond ticks: give the axis at least
  // ten minutes around the windows, and tick labels in clock time.
  const ms = times.map((t) => new Date(t).getTime()).filter((t) => !Number.isNaN(t));
  if (!ms.length) return { type: "date" };
  const first = Math.min(...ms), last = Math.max(...ms);
  const pad = Math.max((last - first) * 0.05, (10 * MINUTE - (last - first)) / 2, 0);
  const span = last - first + 2 * pad;
  return { type: "date", range: [new Date(first - pad).toISOString(), new Date(last + pad).toISOString()],
           tickformat: span <= 2 * 24 * 60 * MINUTE ? "%H:%M:%S\n%b %d" : "%b %d\n%H:%M" };
}

function barWidth(times) {
  // On a date axis a bar is as wide as its width in ms (a lone bar otherwise gets about 1 ms,
  // invisible on a ten-minute axis): the smallest gap between windows, or a minute.
  const ms = [...new Set(times.map((t) => new Date(t).getTime()))].sort((a, b) => a - b);
  const gaps = ms.slice(1).map((t, i) => t - ms[i]).filter((g) => g > 0);
  return 0.9 * (gaps.length ? Math.min(...gaps) : MINUTE);
}

function bars(x, y, name, width) {
  // offset 0: a bar starts at its window (or minute) and covers it, rather than centring on its start.
  return { x, y, type: "bar", name, width, offset: 0 };
}

function layout(times) {
  return { ...LAYOUT, xaxis: xaxis(times) };
}

function drawSegment(view) {
  Plotly.newPlot("chart-events", [bars(view.window_start, view.events, "events", barWidth(view.window_start))],
                 layout(view.window_start), CONFIG);
  view.detectors.forEach((d, i) => {
    const name = d.config_label ? `statistic (${d.config_label})` : "statistic";
    const traces = [
      // Lines with markers: a segment seen in one window still shows its point.
      // Each point in its verdict's colour (ok green too): the verdict stands out, not the line.
      { x: d.window_start, y: d.statistic, mode: "lines+markers", name, line: { color: "#95a5a6" },
        marker: { color: d.verdict.map((v) => COLORS[v]), size: 7 }, customdata: d.verdict,
        hovertemplate: "%{y} %{customdata}<extra></extra>" },
      { x: d.window_start, y: d.threshold, mode: "lines+markers", name: d.threshold_label || "threshold",
        line: { dash: "dash", color: "#7f8c8d" }, marker: { symbol: "line-ew-open", size: 12 } },
      marked(d, "warning"),
      marked(d, "drift"),
    ];
    Plotly.newPlot(`chart-${i}`, traces, layout(d.window_start), CONFIG);
    const names = Object.keys(d.measurements);
    if (names.length) {
      Plotly.newPlot(`chart-${i}-m`, names.map((n) => ({ x: d.window_start, y: d.measurements[n], mode: "lines+markers", name: n })),
                     layout(d.window_start), CONFIG);
    }
  });
}

function drawDeadLetters(view) {
  const traces = view.series.map((s) => bars(s.minute, s.count, s.reason, 0.9 * MINUTE));
  const minutes = view.series.flatMap((s) => s.minute);
  Plotly.newPlot("chart-deadletters", traces, { ...layout(minutes), barmode: "stack" }, CONFIG);
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
