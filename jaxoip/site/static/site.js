// jaxoip's result sites: sort the overview's table by a column, filter its rows. No dependencies.
"use strict";
(function () {
  const table = document.getElementById("maps");
  if (!table) return;
  const body = table.tBodies[0];
  const heads = Array.from(table.querySelectorAll("tr.names th"));
  const inputs = Array.from(table.querySelectorAll("tr.filters input"));
  const shown = document.getElementById("shown");

  function key(row, col) {
    const cell = row.cells[col];
    return cell ? cell.getAttribute("data-key") ?? cell.textContent : "";
  }
  function compare(a, b) {
    const x = parseFloat(a), y = parseFloat(b);
    const nx = a !== "" && !isNaN(x), ny = b !== "" && !isNaN(y);
    if (nx && ny) return x - y;
    if (nx !== ny) return nx ? -1 : 1; // Numbers before text and empty cells.
    return a.localeCompare(b);
  }
  heads.forEach(function (th, col) {
    if (th.classList.contains("nosort")) return;
    th.addEventListener("click", function () {
      const down = th.getAttribute("aria-sort") === "ascending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      const rows = Array.from(body.rows);
      rows.sort(function (r, s) {
        const c = compare(key(r, col), key(s, col));
        return down ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });

  // A filter is a number comparison (">0.5", "<=2", "=1", "!=0") or text the cell must contain.
  function test(filter, row, col) {
    const f = filter.trim();
    if (!f) return true;
    const m = f.match(/^(<=|>=|!=|<|>|=)\s*(-?[0-9.eE+-]+)$/);
    const k = key(row, col);
    if (m) {
      const v = parseFloat(k), t = parseFloat(m[2]);
      if (k === "" || isNaN(v)) return false;
      return { "<": v < t, ">": v > t, "<=": v <= t, ">=": v >= t, "=": v === t, "!=": v !== t }[m[1]];
    }
    return row.cells[col].textContent.toLowerCase().includes(f.toLowerCase());
  }
  function apply() {
    let n = 0;
    Array.from(body.rows).forEach(function (row) {
      const ok = inputs.every(function (inp) { return test(inp.value, row, parseInt(inp.dataset.col, 10)); });
      row.hidden = !ok;
      if (ok) n += 1;
    });
    if (shown) shown.textContent = n + " of " + body.rows.length + " maps shown";
  }
  inputs.forEach(function (inp) { inp.addEventListener("input", apply); });
  const unfold = document.getElementById("unfold");
  if (unfold) {
    unfold.addEventListener("click", function () {
      const folded = table.classList.toggle("folded");
      unfold.setAttribute("aria-pressed", String(!folded));
    });
  }
  document.querySelectorAll(".presets button[data-set]").forEach(function (b) {
    b.addEventListener("click", function () {
      const set = JSON.parse(b.dataset.set);
      inputs.forEach(function (inp) { inp.value = set[inp.dataset.name] ?? ""; });
      apply();
    });
  });
  apply();
})();
