// Charts of the loopwatch console: each page's data comes from its /api/ twin, drawn with Plotly.
"use strict";

const COLORS = { drift: "#c0392b", warning: "#e67e22", ok: "#27ae60" };
// The legend sits below the two-line time labels (the first tick's date line would run into it).
const LAYOUT = { margin: { l: 60, r: 20, t: 10, b: 40 }, height: 300, showlegend: true,
                 legend: { orientation: "h", y: -0.3, yanchor: "top" } };
const CONFIG = { displaylogo: false, responsive: true };

function values(series) {
  // What the threshold bounds (p-value, effect size, statistic, score); null where not judged.
  // A p of 0 sits at the log axis's floor (a log axis cannot draw 0), marked by floored().
  const ys = series.value && series.value.length ? series.value : series.statistic;
  return series.floor ? ys.map((y) => (y !== null && y <= 0 ? series.floor : y)) : ys;
}

function rawValues(series) {
  // A corrected chart's raw p per judged window (null where not judged), at the floor when 0.
  return series.p_value.map((p, i) => {
    if (p === null || series.verdict[i] === "not judged") return null;
    return series.floor && p <= 0 ? series.floor : p;
  });
}

function pLines(d, k) {
  // A corrected window's two p-values, each with the line it had to beat: what its colour can be checked by.
  const fmt = (p) => (p === null || p === undefined ? "-" : Number(p).toPrecision(3));
  const raw = `raw p ${fmt(d.p_value[k])} vs detector alpha ${d.threshold[k]}`;
  const alpha = (d.correction_alpha || [])[k];
  if (alpha === null || alpha === undefined) return [raw, "not corrected: the verdict used the raw p"];
  const assumed = d.correction_note ? " (the default: not in the history)" : "";
  return [raw, `BH-adjusted p ${fmt(d.value[k])} vs correction alpha ${alpha}${assumed}`];
}

function rawTrace(d, said, name) {
  // The raw p of each window, open diamonds in its verdict's colour on a dotted line, against the detector's
  // alpha; the filled points (the adjusted p) are read against the correction's alpha. Large enough that a
  // point at the same p (a lone test: adjusted = raw) shows inside it (trial 12q saw one filled diamond).
  const colors = d.verdict.map((v) => COLORS[v] || "#95a5a6");
  return { x: d.window_start, y: rawValues(d), mode: "lines+markers", name, legendrank: 3, cliponaxis: false,
           line: { color: "#bdc3c7", dash: "dot", width: 1 }, customdata: said,
           marker: { symbol: "diamond-open", size: 18, color: colors, line: { width: 2, color: colors } },
           hovertemplate: "%{y} %{customdata}<extra>raw p</extra>" };
}

// The correction's alpha: shorter dashes, darker, apart from the detector's alpha.
const CORRECTION_LINE = { dash: "4px,5px", color: "#2c3e50", width: 2 };

function correctionTrace(d, shared) {
  // The line a corrected window's adjusted p must be below (the stream's correction alpha), across the axis.
  return { ...spanned(d.window_start, d.correction_alpha, shared), mode: "lines", name: d.correction_label,
           legendrank: 2, line: CORRECTION_LINE, hoverinfo: "name" };
}

function floored(series) {
  // The windows whose p is 0, at the floor: a triangle pointing down, labelled and hovered p < floor.
  const x = [], y = [], ys = series.value || [], label = `p < ${series.floor}`;
  ys.forEach((v, i) => { if (v !== null && v <= 0) { x.push(series.window_start[i]); y.push(series.floor); } });
  // No text per point: neighbours' labels ran into each other; the legend and the hover say it.
  return { x, y, mode: "markers", name: `p = 0 (drawn as ${label})`,
           marker: { symbol: "triangle-down-open", size: 14, color: "#222", line: { width: 2 } },
           hovertemplate: `${label} (p = 0): %{x}<extra></extra>` };
}

