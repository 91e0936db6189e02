// Shared helpers of the cmapdask pages (no external scripts).
"use strict";
const cmap = {
  async api(method, url, body, headers) {
    const opts = { method, headers: Object.assign({}, headers || {}) };
    if (body instanceof FormData) opts.body = body;
    else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(url, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) throw new Error((data && data.detail) || (r.status + " " + r.statusText));
    return data;
  },
  genes(text) { return text.split(/[\s,;]+/).map(s => s.trim()).filter(Boolean); },
  esc(v) {
    return String(v === null || v === undefined ? "" : v).replace(/[&<>"']/g,
      c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  },
  fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    return String(v);
  },
  link(col, v) {
    const e = cmap.esc(v);
    if (v === null || v === undefined || v === "") return "";
    if (col === "pert_id") return `<a href="/compounds/${encodeURIComponent(v)}">${e}</a>`;
    if (col === "sig_id") return `<a href="/sigs/${encodeURIComponent(v)}">${e}</a>`;
    return e;
  },
  table(el, rows, cols, sortState, onSort) {
    if (!rows.length) { el.innerHTML = "<tr><td>no rows</td></tr>"; return; }
    cols = cols || Object.keys(rows[0]);
    let h = "<thead><tr>" + cols.map(c => {
      const cls = sortState && sortState.col === c ? ("sorted" + (sortState.desc ? "" : " asc")) : "";
      return `<th data-col="${cmap.esc(c)}" class="${cls}">${cmap.esc(c)}</th>`;
    }).join("") + "</tr></thead><tbody>";
    for (const r of rows) h += "<tr>" + cols.map(c => `<td>${cmap.link(c, typeof r[c] === "number" ? cmap.fmt(r[c]) : r[c])}</td>`).join("") + "</tr>";
    el.innerHTML = h + "</tbody>";
    if (onSort) el.querySelectorAll("th").forEach(th => th.addEventListener("click", () => onSort(th.dataset.col)));
  },
};
// forms driven by script never navigate (Enter in a field included; no inline handlers: CSP)
document.querySelectorAll("form[data-no-submit]").forEach(f => f.addEventListener("submit", e => e.preventDefault()));
