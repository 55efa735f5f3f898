// Keeps a dashboard page live from /api/events/stream (see api/pages.py; api/hub.py says
// what a message carries: counts, the ids of the tasks and attempts a burst touched, or
// null and gap when the page should refresh everything).
// Every page: the counts by state ([data-count]) and the journal seq, from each message.
// Then by the page's data-live: "fragments" fetches the page again (debounced) and swaps
// its [data-fragment] parts; "task" does so when its task was touched; "dag" recolours
// the nodes from /api/dag when a task was touched; "context" also leaves its chart to
// context.js, which listens to the tc:journal events dispatched here.
(function () {
  "use strict";
  const DEBOUNCE_MS = 100;
  const body = document.body;
  const mode = body.dataset.live || "none";
  const badge = document.getElementById("live");

  // A state missing from a message has no task: its count is 0.
  function setCounts(counts) {
    if (!counts) return;
    for (const el of document.querySelectorAll("[data-count]")) {
      el.textContent = String(counts[el.dataset.count] || 0);
    }
  }

  // One run at a time; events arriving meanwhile ask for one more run after it. The
  // first run follows an event by DEBOUNCE_MS; while events keep coming, runs are at
  // least MIN_INTERVAL_MS apart: a busy orchestrator renders a page a second, not ten.
  const MIN_INTERVAL_MS = 1000;
  function debounced(work) {
    let timer = null, running = false, again = false, last = 0;
    async function run() {
      timer = null;
      if (running) { again = true; return; }
      running = true;
      last = Date.now();
      try { await work(); } catch (err) { console.warn("tc: refresh failed", err); }
      running = false;
      if (again) { again = false; schedule(); }
    }
    function schedule() {
      if (timer !== null) return;
      const wait = Math.max(DEBOUNCE_MS, last + MIN_INTERVAL_MS - Date.now());
      timer = setTimeout(run, wait);
    }
    return schedule;
  }

  async function fetchPage() {
    const response = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    return new DOMParser().parseFromString(await response.text(), "text/html");
  }

  const refreshFragments = debounced(async () => {
    const fresh = await fetchPage();
    for (const part of document.querySelectorAll("[data-fragment][id]")) {
      const next = fresh.getElementById(part.id);
      if (next) part.replaceWith(document.importNode(next, true));
    }
    for (const key of ["attempts", "seq"]) {
      if (fresh.body.dataset[key] !== undefined) body.dataset[key] = fresh.body.dataset[key];
    }
    tick();
    document.dispatchEvent(new CustomEvent("tc:refreshed"));
  });

  const recolour = debounced(async () => {
    const svg = document.getElementById("dag");
    const response = await fetch("/api/dag");
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    const project = body.dataset.project || "";
    const nodes = data.nodes.filter((n) => !project || n.project === project);
    const drawn = new Map();
    if (svg) for (const el of svg.querySelectorAll("a.node")) drawn.set(el.dataset.id, el);
    const total = svg ? Number(svg.dataset.total) : 0;
    if (nodes.length !== total) { refreshFragments(); return; } // tasks came or went: redraw
    const byState = {};
    for (const node of nodes) {
      byState[node.state] = (byState[node.state] || 0) + 1;
      const el = drawn.get(node.id);
      if (!el || el.dataset.state === node.state) continue;
      el.setAttribute("class", "node state-" + node.state);
      el.dataset.state = node.state;
      const title = el.querySelector("title");
      if (title) title.textContent = title.textContent.replace(/\(\w+\)/, "(" + node.state + ")");
    }
    for (const el of document.querySelectorAll("[data-dag-count]")) {
      el.textContent = String(byState[el.dataset.dagCount] || 0);
    }
  });

  // Whether a message may change this task (or, for the DAG, any task): the ids the
  // burst touched, or everything when the stream could not list them.
  function touches(data, task) {
    if (data.gap || !Array.isArray(data.tasks)) return true;
    if (task === undefined) return data.tasks.length > 0;
    const attempts = new Set((body.dataset.attempts || "").split(" ").filter(Boolean));
    return data.tasks.includes(task) || (data.attempts || []).some((a) => attempts.has(a));
  }

  function onJournal(data) {
    setCounts(data.counts);
    const seq = document.getElementById("seq");
    if (seq) seq.textContent = String(data.seq);
    body.dataset.seq = String(data.seq);
    if (mode === "fragments" || mode === "context") refreshFragments();
    else if (mode === "task" && touches(data, body.dataset.task)) refreshFragments();
    else if (mode === "dag" && touches(data)) recolour();
    document.dispatchEvent(new CustomEvent("tc:journal", { detail: data }));
  }

  // Elapsed times of running attempts tick here; the server only says when they started.
  function elapsed(seconds) {
    if (seconds < 60) return seconds.toFixed(1) + "s";
    const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
    if (m < 60) return m + "m" + String(s).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }
  function tick() {
    const now = Date.now() / 1000;
    for (const el of document.querySelectorAll(".elapsed[data-started]")) {
      el.textContent = elapsed(Math.max(0, now - Number(el.dataset.started)));
    }
  }
  setInterval(tick, 1000);

  document.addEventListener("click", (e) => {
    const fit = e.target instanceof Element ? e.target.closest("#dag-fit") : null;
    const svg = document.getElementById("dag");
    if (!fit || !svg) return;
    const on = svg.classList.toggle("fit");
    fit.textContent = on ? "1:1" : "fit";
  });

  function connect() {
    const source = new EventSource("/api/events/stream");
    source.addEventListener("hello", (e) => {
      badge.textContent = "live";
      badge.classList.add("on");
      const data = JSON.parse(e.data);
      setCounts(data.counts);
      // Something was journaled between rendering this page and subscribing.
      if (Number(data.seq) > Number(body.dataset.seq)) {
        onJournal({ ...data, events: [], tasks: null, attempts: null, gap: true });
      }
    });
    source.addEventListener("journal", (e) => onJournal(JSON.parse(e.data)));
    source.onerror = () => { badge.textContent = "reconnecting…"; badge.classList.remove("on"); };
  }
  connect();
})();