function marked(series, verdict, said) {
  // The windows with this verdict, as markers on the value line: the verdict is what stands out.
  // Drawn over the line's points, so they carry its hover too.
  const x = [], y = [], text = [], ys = values(series);
  series.verdict.forEach((v, i) => {
    if (v === verdict) { x.push(series.window_start[i]); y.push(ys[i]); text.push(said[i]); }
  });
  return { x, y, mode: "markers", name: verdict, marker: { color: COLORS[verdict], size: 11 }, customdata: text,
           hovertemplate: "%{y} %{customdata}<extra></extra>" };
}

function closesOf(view, kind) {
  // Per window start: what the page says of when its windows (of `kind`, else of every kind) closed.
  const closed = view.closed || {}, known = Object.keys(closed);
  const kinds = kind && known.includes(kind) ? [kind] : known;
  const at = new Map(view.window_start.map((t, i) => [t, i]));
  return (t) => {
    const i = at.get(t);
    if (i === undefined) return [];
    return kinds.filter((k) => closed[k][i]).map((k) => (kinds.length > 1 ? `${k}: ${closed[k][i]}` : closed[k][i]));
  };
}

function revised(series) {
  // The windows whose verdict late events revised: a ring around their point (its hover and the
  // counts above the chart say "revised"; no legend entry of its own).
  const x = [], y = [], ys = values(series);
  (series.revision || []).forEach((r, i) => { if (r > 0 && ys[i] !== null) { x.push(series.window_start[i]); y.push(ys[i]); } });
  return { x, y, mode: "markers", name: "revised by late events", hoverinfo: "skip", showlegend: false,
           marker: { symbol: "circle-open", size: 17, color: "#34495e", line: { width: 2 } } };
}

const MINUTE = 60 * 1000;

function xaxis(times, shared, least = MINUTE) {
  // Plotly zooms one point (or a few seconds) to sub-millisecond ticks: give the axis at least
  // `least` (a minute) around the times, fitted to them (a ten-minute floor put four minutes of data in the
  // middle 40%), and tick labels in clock time. A page whose charts share one axis (shared:
  // [start, end] from its API) gives every chart that range, so windows line up.
  const ms = shared && shared.length === 2 ? shared.map((t) => new Date(t).getTime())
    : times.map((t) => new Date(t).getTime()).filter((t) => !Number.isNaN(t));
  if (!ms.length) return { type: "date" };
  const first = Math.min(...ms), last = Math.max(...ms);
  const pad = shared ? 0 : Math.max((last - first) * 0.03, (least - (last - first)) / 2, 0);
  const span = last - first + 2 * pad;
  return { type: "date", range: [new Date(first - pad).toISOString(), new Date(last + pad).toISOString()],
           tickformat: span <= 2 * 24 * 60 * MINUTE ? "%H:%M:%S\n%b %d" : "%b %d\n%H:%M",
           title: { text: "window start (window time, UTC)", standoff: 2, font: { size: 11 } } };
}

function barWidth(times, windowMs) {
  // On a date axis a bar is as wide as its width in ms (a lone bar otherwise gets about 1 ms,
  // invisible): the smallest gap between windows; a lone window's own length when the page knows it
  // (a lone 30 s window's bar was a minute wide, past the axis fitted to it), else a minute.
  const ms = [...new Set(times.map((t) => new Date(t).getTime()))].sort((a, b) => a - b);
  const gaps = ms.slice(1).map((t, i) => t - ms[i]).filter((g) => g > 0);
  return 0.9 * (gaps.length ? Math.min(...gaps) : windowMs || MINUTE);
}

function bars(x, y, name, width, offset = 0) {
  // offset 0: a bar starts at its window (or minute) and covers it, rather than centring on its start.
  return { x, y, type: "bar", name, width, offset };
}

function layout(times, shared, least) {
  return { ...LAYOUT, xaxis: xaxis(times, shared, least) };
}

