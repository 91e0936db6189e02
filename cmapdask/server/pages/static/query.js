"use strict";
(function () {
  const $ = id => document.getElementById(id);
  let timer = null;
  function token() { const t = $("token"); return t && t.value ? { Authorization: "Bearer " + t.value } : {}; }
  async function check() {
    const up = cmap.genes($("up").value), down = cmap.genes($("down").value);
    $("up-count").textContent = up.length ? `(${up.length})` : "";
    $("down-count").textContent = down.length ? `(${down.length})` : "";
    if (!up.length && !down.length) { $("check").innerHTML = ""; return; }
    try {
      const r = await cmap.api("POST", "/api/v1/genes/check", { up, down, space: $("space").value });
      const lines = r.messages.map(m => `<div class="${r.ok ? "" : "bad"}">${cmap.esc(m)}</div>`);
      const unknown = r.up.unknown.concat(r.down.unknown), outside = r.up.outside.concat(r.down.outside);
      $("check").innerHTML = lines.join("") +
        `<div id="unknown" data-genes="${cmap.esc(unknown.join(" "))}"></div>` +
        `<div id="outside" data-genes="${cmap.esc(outside.join(" "))}"></div>` +
        (r.messages.length ? "" : `<div>${r.up.used.length} up and ${r.down.used.length} down genes in the ${cmap.esc(r.space)} space</div>`);
    } catch (e) { $("check").innerHTML = `<div class="bad">${cmap.esc(e.message)}</div>`; }
  }
  function later() { clearTimeout(timer); timer = setTimeout(check, 250); }
  ["up", "down"].forEach(id => $(id).addEventListener("input", later));
  $("space").addEventListener("change", check);
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
      }, token());
      window.location.href = "/jobs/" + encodeURIComponent(job.id);
    } catch (e) { $("error").textContent = e.message; }
  });
  $("upload").addEventListener("click", async () => {
    $("error").textContent = "";
    const fd = new FormData();
    if ($("up-file").files[0]) fd.append("up", $("up-file").files[0]);
    if ($("down-file").files[0]) fd.append("down", $("down-file").files[0]);
    fd.append("space", $("space").value);
    try {
      const job = await cmap.api("POST", "/api/v1/queries/files", fd, token());
      window.location.href = "/jobs/" + encodeURIComponent(job.id);
    } catch (e) { $("error").textContent = e.message; }
  });
})();
