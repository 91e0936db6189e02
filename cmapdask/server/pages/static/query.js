"use strict";
(function () {
  const $ = id => document.getElementById(id);
  let timer = null;
  // CLUE's per-gene statuses (validation.GeneTable.account)
  function status(row) {
    const space = row.space === "bing" ? "BING" : row.space;
    return { unknown: "unknown", in_space: "in " + space, duplicate: "duplicate",
             outside: "measured, outside " + space }[row.status];
  }
  function geneTable(r) {
    const rows = [];
    for (const side of ["up", "down"]) {
      for (const g of r[side].genes) {
        const as = g.gene_id ? g.gene_id + (g.symbol && g.symbol !== g.given ? " (" + g.symbol + ")" : "") : "";
        rows.push(`<tr class="${g.status}" data-side="${side}" data-given="${cmap.esc(g.given)}" data-status="${g.status}">` +
          `<td>${side}</td><td>${cmap.esc(g.given)}</td><td>${cmap.esc(as)}</td><td>${cmap.esc(status(g))}</td></tr>`);
      }
    }
    return `<table id="gene-table" class="grid"><thead><tr><th>list</th><th>given</th>` +
      `<th>matched as</th><th>status</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
  }
  async function check() {
    const up = cmap.genes($("up").value), down = cmap.genes($("down").value);
    if (!up.length && !down.length) {
      $("check").innerHTML = ""; $("up-count").textContent = $("down-count").textContent = ""; return;
    }
    try {
      const r = await cmap.api("POST", "/api/v1/genes/check",
        { up, down, space: $("space").value, allow_any_size: $("any-size").checked });
      // counts are the genes that will be scored, never the invalid ones
      $("up-count").textContent = up.length ? `(${r.up.used.length} of ${up.length})` : "";
      $("down-count").textContent = down.length ? `(${r.down.used.length} of ${down.length})` : "";
      const lines = r.messages.map(m => `<div class="${r.ok ? "" : "bad"}">${cmap.esc(m)}</div>`);
      const unknown = r.up.unknown.concat(r.down.unknown), outside = r.up.outside.concat(r.down.outside);
      $("check").innerHTML = lines.join("") +
        `<div id="unknown" data-genes="${cmap.esc(unknown.join(" "))}"></div>` +
        `<div id="outside" data-genes="${cmap.esc(outside.join(" "))}"></div>` +
        (r.messages.length ? "" : `<div>${r.up.used.length} up and ${r.down.used.length} down genes in the ${cmap.esc(r.space)} space</div>`) +
        geneTable(r);
    } catch (e) { $("check").innerHTML = `<div class="bad">${cmap.esc(e.message)}</div>`; }
  }
  function later() { clearTimeout(timer); timer = setTimeout(check, 250); }
  ["up", "down"].forEach(id => $(id).addEventListener("input", later));
  $("space").addEventListener("change", check);
  $("any-size").addEventListener("change", check);
  $("submit").addEventListener("click", async () => {
    $("error").textContent = "";
    const q = { name: $("name").value || "query" };
    const up = cmap.genes($("up").value), down = cmap.genes($("down").value);
    if (up.length) q.up = up;
    if (down.length) q.down = down;
    try {
      const job = await cmap.api("POST", "/api/v1/queries", {
        queries: [q], space: $("space").value, reference: $("reference").value,
        scored: $("scored").value.trim() || "all", tau: $("tau").value,
        allow_any_size: $("any-size").checked,
      });
      window.location.href = "/jobs/" + encodeURIComponent(job.id);
    } catch (e) { $("error").textContent = e.message; }
  });
  $("upload").addEventListener("click", async () => {
    $("error").textContent = "";
    const fd = new FormData();
    if ($("up-file").files[0]) fd.append("up", $("up-file").files[0]);
    if ($("down-file").files[0]) fd.append("down", $("down-file").files[0]);
    fd.append("space", $("space").value);
    fd.append("allow_any_size", $("any-size").checked);
    try {
      const job = await cmap.api("POST", "/api/v1/queries/files", fd);
      window.location.href = "/jobs/" + encodeURIComponent(job.id);
    } catch (e) { $("error").textContent = e.message; }
  });
})();