function windowTicks(plot, times, windowSeconds) {
  // Ticks on window boundaries (every window, or every 2nd, 3rd, 5th, ...: at most about 8), so a bar or
  // point reads against its own window; Plotly's own steps (15 s) fell inside 20 s windows.
  const ms = times.map((t) => new Date(t).getTime()).filter((t) => !Number.isNaN(t));
  const range = (plot.xaxis.range || []).map((t) => new Date(t).getTime());
  if (!windowSeconds || !ms.length || range.length !== 2) return plot;
  const windowMs = windowSeconds * 1000;
  const step = [1, 2, 3, 5, 6, 10, 15, 30, 60, 120, 180, 360, 720, 1440]
    .find((k) => (range[1] - range[0]) / (k * windowMs) <= 8) || 1440;
  Object.assign(plot.xaxis, { tick0: new Date(Math.min(...ms)).toISOString(), dtick: step * windowMs });
  return plot;
}

function integerTicks(axis, step) {
  // Counts are whole: ticks on whole numbers (Plotly put 0.5 and 1.5 between 0, 1 and 2 letters);
  // the step comes from the page's API (count_step).
  return Object.assign(axis, { tick0: 0, dtick: step || 1, tickformat: "d", rangemode: "tozero" });
}

// A threshold or bound: long dashes with clear gaps, which read as dashed at any width.
const THRESHOLD_LINE = { dash: "12px,8px", color: "#7f8c8d", width: 2 };
// The policy's p-value gates (a rollback or retrain rule's), dotted, apart from the detector's alpha.
const GATE_COLOR = "#c0392b";

function styled(trace, style) {
  // Lines of one chart that can be equal (p95 and p99, a rate and its reference at 0) each have their
  // own marker, size and dash (the API's styles): the one drawn later never hides the other.
  if (!style) return trace;
  // Not clipped at the axis: a share of 0 sits on the axis's floor and half its marker was cut off.
  return { ...trace, line: { ...(trace.line || {}), dash: style.dash, width: 2 }, cliponaxis: false,
           marker: { symbol: style.symbol, size: style.size, line: { width: 2 } } };
}

function yaxis(title, ys, log) {
  // Every axis says what it counts. Values that cannot be negative (shares, counts, p-values) start at 0:
  // all zeros would otherwise autoscale to -1..1, and a share is 0..1 at most.
  const axis = { title: { text: title }, automargin: true };  // long tick labels ($0.00004) push the title out
  // Only powers of ten labelled (Plotly's minor labels, 2..9 per decade, read as stray numbers), and at
  // most about 8 of them: a p of 1e-71 would stack 72 labels into a block.
  if (log) {
    const positive = ys.filter((y) => y !== null && y !== undefined && y > 0);
    const decades = positive.length ? Math.ceil(-Math.log10(Math.min(...positive, 1))) + 1 : 1;
    const log = { ...axis, type: "log", dtick: Math.max(1, Math.ceil(decades / 8)), exponentformat: "power" };
    // Values within one decade (p 0.02 to 0.9) left a single labelled tick (10^-1): unreadable. The axis
    // then spans the decades around them, so at least two powers of ten are labelled.
    if (!positive.length) return log;
    const bottom = Math.log10(Math.min(...positive)), top = Math.log10(Math.max(...positive));
    // A p is at most 1: the axis ends just above it (trial 12i: autorange padded a 1e-72 axis past 10^9).
    const ceiling = 0.05;
    if (Math.floor(top) - Math.ceil(bottom) + 1 >= 2) {  // powers of ten within the values
      return { ...log, range: [bottom - Math.max(0.05, (ceiling - bottom) * 0.05), ceiling] };
    }
    const lo = Math.floor(bottom), hi = Math.ceil(top);
    return { ...log, range: [lo - 0.05, Math.min(Math.max(hi, lo + 1) + 0.05, ceiling)] };
  }
  // Dollars as plain decimals ($0.0006), never Plotly's SI suffixes (600µ).
  if (title === "USD") Object.assign(axis, { tickprefix: "$", tickformat: "~g", hoverformat: "~g" });
  const known = ys.filter((y) => y !== null && y !== undefined);
  if (known.length && known.every((y) => y >= 0)) {
    axis.rangemode = "tozero";
    if (known.every((y) => y === 0)) axis.range = [0, 1];
  }
  return axis;
}

