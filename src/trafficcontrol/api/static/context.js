// The context page's chart: utilisation per session over time against the threshold
// lines, drawn by the vendored uPlot (static/vendor/uplot). It starts from the points the
// server embedded (#context-data) and adds one per update from /api/context, asked only
// when a journal message (live.js's tc:journal event) touched an attempt.
(function () {
  "use strict";
  const holder = document.getElementById("context-chart");
  const embedded = document.getElementById("context-data");
  if (!holder || !embedded || typeof uPlot === "undefined") return;
  const data = JSON.parse(embedded.textContent);
  const MAX_SESSIONS = 12, MAX_POINTS = 2000, DEBOUNCE_MS = 100;
  // Blues, greens and purples: the threshold lines own grey, orange and red.
  const PALETTE = ["#1c7ed6", "#2b8a3e", "#9c36b5", "#0b7285", "#364fc7", "#5c940d",
    "#ae3ec9", "#1098ad", "#4263eb", "#37b24d", "#7048e8", "#0c8599"];
  const LINES = [["compress", "#868e96"], ["delegate", "#f08c00"], ["warn", "#e8590c"],
    ["cap", "#c92a2a"]];
  const series = new Map(); // attempt -> {task, points: [[t, u]]}
  for (const s of data.series) series.set(s.attempt, { task: s.task, points: s.points });
  let plot = null, drawnKeys = "";

  function aligned(keys) {
    const xs = new Set();
    for (const k of keys) for (const [t] of series.get(k).points) xs.add(t);
    const now = Date.now() / 1000;
    if (xs.size === 0) { xs.add(now - 60); xs.add(now); }
    const x = [...xs].sort((a, b) => a - b);
    const at = new Map(x.map((t, i) => [t, i]));
    const out = [x];
    for (const [name] of LINES) out.push(x.map(() => 100 * data.thresholds[name]));
    for (const k of keys) {
      const ys = x.map(() => null);
      for (const [t, u] of series.get(k).points) ys[at.get(t)] = 100 * u;
      out.push(ys);
    }
    return out;
  }

  function options(keys) {
    return {
      width: Math.max(320, holder.clientWidth),
      height: 280,
      scales: { x: { time: true }, y: { range: (_u, _lo, hi) => [0, Math.max(70, hi * 1.1)] } },
      axes: [{}, { values: (_u, ticks) => ticks.map((v) => v + "%") }],
      series: [
        {},
        ...LINES.map(([name, colour]) => ({
          label: name + " " + Math.round(100 * data.thresholds[name]) + "%",
          stroke: colour, dash: [6, 4], width: 1, points: { show: false },
          value: (_u, v) => (v == null ? "-" : v.toFixed(0) + "%"),
        })),
        ...keys.map((k, i) => ({
          label: k + " (" + series.get(k).task + ")",
          stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true,
          value: (_u, v) => (v == null ? "-" : v.toFixed(1) + "%"),
        })),
      ],
    };
  }

  function draw() {
    const keys = [...series.keys()].slice(-MAX_SESSIONS);
    const key = keys.join(" ");
    if (plot && key === drawnKeys) { plot.setData(aligned(keys)); return; }
    if (plot) plot.destroy();
    plot = new uPlot(options(keys), aligned(keys), holder);
    drawnKeys = key;
    holder.dataset.series = String(keys.length);
  }

  let timer = null, busy = false;
  async function update() {
    timer = null;
    if (busy) { timer = setTimeout(update, DEBOUNCE_MS); return; }
    busy = true;
    try {
      const response = await fetch("/api/context");
      if (!response.ok) throw new Error("HTTP " + response.status);
      const fresh = await response.json();
      const now = Date.now() / 1000;
      for (const s of fresh.sessions) {
        let entry = series.get(s.attempt);
        if (!entry) {
          if (!s.running) continue;
          entry = { task: s.task, points: [] };
          series.set(s.attempt, entry);
        }
        const last = entry.points[entry.points.length - 1];
        if (s.running || !last || last[1] !== s.utilisation) entry.points.push([now, s.utilisation]);
        if (entry.points.length > MAX_POINTS) entry.points.splice(0, entry.points.length - MAX_POINTS);
      }
      draw();
    } catch (err) {
      console.warn("tc: context update failed", err);
    } finally {
      busy = false;
    }
  }

  // Only a burst that touched an attempt can move a session (null: it could not say).
  document.addEventListener("tc:journal", (e) => {
    const attempts = e.detail.attempts;
    const moved = e.detail.gap || !Array.isArray(attempts) || attempts.length > 0;
    if (moved && timer === null) timer = setTimeout(update, DEBOUNCE_MS);
  });
  window.addEventListener("resize", () => { if (plot) plot.setSize({ width: Math.max(320, holder.clientWidth), height: 280 }); });
  draw();
})();
