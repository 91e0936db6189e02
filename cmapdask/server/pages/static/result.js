"use strict";
(function () {
  const $ = id => document.getElementById(id);
  const jobId = $("job").dataset.job, base = "/api/v1/queries/" + encodeURIComponent(jobId);
  // CLUE's tau colours: strongest bands at |tau| >= 90, 95 and 100
  const SCALE = [[0, "#08306b"], [0.025, "#08306b"], [0.025, "#2171b5"], [0.05, "#2171b5"],
    [0.05, "#9ecae1"], [0.5, "#ffffff"], [0.95, "#fcbba1"], [0.95, "#ef3b2c"],
    [0.975, "#ef3b2c"], [0.975, "#67000d"], [1, "#67000d"]];
  const state = { query: 0, level: "pert_summary", q: "", sort: null, desc: true, offset: 0, limit: 50 };

  async function poll() {
    let job;
    try { job = await cmap.api("GET", base); } catch (e) { $("error").textContent = e.message; return; }
    $("status").textContent = job.status;
    $("stage").textContent = job.status === "running" ? "(" + job.stage + ")" : "";
    $("progress").value = job.progress;
    $("warnings").innerHTML = job.warnings.map(w => `<div>${cmap.esc(w)}</div>`).join("");
    $("error").textContent = job.error || "";
    if (job.status === "queued" || job.status === "running") {
      $("cancel").hidden = false; $("retry").hidden = true;
      setTimeout(poll, 700); return;
    }
    $("cancel").hidden = true;
    // a failed or cancelled job: its one line above, and a way to run it again
    $("retry").hidden = !(job.status === "failed" || job.status === "cancelled");
    if (job.status === "done") {
      if ($("done").hidden) show(job);
      downloads(job);
      // the result is viewable first; CLUE's folder and its archive follow
      if (job.download_status === "pending" || job.download_status === "writing") setTimeout(poll, 700);
    }
  }

  function downloads(job) {
    let dl = [];
    if (job.download_status === "done") {
      dl = [`<a id="dl-archive" href="${base}/result.tar.gz">CLUE result folder (.tar.gz)</a>`]
        .concat(job.matrices.map(m => `<a href="${base}/gctx?matrix=${encodeURIComponent(m)}">${cmap.esc(m)}.gctx</a>`));
    } else if (job.download_status === "failed") {
      dl = [`<span>the result folder could not be written</span>`];
    } else {
      dl = [`<span id="dl-pending">result folder: being written…</span>`];
    }
    const tsv = $("dl-tsv") ? $("dl-tsv").href : "#";
    dl.push(`<a id="dl-tsv" href="${tsv}">this table (TSV)</a>`);
    $("downloads").innerHTML = dl.join(" · ");
  }

  async function show(job) {
    $("query").innerHTML = job.queries.map((q, i) => `<option value="${i}">${cmap.esc(q)}</option>`).join("");
    downloads(job);
    $("done").hidden = false;
    await render();
  }

  async function render() {
    const q = state.query;
    try {
      const top = await cmap.api("GET", `${base}/results?query=${q}&level=pert_summary&limit=1`);
      const t = top.items[0];
      $("top-pert").textContent = t ? t.id : "";
      $("top-pert").href = t ? "/compounds/" + encodeURIComponent(t.id) : "#";
      $("top-tau").textContent = t && t.tau !== null ? "τ = " + t.tau.toFixed(1) : "";
    } catch (e) { $("top-pert").textContent = ""; }
    try {
      const hm = await cmap.api("GET", `${base}/heatmap?query=${q}&n=40`);
      await Plotly.newPlot("heatmap", [{
        type: "heatmap", z: hm.tau, x: hm.cells, y: hm.perts, zmin: -100, zmax: 100,
        colorscale: SCALE, hoverongaps: false, colorbar: { title: { text: "τ" } },
        text: hm.names.map(n => hm.cells.map(() => n)),
        hovertemplate: "%{y} (%{text})<br>%{x}: τ = %{z:.1f}<extra></extra>",
      }], { margin: { l: 140, t: 10 }, yaxis: { autorange: "reversed", type: "category" },
            xaxis: { type: "category" }, height: Math.max(420, 16 * hm.perts.length + 120) },
      { responsive: true, displaylogo: false });
      $("heatmap").dataset.ready = "1";
      $("heatmap").dataset.top = hm.perts.length ? hm.perts[0] : "";
    } catch (e) { $("heatmap").textContent = e.message; $("heatmap").dataset.ready = "1"; }
    try {
      const pcl = await cmap.api("GET", `${base}/results?query=${q}&level=pcl_summary&limit=20`);
      cmap.table($("pcl"), pcl.items, null);
    } catch (e) { $("pcl").innerHTML = `<tr><td>${cmap.esc(e.message)}</td></tr>`; }
    await detail();
  }

  function params() {
    let p = `query=${state.query}&level=${state.level}`;
    if (state.q) p += "&q=" + encodeURIComponent(state.q);
    if (state.sort) p += "&sort=" + encodeURIComponent(state.sort) + "&descending=" + state.desc;
    return p;
  }

  async function detail() {
    $("dl-tsv").href = `${base}/results.tsv?` + params();
    try {
      const r = await cmap.api("GET", `${base}/results?${params()}&limit=${state.limit}&offset=${state.offset}`);
      $("detail-count").textContent = `${r.total ? r.offset + 1 : 0}–${r.offset + r.items.length} of ${r.total}`;
      cmap.table($("detail"), r.items, null, { col: state.sort, desc: state.desc }, col => {
        if (state.sort === col) state.desc = !state.desc; else { state.sort = col; state.desc = true; }
        state.offset = 0; detail();
      });
      $("detail").dataset.total = r.total;
    } catch (e) { $("detail").innerHTML = `<tr><td>${cmap.esc(e.message)}</td></tr>`; }
  }

  let t = null;
  $("filter").addEventListener("input", () => { clearTimeout(t); t = setTimeout(() => { state.q = $("filter").value; state.offset = 0; detail(); }, 250); });
  $("level").addEventListener("change", () => { state.level = $("level").value; state.sort = null; state.offset = 0; detail(); });
  $("query").addEventListener("change", () => { state.query = +$("query").value; state.offset = 0; render(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); detail(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; detail(); });
  $("cancel").addEventListener("click", async () => {
    try { await cmap.api("DELETE", base); } catch (e) { $("error").textContent = e.message; }
  });
  $("retry").addEventListener("click", async () => {
    try { await cmap.api("POST", base + "/retry"); $("retry").hidden = true; poll(); }
    catch (e) { $("error").textContent = e.message; }
  });
  poll();
})();