function unjudged(holder, d) {
  // A detector that judged no window has no point to draw: say why instead of drawing an empty axis.
  const why = [...new Set((d.note || []).filter((n) => n).map((n) => n.replace(/^.*not judged \((.*)\)$/, "$1")))]
    .join("; ") || "too few samples";
  const text = document.createElement("p");
  text.className = "not-judged-chart";
  const skipped = d.slow && (d.skipped || []).length
    ? ` The slow detectors' queue was full for ${d.skipped.length} more windows: skipped.` : "";
  text.textContent = `Not judged in any of its ${d.windows} window${d.windows === 1 ? "" : "s"} (${why}): nothing to draw.${skipped}`;
  holder.replaceWith(text);
}

function linkZoom(ids) {
  // Zooming one chart of the page zooms the others to the same time range.
  let busy = false;
  ids.forEach((id) => document.getElementById(id).on("plotly_relayout", (change) => {
    if (busy) return;
    const range = change["xaxis.range[0]"] !== undefined
      ? { "xaxis.range": [change["xaxis.range[0]"], change["xaxis.range[1]"]] }
      : change["xaxis.autorange"] ? { "xaxis.autorange": true } : null;
    if (!range) return;
    busy = true;
    Promise.all(ids.filter((other) => other !== id).map((other) => Plotly.relayout(other, range)))
      .finally(() => { busy = false; });
  }));
}

