// report.html: draws the page from the JSON block (#data). No library, no
// network. Heatmaps follow plotly's px.imshow(color_continuous_scale="RdBu",
// color_continuous_midpoint=0): blue positive, layer 0 at the top.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const root = document.getElementById("report");
  const tip = document.getElementById("tip");
  const SVG = "http://www.w3.org/2000/svg";
  // plotly.colors.sequential.RdBu, lowest value (red) to highest (blue).
  const RDBU = [[103, 0, 31], [178, 24, 43], [214, 96, 77], [244, 165, 130], [253, 219, 199], [247, 247, 247],
    [209, 229, 240], [146, 197, 222], [67, 147, 195], [33, 102, 172], [5, 48, 97]];
  const SERIES = ["#636efa", "#ef553b", "#00cc96"];

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // About 4 significant digits; exponent form when tiny or huge; NaN for null.
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "NaN";
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a < 1e-3 || a >= 1e5) return v.toExponential(3);
    return String(Number(v.toPrecision(4)));
  }
  function tick(v) {
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a < 1e-3 || a >= 1e5) return String(Number(v.toPrecision(2)).toExponential());
    return String(Number(v.toPrecision(3)));
  }
  function colour(v, m) {
    if (v === null || !isFinite(v)) return "rgb(150,150,150)";
    const t = Math.min(1, Math.max(0, (v / m + 1) / 2)) * (RDBU.length - 1);
    const i = Math.min(Math.floor(t), RDBU.length - 2), f = t - i;
    const c = RDBU[i].map((a, k) => Math.round(a + (RDBU[i + 1][k] - a) * f));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }
  function absMax(grids) {
    let m = 0;
    for (const g of grids) for (const row of g.values) for (const v of row) if (v !== null && isFinite(v)) m = Math.max(m, Math.abs(v));
    return m > 0 ? m : 1;
  }
  // Multiples of 1, 2 or 5 times a power of ten inside [lo, hi]: the largest step giving >= want ticks.
  function niceTicks(lo, hi, want) {
    const mag = Math.pow(10, Math.floor(Math.log10(hi - lo)));
    for (const k of [10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]) {
      const step = k * mag, out = [];
      for (let i = Math.ceil(lo / step - 1e-9); i <= Math.floor(hi / step + 1e-9); i++) out.push(Number((i * step).toPrecision(12)) + 0);
      if (out.length >= want) return out;
    }
    return [lo, hi];
  }
  function showTip(text, evt) {
    tip.textContent = text;
    tip.hidden = false;
    const x = (evt && evt.clientX) || 0, y = (evt && evt.clientY) || 0;
    tip.style.left = Math.min(x + 14, window.innerWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = (y + 14) + "px";
  }
  function hideTip() { tip.hidden = true; }

  // "Layer 2, head 3: 0.1523" or "Layer 0, position 9 ' John': 0.04123".
  function cellText(g, r, c) {
    const v = g.values[r][c];
    const token = g.tokens && g.tokens.length ? g.tokens[c] : null;
    const col = token !== null ? `position ${c} '${token}'` : `${g.col_label.toLowerCase()} ${g.cols[c]}`;
    return `${g.row_label} ${g.rows[r]}, ${col}: ${fmt(v)}`;
  }

  // Grids side by side (same rows) on one colour scale with one colour bar.
  function heatmaps(grids, titled) {
    const m = absMax(grids);
    const rows = Math.max(...grids.map(g => g.rows.length));
    const cols = grids.map(g => g.cols.length);
    const total = cols.reduce((a, b) => a + b, 0);
    const cell = Math.max(6, Math.min(48, Math.floor(920 / total), Math.floor(440 / rows)));
    const tokenLen = Math.max(0, ...grids.map(g => (g.tokens || []).reduce((a, t) => Math.max(a, t.length), 0)));
    const hasTokens = grids.some(g => g.tokens && g.tokens.length);
    const top = titled ? 26 : 8;
    const below = hasTokens ? 18 + Math.min(tokenLen, 18) * 7 + 8 : 22;
    const plotH = rows * cell, left = 58;
    const height = top + plotH + below + 24;
    const s = sv("svg", { "class": "heatmap" });
    let x = 0;
    const stride = Math.max(1, Math.ceil(15 / cell));
    grids.forEach((g, k) => {
      const px = x + left, w = g.cols.length * cell;
      const panel = sv("g", { "class": "panel", "data-grid": g.name, "data-panel": k });
      if (titled) panel.append(sv("text", { x: px + w / 2, y: 16, "text-anchor": "middle", "class": "title" }, g.title));
      g.values.forEach((row, r) => row.forEach((v, c) => {
        const rect = sv("rect", { x: px + c * cell, y: top + r * cell, width: cell, height: cell, fill: colour(v, m),
          "class": "cell", "data-grid": g.name, "data-panel": k, "data-row": r, "data-col": c,
          "data-value": v === null ? "NaN" : String(v) });
        rect.addEventListener("mouseover", e => showTip(cellText(g, r, c), e));
        rect.addEventListener("mousemove", e => showTip(cellText(g, r, c), e));
        rect.addEventListener("mouseout", hideTip);
        panel.append(rect);
      }));
      panel.append(sv("rect", { x: px - 0.5, y: top - 0.5, width: w + 1, height: plotH + 1, fill: "none", stroke: "#b4b4b4" }));
      g.rows.forEach((name, r) => {
        if (r % stride === 0) panel.append(sv("text", { x: px - 6, y: top + r * cell + cell / 2 + 4, "text-anchor": "end" }, name));
      });
      const ly = top + plotH / 2;
      panel.append(sv("text", { x: x + 14, y: ly, "text-anchor": "middle", transform: `rotate(-90 ${x + 14} ${ly})`, "class": "axis" }, g.row_label));
      const hasTok = g.tokens && g.tokens.length;
      g.cols.forEach((name, c) => {
        if (c % stride !== 0) return;
        const cx = px + c * cell + cell / 2;
        panel.append(sv("text", { x: cx, y: top + plotH + 14, "text-anchor": "middle" }, hasTok ? c : name));
        if (hasTok) {
          const ty = top + plotH + 22, t = g.tokens[c].length > 18 ? g.tokens[c].slice(0, 17) + "…" : g.tokens[c];
          panel.append(sv("text", { x: cx + 4, y: ty, "text-anchor": "end", transform: `rotate(-90 ${cx + 4} ${ty})` }, t));
        }
      });
      panel.append(sv("text", { x: px + w / 2, y: height - 6, "text-anchor": "middle", "class": "axis" }, g.col_label));
      s.append(panel);
      x = px + w + 24;
    });
    // The colour bar: a gradient through RdBu's stops, +m at the top.
    const id = "bar" + Math.random().toString(36).slice(2);
    const grad = sv("linearGradient", { id: id, x1: 0, y1: 1, x2: 0, y2: 0 });
    RDBU.forEach((c, i) => grad.append(sv("stop", { offset: i / (RDBU.length - 1), "stop-color": `rgb(${c})` })));
    const defs = sv("defs");
    defs.append(grad);
    s.append(defs);
    const bx = x - 8, barH = Math.max(plotH, 60);
    s.append(sv("rect", { x: bx, y: top, width: 14, height: barH, fill: `url(#${id})`, stroke: "#b4b4b4", "class": "colour-bar" }));
    const want = barH >= 160 ? 5 : 3;
    for (const v of niceTicks(-m, m, want)) {
      const ty = top + (m - v) / (2 * m) * barH;
      s.append(sv("text", { x: bx + 21, y: ty + 4, "class": "bar-tick" }, tick(v)));
    }
    const vl = grids[0].value_label, vx = bx + 70, vy = top + barH / 2;
    s.append(sv("text", { x: vx, y: vy, "text-anchor": "middle", transform: `rotate(-90 ${vx} ${vy})`, "class": "axis" }, vl));
    s.setAttribute("width", vx + 10);
    s.setAttribute("height", Math.max(height, top + barH + 8));
    return el("div", { "class": "figure" }, s);
  }

  // Estimate (x) against exact (y), one circle per cell, y = x dotted.
  function scatter(kind) {
    const P = 420, L = 56, T = 10, B = 44;
    const series = kind.estimates.map((e, k) => {
      const est = kind.panels[k], exact = kind.panels[kind.panels.length - 1];
      const pts = [];
      est.values.forEach((row, r) => row.forEach((v, c) => {
        const y = exact.values[r][c];
        if (v !== null && y !== null && isFinite(v) && isFinite(y)) pts.push({ x: v, y: y, r: r, c: c });
      }));
      return { e: e, pts: pts, grid: exact, colour: SERIES[k % SERIES.length] };
    });
    let lo = 0, hi = 0;
    for (const s of series) for (const p of s.pts) { lo = Math.min(lo, p.x, p.y); hi = Math.max(hi, p.x, p.y); }
    const span = hi > lo ? hi - lo : 1;
    lo -= 0.06 * span; hi += 0.06 * span;
    const sx = v => L + (v - lo) / (hi - lo) * P, sy = v => T + P - (v - lo) / (hi - lo) * P;
    const s = sv("svg", { width: L + P + 20, height: T + P + B + series.length * 18, "class": "scatter", "data-grid": kind.name });
    for (const v of niceTicks(lo, hi, 4)) {
      s.append(sv("line", { x1: sx(v), x2: sx(v), y1: T, y2: T + P, stroke: v === 0 ? "#d7d7d7" : "#eeeeee" }));
      s.append(sv("line", { x1: L, x2: L + P, y1: sy(v), y2: sy(v), stroke: v === 0 ? "#d7d7d7" : "#eeeeee" }));
      s.append(sv("text", { x: sx(v), y: T + P + 16, "text-anchor": "middle" }, tick(v)));
      s.append(sv("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, tick(v)));
    }
    s.append(sv("line", { x1: sx(lo), y1: sy(lo), x2: sx(hi), y2: sy(hi), stroke: "#969696", "stroke-dasharray": "4 3" }));
    s.append(sv("rect", { x: L, y: T, width: P, height: P, fill: "none", stroke: "#b4b4b4" }));
    s.append(sv("text", { x: L + P / 2, y: T + P + 34, "text-anchor": "middle", "class": "axis" }, "Estimate"));
    const ly = T + P / 2;
    s.append(sv("text", { x: 14, y: ly, "text-anchor": "middle", transform: `rotate(-90 14 ${ly})`, "class": "axis" }, "Exact"));
    series.forEach((se, k) => {
      for (const p of se.pts) {
        const c = sv("circle", { cx: sx(p.x), cy: sy(p.y), r: 5, fill: se.colour, "fill-opacity": 0.25, stroke: se.colour, "class": "point" });
        const g = se.grid, token = g.tokens && g.tokens.length ? ` '${g.tokens[p.c]}'` : "";
        const what = `${se.e.label}: ${g.row_label} ${g.rows[p.r]}, ${g.tokens && g.tokens.length ? "position" : g.col_label.toLowerCase()} ${g.cols.length ? p.c : ""}${token}: estimate ${fmt(p.x)}, exact ${fmt(p.y)}`;
        c.addEventListener("mouseover", e => showTip(what, e));
        c.addEventListener("mouseout", hideTip);
        s.append(c);
      }
      const y = T + P + B + k * 18 + 6;
      s.append(sv("circle", { cx: L + 6, cy: y, r: 5, fill: se.colour, "fill-opacity": 0.25, stroke: se.colour }));
      const a = se.e.agreement;
      s.append(sv("text", { x: L + 18, y: y + 4 }, `${se.e.label} (Pearson ${a.pearson === null ? "n/a" : a.pearson.toFixed(3)}, Spearman ${a.spearman === null ? "n/a" : a.spearman.toFixed(3)})`));
    });
    return el("div", { "class": "figure" }, s);
  }

  function table(head, rows, numeric) {
    const t = el("table");
    t.append(el("tr", {}, ...head.map(h => el("th", {}, h))));
    for (const r of rows) t.append(el("tr", {}, ...r.map((v, i) => el("td", numeric && numeric[i] ? { "class": "num" } : {}, v))));
    return t;
  }
  function section(title, ...children) {
    root.append(el("h2", {}, title), ...children);
  }
  function seconds(t) {
    return table(["load", "rewrite", "session", "run"], [[t.load, t.rewrite, t.session, t.run].map(v => v.toFixed(3) + " s")], [1, 1, 1, 1]);
  }

  // The Edges section: the circuit (the top K edges, K from the slider) drawn
  // where the Rust layout placed it, the faithfulness curve, and the edge table
  // (one page of rows in the DOM at a time, so 32,000 edges stay responsive).
  function renderEdges(E) {
    section("Edges");
    root.append(el("p", { "class": "note" }, `${E.n_edges} edges scored by ${E.method}; metric: normalised ${E.metric}. ` +
      "An edge's score is the first-order change of the metric when that edge alone carries its clean value instead of its corrupted one."));
    // Ranks by |score|, ties in table order: the order the circuit figure keeps edges in.
    const rows = E.table.map((t, i) => ({ i: i, from: t[0], to: t[1], score: t[2], rank: 0 }));
    const ranked = rows.slice().sort((a, b) => Math.abs(b.score) - Math.abs(a.score) || a.i - b.i);
    ranked.forEach((r, n) => { r.rank = n + 1; });
    const L = E.layout;
    let k = E.k;

    const slider = el("input", { type: "range", id: "edge-k", min: 1, max: E.k_max, value: E.k, step: 1 });
    const kText = el("output", { id: "edge-k-value", "for": "edge-k" }, String(E.k));
    const caption = el("span", { "class": "note", id: "circuit-caption" });
    const holder = el("div", { "class": "figure circuit", id: "circuit" });
    root.append(el("p", { "class": "controls" }, el("label", { "for": "edge-k" }, "Circuit: the top K edges by |score|, K = "),
      kText, " ", slider, " ", caption), holder);
    root.append(el("p", { "class": "note" }, "Blue edges have positive scores (patching the edge to its clean value raises the metric), red negative; " +
      "width and opacity grow with |score|. Heads read at ports q, k, v on their lower edge and write from the top; the input is at the bottom, the logits at the top. " +
      `Boxes keep their places for every K up to ${E.k_max}.`));
    const faith = E.faithfulness ? new Map(E.faithfulness.points.map(p => [p[0], p[1]])) : new Map();

    function drawCircuit() {
      const edges = L.edges.slice(0, k);
      const used = new Set();
      L.boxes.forEach((b, i) => { if (b.kind === "input" || b.kind === "logits") used.add(i); });
      for (const e of edges) { used.add(e.a); used.add(e.b); }
      const s = sv("svg", { width: L.width, height: L.height, "class": "circuit", "data-k": k });
      for (const band of L.bands) {
        if (band.layer % 2 === 0) s.append(sv("rect", { x: 0, y: band.top, width: L.width, height: band.bottom - band.top, fill: "#f3f6fa" }));
        s.append(sv("text", { x: L.gutter, y: (band.top + band.bottom) / 2 + 4, "text-anchor": "end", "class": "band" }, `layer ${band.layer}`));
      }
      // Weakest first, so the strongest are on top; boxes over the edges.
      for (let j = edges.length - 1; j >= 0; j--) {
        const e = edges[j];
        const p = sv("path", { d: e.d, fill: "none", stroke: e.colour, "stroke-width": e.width, "stroke-opacity": e.opacity,
          "class": "edge", "data-from": e.from, "data-to": e.to, "data-score": String(e.score), "data-a": e.a, "data-b": e.b });
        const what = `${e.from} → ${e.to}: ${fmt(e.score)} (rank ${j + 1})`;
        p.addEventListener("mouseover", ev => showTip(what, ev));
        p.addEventListener("mousemove", ev => showTip(what, ev));
        p.addEventListener("mouseout", hideTip);
        s.append(p);
      }
      L.boxes.forEach((b, i) => {
        if (!used.has(i)) return;
        const g = sv("g", { "class": "node", "data-name": b.label, "data-box": i });
        // Hovering a box brings out its edges and fades the rest (dense circuits).
        const mine = edges.filter(e => e.a === i || e.b === i);
        const what = `${b.label}: ${mine.filter(e => e.a === i).length} edges out, ${mine.filter(e => e.b === i).length} in`;
        g.addEventListener("mouseover", ev => {
          s.classList.add("focus");
          for (const p of s.querySelectorAll("path.edge")) if (Number(p.dataset.a) === i || Number(p.dataset.b) === i) p.classList.add("hi");
          showTip(what, ev);
        });
        g.addEventListener("mouseout", () => {
          s.classList.remove("focus");
          for (const p of s.querySelectorAll("path.edge.hi")) p.classList.remove("hi");
          hideTip();
        });
        const end = b.kind === "input" || b.kind === "logits";
        g.append(sv("rect", { x: b.x, y: b.y, width: b.w, height: b.h, fill: end ? "#eaeef4" : "#ffffff", stroke: "#6a7f9f" }));
        const ported = b.ports.some(p => p.label);
        g.append(sv("text", { x: b.x + b.w / 2, y: ported ? b.y + 14 : b.y + b.h / 2 + 4, "text-anchor": "middle", "class": "node-label" }, b.label));
        for (const p of b.ports) {
          if (!p.label) continue;
          const [mw, mh] = L.port_mark;
          g.append(sv("rect", { x: p.x - mw / 2, y: p.y - mh, width: mw, height: mh, fill: "#2a3f5f" }));
          g.append(sv("text", { x: p.x, y: p.y - mh - 2, "text-anchor": "middle", "class": "port" }, p.label));
        }
        s.append(g);
      });
      holder.replaceChildren(s);
      kText.textContent = String(k);
      const f = faith.get(k);
      caption.textContent = `of ${E.n_edges}${f === undefined ? "" : `; this circuit restores ${fmt(f)} of the metric gap`}`;
    }

    if (E.faithfulness) {
      const fig = el("div", { "class": "figure", id: "faithfulness" });
      fig.innerHTML = E.faithfulness.svg;
      root.append(el("h3", {}, "Faithfulness"), fig);
    }

    // The table: sort by a column (click its header; again to reverse), filter by node names.
    const PAGE = 100;
    const state = { key: "rank", dir: 1, terms: [], page: 0 };
    const collator = new Intl.Collator("en", { numeric: true });
    const compare = {
      rank: (a, b) => a.rank - b.rank,
      from: (a, b) => collator.compare(a.from, b.from) || a.rank - b.rank,
      to: (a, b) => collator.compare(a.to, b.to) || a.rank - b.rank,
      score: (a, b) => a.score - b.score || a.rank - b.rank,
    };
    const firstDir = { rank: 1, from: 1, to: 1, score: -1 };
    // A term matches a name that is the term or starts with it and a dot (a9: layer 9's
    // heads; a9.h9: the head and its q/k/v), or, starting with a dot, ends with it (.q).
    const matches = (term, name) => term.startsWith(".") ? name.endsWith(term) : name === term || name.startsWith(term + ".");
    // Under grouped-query attention key/value head g's readers are a{l}.kv{g}.k|v; earlier
    // versions named them a{l}.h{g}.k|v, and a term of that form still finds them.
    const grouped = E.kv_heads < E.heads;
    const todays = term => {
      const m = grouped ? /^a(\d+)\.h(\d+)\.([kv])$/.exec(term) : null;
      return m && Number(m[2]) < E.kv_heads ? `a${m[1]}.kv${m[2]}.${m[3]}` : term;
    };
    let view = ranked;
    const filter = el("input", { type: "search", id: "edge-filter", placeholder: "a9.h9  m3  logits  .q", size: 30 });
    const info = el("span", { id: "edge-page-info", "class": "note" });
    const prev = el("button", { id: "edge-prev", type: "button" }, "‹ previous");
    const next = el("button", { id: "edge-next", type: "button" }, "next ›");
    const head = el("tr", {}, ...["rank", "from", "to", "score"].map(key => el("th", { "data-key": key, "class": "sortable" }, key)));
    const tbody = el("tbody");
    const tableEl = el("table", { id: "edge-table", "class": "edges" }, el("thead", {}, head), tbody);
    function drawTable() {
      const n = view.length, pages = Math.max(1, Math.ceil(n / PAGE));
      state.page = Math.min(state.page, pages - 1);
      const lo = state.page * PAGE, hi = Math.min(n, lo + PAGE);
      tbody.replaceChildren(...view.slice(lo, hi).map(r => el("tr", Object.assign({ "data-rank": r.rank, "data-score": String(r.score) },
        r.rank <= k ? { "class": "in-circuit" } : {}), el("td", { "class": "num" }, r.rank), el("td", {}, r.from), el("td", {}, r.to),
        el("td", { "class": r.score < 0 ? "num neg" : "num pos" }, fmt(r.score)))));
      tableEl.dataset.matches = String(n);
      info.textContent = n ? `rows ${lo + 1}–${hi} of ${n}${n < rows.length ? ` matching (of ${rows.length})` : ""}` : `no edge matches (of ${rows.length})`;
      prev.disabled = state.page === 0;
      next.disabled = state.page >= pages - 1;
      for (const th of head.children) th.textContent = th.dataset.key + (th.dataset.key === state.key ? (state.dir > 0 ? " ▲" : " ▼") : "");
    }
    function resort() {
      const base = state.terms.length ? rows.filter(r => state.terms.every(t => matches(t, r.from) || matches(t, r.to))) : rows;
      const cmp = compare[state.key], d = state.dir;
      view = base.slice().sort((a, b) => d * cmp(a, b));
      state.page = 0;
      drawTable();
    }
    for (const th of head.children) {
      th.addEventListener("click", () => {
        const key = th.dataset.key;
        state.dir = key === state.key ? -state.dir : firstDir[key];
        state.key = key;
        resort();
      });
    }
    filter.addEventListener("input", () => { state.terms = filter.value.trim().split(/\s+/).filter(t => t).map(todays); resort(); });
    prev.addEventListener("click", () => { state.page--; drawTable(); });
    next.addEventListener("click", () => { state.page++; drawTable(); });
    slider.addEventListener("input", () => { k = Number(slider.value); drawCircuit(); drawTable(); });
    const partial = rows.length < E.n_edges ? [el("p", { "class": "note", id: "edge-table-partial" },
      `The table holds the ${rows.length} edges of largest |score| of all ${E.n_edges}; edges.csv has every one.`)] : [];
    root.append(el("h3", {}, "Edge scores"), ...partial, el("p", { "class": "controls" }, el("label", { "for": "edge-filter" }, "Filter: "), filter, " ", prev, " ", next, " ", info),
      el("p", { "class": "note" }, `Click a column to sort by it, again to reverse. A filter term matches a node or its parts (a9: layer 9's heads; a9.h9: that head and its q, k, v${grouped ? "; a9.kv1: key/value head 1's k and v" : ""}; .q: every query input); every term must match the edge's from or to. Rows in the circuit are shaded.`),
      tableEl);
    drawCircuit();
    drawTable();
  }

  function renderJob() {
    root.append(el("h1", {}, data.title), el("p", { "class": "subtitle" }, data.subtitle));
    if (data.warnings.length) {
      root.append(el("div", { "class": "warnings", id: "warnings" }, el("h2", {}, "Warnings"),
        el("ul", {}, ...data.warnings.map(w => el("li", {}, w)))));
    }
    section("Baselines", table(["", "logit diff", "normalised metric"], [
      ["clean", fmt(data.clean_logit_diff), "1"],
      ["corrupted", fmt(data.corrupted_logit_diff), "0"],
    ], [0, 1, 1]), ...(data.clean_accuracy === null ? [] : [el("p", {},
      `Clean prompts answered correctly: ${Math.round(100 * data.clean_accuracy)}%`)]), el("p", { "class": "note" },
      `metric: (${data.metric} - corrupted) / (clean - corrupted); a cell is the first-order change of that metric when its activation is patched from the corrupted to the clean run.`));

    const figures = el("div", { "class": "figures", id: "grids" });
    // Each grid titled above its figure; they sit side by side on their own colour scales (said below).
    const draw = grids => {
      figures.replaceChildren(...grids.map(g => el("div", { "class": "grid" }, el("h3", {}, g.title), heatmaps([g], false))));
    };
    const gridsTitle = el("h2", {}, "Grids");
    root.append(gridsTitle);
    if (data.per_pair.length) {
      const sel = el("select", { id: "pair-select" }, el("option", { value: "all" }, `All ${data.prompts.length} pairs`));
      data.per_pair.forEach((p, i) => {
        const prompt = data.prompts[p.index] ? data.prompts[p.index].clean : "";
        sel.append(el("option", { value: i }, `Pair ${p.index}: ${prompt}`));
      });
      sel.addEventListener("change", () => {
        if (sel.value === "all") return draw(data.grids);
        const p = data.per_pair[Number(sel.value)];
        draw(data.grids.map(g => Object.assign({}, g, {
          values: p[g.name],
          // The token labels are the first prompt's; other pairs show positions only.
          tokens: p.index === 0 ? g.tokens : [],
          col_label: p.index === 0 || !g.tokens.length ? g.col_label : "Token position",
        })));
      });
      root.append(el("p", {}, el("label", { "for": "pair-select" }, "Show: "), sel,
        el("span", { "class": "note" }, " (one pair's share of the grids, in the same normalised units)")));
    }
    root.append(figures);
    if (data.grids.length > 1) {
      root.append(el("p", { "class": "note", id: "scales" },
        "Each grid has its own colour scale (full colour at its own largest |value|): compare colours within a grid, and values across grids."));
    }
    draw(data.grids);
    if (data.edges) renderEdges(data.edges);
    if (data.diagnostic) renderDiagnostic(data.diagnostic);

    const rows = data.prompts.map((p, i) => {
      const pm = data.pair_metrics[i];
      return [i, p.clean, p.corrupted, p.correct, p.incorrect, pm ? fmt(pm[0]) : "", pm ? fmt(pm[1]) : ""];
    });
    section("Prompts", table(["#", "clean", "corrupted", "correct", "incorrect", "clean logit diff", "corrupted logit diff"], rows, [1, 0, 0, 0, 0, 1, 1]));

    section("Model and options", table(["", ""], [
      ["model", data.model], ["method", data.method], ["metric", data.metric], ["hook", data.hook],
      ["runtime", `${data.runtime} (${data.runtime_calls} call${data.runtime_calls === 1 ? "" : "s"}, ${data.batches_resumed} batches resumed)`],
      ["prompt pairs", `${data.prompts.length} in ${data.n_batches} batch(es) of up to ${data.batch_size}`],
      ["sequence length", data.seq_len], ["heads", data.n_heads],
    ]));
    root.append(el("h3", {}, "Hooks"), table(["layer", "tensor", "node"], data.hooks.map(h => [h.layer, el("code", {}, h.tensor), el("code", {}, h.node)])));
    section("Timings", seconds(data.seconds));
  }

  // Recall of exact patching's top k against nodes verified in each estimate's order.
  function renderRecall(R) {
    root.append(el("h3", {}, "Recall of exact patching's top nodes"), el("p", { "class": "note" },
      `Verify the ${R.nodes} nodes by exact patching in the order of |estimate|, largest first: the curve is the fraction of exact patching's top k ` +
      "(largest |effect|) found so far. The table gives the nodes verified until all of the top k are found (k at best)."));
    if (R.svg) {
      const fig = el("div", { "class": "figure recall" });
      fig.innerHTML = R.svg;
      root.append(fig);
    }
    root.append(table(["estimate", ...R.ks.map(k => `top ${k}`)], R.methods.map(m => [m.label, ...m.full_recall_at.map(String)]),
      [0, ...R.ks.map(() => 1)]));
  }

  // run --diagnostic: random subsets of the heads outside the top K, each patched jointly.
  function renderDiagnostic(D) {
    section("Diagnostic: what the top heads missed");
    root.append(el("p", { "class": "note", id: "diagnostic-bound" }, D.bound));
    const top = D.top.map(h => `L${h.layer} H${h.head}`).join(", ");
    root.append(el("p", { "class": "note" }, `Top ${D.top_k} by |${D.ranked_by}| (left out of the subsets): ${top}. ` +
      `${D.subsets.length} subsets of ${D.subset_size} of the other ${D.outside} heads, seed ${D.seed}.`));
    root.append(table(["subset", "heads", "exact effect", "sum of estimates"], D.subsets.map((s, i) => [
      i === D.max_subset ? `${i} (largest)` : String(i), s.heads.map(h => `L${h[0]} H${h[1]}`).join(", "), fmt(s.effect), fmt(s.estimate_sum),
    ]), [1, 0, 1, 1]));
  }

  function renderCompare() {
    root.append(el("h1", {}, data.title), el("p", { "class": "subtitle" }, data.subtitle));
    section("Baselines", table(["", "logit diff"], [["clean", fmt(data.clean_logit_diff)], ["corrupted", fmt(data.corrupted_logit_diff)]], [0, 1]));
    for (const kind of data.kinds) {
      section(kind.name === "heads" ? "Heads" : "Positions");
      root.append(el("div", { "class": "figures" }, heatmaps(kind.panels, true), scatter(kind)));
      root.append(table(["estimate", "Pearson", "Spearman", "mean |error|", "max |error|"], kind.estimates.map(e => {
        const a = e.agreement;
        return [e.label, a.pearson === null ? "n/a" : a.pearson.toFixed(3), a.spearman === null ? "n/a" : a.spearman.toFixed(3), fmt(a.mean_abs_error), fmt(a.max_abs_error)];
      }), [0, 1, 1, 1, 1]));
      const exact = kind.panels[kind.panels.length - 1];
      for (const e of kind.estimates) {
        root.append(el("h3", {}, `Largest misses: ${e.label}`), table(["layer", kind.name === "heads" ? "head" : "position", "estimate", "exact", "error"],
          e.agreement.largest_misses.map(m => [m.layer, m.token === null ? m.index : `${m.index} '${m.token}'`, fmt(m.estimate), fmt(m.exact), fmt(m.estimate - m.exact)]), [1, 0, 1, 1, 1]));
      }
      void exact;
      if (kind.recall) renderRecall(kind.recall);
    }
    section("Methods", table(["method", "time", "runtime calls", "report"], data.methods.map(m => [m.label,
      (m.seconds.load + m.seconds.rewrite + m.seconds.session + m.seconds.run).toFixed(2) + " s", m.runtime_calls,
      el("a", { href: `${m.key}/report.html` }, `${m.key}/report.html`)]), [0, 1, 1, 0]));
    section("Prompts", table(["#", "clean", "corrupted", "correct", "incorrect"], data.prompts.map((p, i) => [i, p.clean, p.corrupted, p.correct, p.incorrect]), [1]));
  }

  // With #selfcheck in the URL: hover the largest cell of every grid and the
  // first scatter point, and write what the tooltip said into #selfcheck (the
  // browser test reads it from the dumped DOM).
  function selfCheck() {
    const out = [];
    const seen = new Set();
    for (const panel of document.querySelectorAll("g.panel")) {
      const key = panel.getAttribute("data-grid") + "/" + panel.getAttribute("data-panel");
      if (seen.has(key)) continue;
      seen.add(key);
      const cells = [...panel.querySelectorAll("rect.cell")];
      out.push(`cells ${key} ${cells.length}`);
      let best = cells[0];
      for (const c of cells) if (Math.abs(Number(c.dataset.value)) > Math.abs(Number(best.dataset.value))) best = c;
      best.dispatchEvent(new MouseEvent("mouseover", { bubbles: true, clientX: 10, clientY: 10 }));
      out.push(`hover ${key} ${best.dataset.row} ${best.dataset.col} ${tip.hidden ? "(hidden)" : tip.textContent}`);
      best.dispatchEvent(new MouseEvent("mouseout", { bubbles: true }));
    }
    const point = document.querySelector("circle.point");
    if (point) {
      point.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
      out.push(`point ${tip.textContent}`);
      point.dispatchEvent(new MouseEvent("mouseout", { bubbles: true }));
    }
    out.push(`tip hidden after mouseout: ${tip.hidden}`);
    // The pair selector: the second pair's heads grid, then back to all pairs.
    const sel = document.getElementById("pair-select");
    if (sel && data.per_pair.length > 1) {
      sel.value = "1";
      sel.dispatchEvent(new Event("change"));
      const cells = [...document.querySelectorAll('rect.cell[data-grid="heads"]')].map(c => c.dataset.value);
      out.push(`pair ${data.per_pair[1].index} heads ${cells.join(",")}`);
      sel.value = "all";
      sel.dispatchEvent(new Event("change"));
    }
    if (data.edges) edgesSelfCheck(out);
    document.getElementById("selfcheck").textContent = out.join("\n");
  }

  // The edge table's sorting, filter and paging, and the slider: what each shows.
  function edgesSelfCheck(out) {
    const table = document.getElementById("edge-table");
    const rows = () => [...table.querySelectorAll("tbody tr")];
    const scores = () => rows().slice(0, 5).map(r => r.dataset.score).join(",");
    const th = key => table.querySelector(`th[data-key="${key}"]`);
    out.push(`edges rows ${rows().length} of ${table.dataset.matches}`);
    out.push(`edges default ${scores()}`);
    let t0 = performance.now();
    th("score").click();
    const sortMs = performance.now() - t0;
    out.push(`edges score-desc ${scores()}`);
    th("score").click();
    out.push(`edges score-asc ${scores()}`);
    th("from").click();
    out.push(`edges from-asc ${rows().slice(0, 3).map(r => r.children[1].textContent).join(",")}`);
    th("rank").click();
    document.getElementById("edge-next").click();
    out.push(`edges page-2 ranks ${rows()[0].dataset.rank}-${rows()[rows().length - 1].dataset.rank}`);
    const filter = document.getElementById("edge-filter");
    for (const f of ["logits", "a1.h2 logits", ".q", "a1.h0.k", "a1.kv0.k"]) {
      filter.value = f;
      filter.dispatchEvent(new Event("input"));
      out.push(`edges filter ${f}: ${table.dataset.matches}`);
    }
    filter.value = "";
    filter.dispatchEvent(new Event("input"));
    const slider = document.getElementById("edge-k"), start = slider.value;
    let slideMs = 0;
    for (const k of [1, 10, Number(slider.max)]) {
      t0 = performance.now();
      slider.value = String(k);
      slider.dispatchEvent(new Event("input"));
      slideMs = Math.max(slideMs, performance.now() - t0);
      const nodes = [...document.querySelectorAll("#circuit g.node")].map(g => g.dataset.name).sort().join(",");
      out.push(`edges k ${k}: paths ${document.querySelectorAll("#circuit path.edge").length} marked ${table.querySelectorAll("tr.in-circuit").length} nodes ${nodes}`);
    }
    slider.value = start;
    slider.dispatchEvent(new Event("input"));
    // Hovering the strongest edge's writer box: its edges stand out, the others fade.
    const top = document.querySelector("#circuit path.edge:last-of-type");
    const box = document.querySelector(`#circuit g.node[data-box="${top.dataset.a}"]`);
    box.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    out.push(`edges hover ${box.dataset.name}: ${document.querySelectorAll("#circuit path.edge.hi").length} lit, ${tip.textContent}`);
    box.dispatchEvent(new MouseEvent("mouseout", { bubbles: true }));
    // Not asserted (timings are no test); read when judging responsiveness.
    out.push(`edges ms: sort by score ${sortMs.toFixed(1)}, slowest slider move ${slideMs.toFixed(1)}`);
  }

  document.getElementById("loading").remove();
  if (data.kind === "compare") renderCompare(); else renderJob();
  if (location.hash === "#selfcheck") selfCheck();
  document.body.setAttribute("data-ready", "true");
})();
