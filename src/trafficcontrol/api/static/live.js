// Keeps a dashboard page live from /api/events/stream (see api/pages.py).
(function () {
  "use strict";
  const badge = document.getElementById("live");
  function setCounts(counts) {
    for (const [state, n] of Object.entries(counts || {})) {
      const el = document.getElementById("count-" + state);
      if (el) el.textContent = String(n);
    }
  }
  function connect() {
    const source = new EventSource("/api/events/stream");
    source.addEventListener("hello", (e) => {
      badge.textContent = "live";
      badge.classList.add("on");
      const data = JSON.parse(e.data);
      setCounts(data.counts);
    });
    source.addEventListener("journal", (e) => {
      const data = JSON.parse(e.data);
      setCounts(data.counts);
      document.getElementById("seq").textContent = String(data.seq);
      document.body.dataset.seq = String(data.seq);
      document.dispatchEvent(new CustomEvent("tc:journal", { detail: data }));
    });
    source.addEventListener("resync", () => { source.close(); location.reload(); });
    source.onerror = () => { badge.textContent = "reconnecting…"; badge.classList.remove("on"); };
  }
  connect();
})();