function drawSegment(view) {
  const shared = view.x_range;
  const width = barWidth(view.window_start, view.window_seconds ? view.window_seconds * 1000 : null);
  const traffic = [bars(view.window_start, view.events, "events", width)];
  if ((view.feedback_events || []).some((n) => n !== null)) {
    // Side by side within the window: inference in its first half, feedback in its second.
    traffic[0].width = width / 2;
    traffic.push(bars(view.window_start, view.feedback_events, "feedback events", width / 2, width / 2));
  }
  // Each bar's hover says when its window (of that input) closed and what it waited for.
  traffic.forEach((trace, k) => {
    const closes = closesOf(view, k === 0 ? "inference" : "feedback");
    trace.customdata = view.window_start.map((t) => closes(t).join("<br>"));
    trace.hovertemplate = "%{x}: %{y}<br>%{customdata}<extra>%{fullData.name}</extra>";
  });
  const events = windowTicks(layout(view.window_start, shared), view.window_start, view.window_seconds);
  const counts = [...view.events, ...(view.feedback_events || [])];
  events.yaxis = integerTicks(yaxis("events", counts), view.count_step);
  Plotly.newPlot("chart-events", withRollbacks(traffic, events, view.rollbacks), events, CONFIG);
  const ids = ["chart-events"];
  const unfed = new Set(view.unfed || []);
  const labelled = [];
  view.detectors.forEach((d, i) => {
    // A detector the segment never fed (no ratings sent) has no chart: its section says "no input sent" only.
    if (unfed.has(d.detector_id)) return;
    // A corrected p-value chart (value_note) draws two p's, each against its own line (trial 12n).
    const corrected = d.threshold_kind === "alpha" && Boolean(d.value_note);
    const label = corrected ? "BH-adjusted p" : d.value_label || "statistic";
    const of = (what) => (d.config_label ? `${what} (${d.config_label})` : what);
    const name = of(label);
    // Hover says the verdict, or why there is none (not judged) and whether late events revised it; on a
    // corrected chart both p's and both alphas; the check that decided (tokens, cost); when it closed.
    const closes = closesOf(view, d.kind);
    const said = d.verdict.map((v, k) => {
      const note = (d.revised_note && d.revised_note[k]) || (d.note && d.note[k]);
      const ps = corrected && v !== "not judged" ? pLines(d, k) : [];
      const by = (d.decided_by || [])[k] ? [`decided by its ${d.decided_by[k]} check`] : [];
      return [note ? `${v}: ${note}` : v, ...ps, ...by, ...closes(d.window_start[k])].join("<br>");
    });
    const traces = [
      // Lines with markers: a segment seen in one window still shows its point.
      // Each point in its verdict's colour (ok green too): the verdict stands out, not the line.
      // A window not judged has no value: no point, a gap in the line.
      // Not clipped at the axis: a value of 0 sits on its floor and half its marker was cut off.
      { x: d.window_start, y: values(d), mode: "lines+markers", name, line: { color: "#95a5a6" }, cliponaxis: false,
        marker: { color: d.verdict.map((v) => COLORS[v] || "#95a5a6"), size: 7 }, customdata: said,
        hovertemplate: "%{y} %{customdata}<extra></extra>", legendrank: 1 },
      { ...thresholdTrace(d, shared), legendrank: 4 },
      { ...marked(d, "warning", said), legendrank: 5 },
      { ...marked(d, "drift", said), legendrank: 6 },
    ];
    // Legend order pairs each p with its line; trace order keeps the detector's alpha second.
    if (corrected) traces.push(rawTrace(d, said, of("raw p")), correctionTrace(d, shared));
    traces.push(...thresholdSpan(d, shared));
    // The policy's rollback and retrain gates on this p-value (trial 12i: what acted was not alpha).
    const gates = d.threshold_kind === "alpha" ? (view.gates || []).filter((g) => g.detector_id === d.detector_id) : [];
    // Labelled at the line's right end, not in the legend (whose entries are the detector's own).
    gates.forEach((g) => traces.push({ x: shared, y: [g.p_value, g.p_value], mode: "lines", name: g.label,
                                       line: { dash: "dot", color: GATE_COLOR, width: 2 }, hoverinfo: "name",
                                       showlegend: false }));
    if (d.floor) traces.push(floored(d));
    if ((d.revision || []).some((r) => r > 0)) traces.push(revised(d));
    const ys = corrected ? [...values(d), ...rawValues(d)] : values(d);
    if (!ys.some((y) => y !== null)) {
      unjudged(document.getElementById(`chart-${i}`), d);
      return;
    }
    const plot = windowTicks(layout(d.window_start, shared), view.window_start, view.window_seconds);
    const lines = [...d.threshold, ...(corrected ? d.correction_alpha : [])];
    plot.yaxis = yaxis(d.axis_title || d.value_label || "statistic", [...ys, ...lines, ...gates.map((g) => g.p_value)],
                       d.threshold_kind === "alpha");
    // The rule a point's colour follows: both p's below their lines (and a large enough effect).
    // On its own line above the entries: beside them it pushed the last ones past the chart's right edge.
    if (corrected) {
      plot.legend = { ...plot.legend, title: { text: d.value_note, side: "top" } };
      plot.height = LAYOUT.height + 40;
    }
    if (d.slow && (d.skipped || []).length) traces.push(skippedTrace(d.skipped));
    const drawn = Plotly.newPlot(`chart-${i}`, withRollbacks(traces, plot, view.rollbacks), plot, CONFIG);
    // The gates' labels are placed once the chart is drawn: where they fit depends on its axis and height.
    if (gates.length) labelled.push(drawn.then((chart) => labelGates(chart, gates, lines)));
    ids.push(`chart-${i}`);
    // One chart per unit (shares, milliseconds, USD, tokens): a latency never flattens a share.
    // A bound (an SLO) is a dashed line, not a series.
    const byUnit = {};
    Object.keys(d.measurements).forEach((n) => {
      const unit = (d.units && d.units[n]) || "share";
      (byUnit[unit] = byUnit[unit] || []).push(n);
    });
    const holder = document.getElementById(`chart-${i}-m`);
    Object.keys(byUnit).sort().forEach((unit) => {
      const id = `chart-${i}-m-${unit}`;
      const div = document.createElement("div");
      div.className = "chart measurements";
      div.id = id;
      div.dataset.unit = unit;
      holder.appendChild(div);
      const bound = new Set(d.bounds || []);
      const names = d.labels || {};
      // Where a reference's measure is drawn, each entry names its version; else the legend's title does.
      const compared = byUnit[unit].some((n) => names[n]);
      const styles = d.styles || {};
      const traces = byUnit[unit].map((n) => (bound.has(n)
        ? { ...spanned(d.window_start, d.measurements[n], shared), mode: "lines", name: names[n] || `${n} (bound)`,
            line: { ...THRESHOLD_LINE, dash: (styles[n] || THRESHOLD_LINE).dash } }
        : styled({ x: d.window_start, y: d.measurements[n], mode: "lines+markers", name: names[n] || n }, styles[n])));
      const plot = windowTicks(layout(d.window_start, shared), view.window_start, view.window_seconds);
      if (!compared) plot.legend = { ...plot.legend, title: { text: `on ${view.model_version}:` } };
      plot.yaxis = yaxis(unit, byUnit[unit].flatMap((n) => d.measurements[n]));
      Plotly.newPlot(id, withRollbacks(traces, plot, view.rollbacks), plot, CONFIG);
      ids.push(id);
    });
  });
  linkZoom(ids);
  return Promise.all(labelled);
}

// A gate's label: its height (font 10 in its box) and the room kept between it and a line, in px.
const LABEL_PX = 16, LABEL_GAP = 2;

function labelTops(lines, labelled, height) {
  // Where each label goes: the top of its box, in px from the plot area's top (y grows down), given the
  // px of every horizontal line (alpha, the gates) and of each label's own line. Each takes the free spot
  // nearest its line that crosses no line and no label placed before it, inside the plot area; lines close
  // on a long log axis get their labels stacked beside them. Trial 12k: the gate's label, drawn above its
  // line, sat on the alpha line a decade above it.
  const boxes = [];
  const free = (top) => top >= 0 && top + LABEL_PX <= height
    && lines.every((y) => y <= top - LABEL_GAP + 0.01 || y >= top + LABEL_PX + LABEL_GAP - 0.01)
    && boxes.every((b) => top >= b + LABEL_PX + LABEL_GAP - 0.01 || top + LABEL_PX <= b - LABEL_GAP + 0.01);
  const order = labelled.map((y, k) => k).sort((a, b) => labelled[a] - labelled[b]);  // the top line first
  const tops = [];
  order.forEach((k) => {
    const y = labelled[k];
    // Just above or below a line or a placed label, or at the plot's top or bottom edge.
    const edges = [...lines, ...boxes.flatMap((b) => [b - LABEL_GAP, b + LABEL_PX + LABEL_GAP])];
    const candidates = [0, height - LABEL_PX, ...edges.flatMap((e) => [e - LABEL_GAP - LABEL_PX, e + LABEL_GAP])];
    const near = (top) => Math.abs(top + LABEL_PX / 2 - y);
    const fits = candidates.filter(free).sort((a, b) => near(a) - near(b) || a - b);
    tops[k] = fits.length ? fits[0] : Math.min(y + LABEL_GAP, height - LABEL_PX);  // no room: below its line
    boxes.push(tops[k]);
  });
  return tops;
}

function labelGates(chart, gates, thresholds) {
  // The policy's gates labelled at the plot's right edge, each by labelTops, again whenever the y axis
  // changes (a zoom): a label's offset from its line is in px.
  const place = () => {
    const [lo, hi] = chart._fullLayout.yaxis.range, height = chart._fullLayout._size.h;
    const px = (p) => (height * (hi - Math.log10(p))) / (hi - lo);
    const lines = [...new Set([...thresholds.filter((t) => t > 0), ...gates.map((g) => g.p_value)])].map(px);
    const tops = labelTops(lines, gates.map((g) => px(g.p_value)), height);
    const labels = gates.map((g, k) => ({ name: "gate", x: 1, xref: "paper", y: Math.log10(g.p_value), yref: "y",
      xanchor: "right", yanchor: "top", yshift: px(g.p_value) - tops[k], showarrow: false, text: g.label,
      font: { size: 10, color: GATE_COLOR } }));
    const others = (chart.layout.annotations || []).filter((a) => a.name !== "gate");
    return Plotly.relayout(chart, { annotations: [...others, ...labels] });
  };
  chart.on("plotly_relayout", (change) => {
    if (Object.keys(change).some((key) => key.startsWith("yaxis.range") || key === "yaxis.autorange")) place();
  });
  return place();
}

function lone(ys, k) {
  // A point with no drawn neighbour: its line has no segment to show it.
  const near = (j) => j >= 0 && j < ys.length && ys[j] !== null && ys[j] !== undefined;
  return near(k) && !near(k - 1) && !near(k + 1);
}

function thresholdTrace(d, shared) {
  // Long dashes with gaps. A wide dash per window only when no two windows are joined by a line
  // (a one-window segment's threshold is then a short segment, not a 1-px dash): drawn on every
  // window of a line, those 40-px marks ran together and the dashed line looked solid. A line's one
  // threshold spans the whole axis, not only the judged windows.
  const drawn = d.threshold.every((t, k) => t === null || lone(d.threshold, k))
    ? { x: d.window_start, y: d.threshold, mode: "lines+markers",
        marker: { symbol: "line-ew-open", size: 40, line: { width: 2, color: "#7f8c8d" } } }
    : { ...spanned(d.window_start, d.threshold, shared), mode: "lines" };
  return { ...drawn, name: d.threshold_label || "threshold", line: THRESHOLD_LINE };
}

function thresholdSpan(d, shared) {
  // A lone window's one threshold (a detector's alpha) also spans the page's axis, without a legend entry
  // of its own (trial 12i: only a short segment around the point was drawn).
  const lonely = d.threshold.some((t) => t !== null) && d.threshold.every((t, k) => t === null || lone(d.threshold, k));
  if (!lonely || !constant(d.threshold) || !shared || shared.length !== 2) return [];
  return [{ ...spanned(d.window_start, d.threshold, shared), mode: "lines", line: THRESHOLD_LINE,
            name: d.threshold_label || "threshold", showlegend: false, hoverinfo: "skip" }];
}

function constant(ys) {
  // One value for every window that has one (a detector's alpha, an SLO bound).
  const known = (ys || []).filter((y) => y !== null && y !== undefined);
  return known.length > 0 && known.every((y) => y === known[0]);
}

function spanned(xs, ys, shared) {
  // A constant line from the axis's start to its end (the page's shared range); else point by point.
  if (!constant(ys) || !shared || shared.length !== 2) return { x: xs, y: ys };
  const v = ys.find((y) => y !== null && y !== undefined);
  return { x: shared, y: [v, v] };
}

function withRollbacks(traces, plot, marks) {
  // A rolled-back version's charts mark when its rollback was requested (the end of the window it was
  // decided on, window time): a vertical line each, labelled in the chart (a layout shape: the charts'
  // legends and traces stay those of its measures). The skipped lines' hidden 0..1 axis is set here too.
  if (traces.some((t) => t.yaxis === "y2")) {
    plot.yaxis2 = { overlaying: "y", range: [0, 1], visible: false, fixedrange: true };
  }
  (marks || []).forEach((m) => {
    const color = "#8e44ad";
    plot.shapes = [...(plot.shapes || []), { type: "line", xref: "x", yref: "paper", x0: m.at, x1: m.at,
      y0: 0, y1: 1, line: { color, width: 2, dash: "dashdot" } }];
    // Labelled above the plot area, in the top margin: inside it the dashed alpha line struck it through.
    plot.margin = { ...(plot.margin || LAYOUT.margin), t: 26 };
    plot.annotations = [...(plot.annotations || []), { x: m.at, xref: "x", y: 1, yref: "paper",
      xanchor: "left", yanchor: "bottom", showarrow: false, font: { size: 11, color },
      text: `rollback requested${m.target_version ? ` (to ${m.target_version})` : ""}`,
      hovertext: m.rollback_id }];
  });
  return traces;
}

function skippedTrace(starts) {
  // The windows a slow detector skipped (its queue was full): one faint dotted line each, drawn as one
  // trace on a hidden 0..1 axis, so the chart has one legend entry and a hover per line, not a label each.
  const x = starts.flatMap((t) => [t, t, null]);
  const y = starts.flatMap(() => [0, 1, null]);
  return { x, y, yaxis: "y2", mode: "lines", name: "skipped (slow queue full)",
           line: { dash: "dot", color: "#c39bd3", width: 1 },
           hovertemplate: "%{x}: skipped, the slow detectors' queue was full<extra></extra>" };
}

function drawDeadLetters(view) {
  const traces = view.series.map((s) => bars(s.minute, s.count, s.reason, 0.9 * MINUTE));
  // A bar covers its minute: the axis spans each minute's end too.
  const minutes = view.series.flatMap((s) => s.minute);
  const ends = minutes.map((t) => new Date(new Date(t).getTime() + MINUTE).toISOString());
  // Ten minutes at least: per-minute bars labelled by the minute (a one-minute axis repeated its label).
  const plot = { ...layout([...minutes, ...ends], null, 10 * MINUTE), barmode: "stack" };
  // One-line labels with the day in the axis title: Plotly writes a two-line label's date under the
  // first tick only, and a first tick on the axis's left end hangs over the y axis (then it is hidden).
  // The days the axis spans (a last minute's end may be the next day's 00:00), not only the bars'.
  const days = [...new Set([...minutes, ...ends].map((t) => new Date(t).toISOString().slice(0, 10)))].sort();
  const oneDay = days.length <= 1;
  Object.assign(plot.xaxis, { tickformat: oneDay ? "%H:%M" : "%b %d %H:%M", ticklabeloverflow: "hide past domain",
                              title: { text: `${oneDay ? `minute (UTC) of ${days[0] || "-"}` : "minute (UTC)"}: wall clock, when loopwatch refused the message (not its event time)`,
                                       standoff: 4 } });
  Object.assign(plot, { height: 290, margin: { ...LAYOUT.margin, b: 50 }, legend: { orientation: "h", y: -0.26 } });
  plot.yaxis = integerTicks(yaxis("dead letters per minute", view.series.flatMap((s) => s.count)), view.count_step);
  Plotly.newPlot("chart-deadletters", traces, plot, CONFIG);
}

const DRAW = { segment: drawSegment, deadletters: drawDeadLetters };

function foldable() {
  // A folded detector section keeps its charts drawn; Plotly sized them while hidden, so they are resized
  // when opened. A table-of-contents link opens the section it points to.
  document.querySelectorAll("details.detector-body").forEach((details) => details.addEventListener("toggle", () => {
    if (details.open) details.querySelectorAll(".js-plotly-plot").forEach((plot) => Plotly.Plots.resize(plot));
  }));
  const open = () => {
    const target = location.hash && document.getElementById(location.hash.slice(1));
    const details = target && target.querySelector("details");
    if (details) details.open = true;
  };
  window.addEventListener("hashchange", open);
  open();
}

document.addEventListener("DOMContentLoaded", async () => {
  const page = document.body.dataset.page;
  const charts = document.getElementById("charts");
  if (!charts || !DRAW[page]) return;
  const response = await fetch(charts.dataset.api, { credentials: "same-origin" });
  if (!response.ok) {
    charts.insertAdjacentText("afterbegin", `could not load the chart data: ${response.status}`);
    return;
  }
  await DRAW[page](await response.json());
  if (page === "segment") foldable();
  charts.dataset.drawn = "true";  // what a test (or a person's script) can wait for
});
