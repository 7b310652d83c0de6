"""The page that `attention_view.write_html` fills in: __TITLE__ (HTML-escaped) and __DATA__ (its `viewer_data` as
JSON). Inline CSS and script only: the file opens offline, fetching nothing (no fonts, scripts or images).
"""

HTML_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font: 14px/1.45 system-ui, "DejaVu Sans", sans-serif; margin: 16px; color: #1d1d1f; }
  h1 { font-size: 18px; margin: 0 0 10px; }
  h2 { font-size: 15px; margin: 18px 0 6px; }
  #controls { display: flex; flex-wrap: wrap; gap: 10px 22px; align-items: center; margin-bottom: 6px; }
  #controls input[type=range] { width: 180px; vertical-align: middle; }
  .hint { color: #666; margin: 4px 0 8px; }
  .strip { margin: 4px 0; display: flex; align-items: baseline; gap: 8px; }
  .strip-label { flex: 0 0 12em; color: #555; }
  .tok { display: inline-block; padding: 1px 4px; margin: 1px; border: 1px solid #d0d0d0; border-radius: 3px;
         white-space: pre; font-family: "DejaVu Sans Mono", monospace; cursor: default; }
  #queries .tok:hover, #queries .tok.active { outline: 2px solid #d95f02; }
  .tok.aligned { box-shadow: 0 0 0 2px #1d1d1f; }
  .tok.masked { opacity: 0.35; text-decoration: line-through; }
  #readout { min-height: 1.4em; margin: 6px 0; }
  #matrix { border-collapse: collapse; margin-top: 6px; }
  #matrix td { width: 20px; min-width: 20px; height: 20px; padding: 0; border: 1px solid #eee; }
  #matrix td.masked { background: repeating-linear-gradient(45deg, #c8c8c8 0 2px, #ffffff 2px 6px); }
  #matrix th { font-weight: normal; font-family: "DejaVu Sans Mono", monospace; white-space: pre; }
  #matrix th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; padding: 4px 0; }
  #matrix th.row { text-align: right; padding-right: 6px; cursor: default; }
  #matrix tr.active th.row { color: #d95f02; font-weight: bold; }
  #matrix tr.active td { box-shadow: inset 0 2px 0 #d95f02, inset 0 -2px 0 #d95f02; }
  #alignment tr.active td { background: #fbe3d3; }
  #alignment td, #alignment th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
  #alignment th { font-weight: normal; color: #555; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div id="controls">
  <label>Map <select id="kind"></select></label>
  <label>Layer <select id="layer"></select></label>
  <label>Head <select id="head"></select></label>
  <label>Temperature τ <input id="temperature" type="range" min="-100" max="100" step="1" value="0">
    <output id="temperature-value">1.00</output></label>
</div>
<p class="hint" id="hint"></p>
<div class="strip"><span class="strip-label" id="queries-label"></span><div id="queries"></div></div>
<div class="strip"><span class="strip-label" id="keys-label"></span><div id="keys"></div></div>
<p id="readout"></p>
<table id="matrix"></table>
<h2>Word alignment (from the cross-attention)</h2>
<table id="alignment"></table>
<script type="application/json" id="attention-data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("attention-data").textContent);
const $ = (id) => document.getElementById(id);
const KIND_NAMES = {cross: "Cross-attention", decoder_self: "Decoder self-attention",
                    encoder_self: "Encoder self-attention"};
const HINTS = {
  cross: "Rows: target tokens; columns: the source tokens each one attends to.",
  decoder_self: "Rows: target tokens; columns: the earlier target tokens. Hatched cells are masked " +
                "(a token never sees later tokens, §3.2.3): their weight is 0.",
  encoder_self: "Rows and columns: source tokens.",
};
const MATRIX_RGB = "33, 102, 172", HIGHLIGHT_RGB = "217, 95, 2";
let view = null;     // the map on screen: {kind, queries, keys, raw: rows of weights}
let shown = null;    // view.raw after the temperature
let active = -1;     // the hovered query row, or -1

// Rows of `queries` attend to columns of `keys`.
function tokensOf(kind) {
  if (kind === "cross") return {queries: data.target_tokens, keys: data.source_tokens,
                                labels: ["Target (hover a token)", "Source"]};
  if (kind === "decoder_self") return {queries: data.target_tokens, keys: data.target_tokens,
                                       labels: ["Target (hover a token)", "Target, earlier tokens"]};
  return {queries: data.source_tokens, keys: data.source_tokens, labels: ["Source (hover a token)", "Source"]};
}
const isMasked = (kind, i, j) => kind === "decoder_self" && j > i;

// The pieces' word index, the rule of seq2seq.attention_maps.group_words: a word starts at "▁"; "</s>" is one.
function wordIndex(tokens) {
  let w = -1;
  return tokens.map((t, i) => {
    if (i === 0 || t.startsWith("\u2581") || t === "</s>" || tokens[i - 1] === "</s>") w += 1;
    return w;
  });
}

function flatWeights(kind, layerIndex, head) {
  const entry = data.maps[kind][layerIndex];
  if (head !== "average") return entry.heads[+head];
  if (entry.average) return entry.average;
  return entry.heads[0].map((_, x) => entry.heads.reduce((s, h) => s + h[x], 0) / entry.heads.length);
}

// softmax(log(w) / τ) over each row; cells of weight 0 (masked) stay 0. τ = 1 shows the weights as they are.
function sharpen(rows, tau) {
  return rows.map((row) => {
    let top = -Infinity;
    for (const w of row) if (w > 0) top = Math.max(top, Math.log(w));
    const e = row.map((w) => (w > 0 ? Math.exp((Math.log(w) - top) / tau) : 0));
    const total = e.reduce((a, b) => a + b, 0);
    return e.map((x) => (total > 0 ? x / total : 0));
  });
}

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.appendChild(o);
}

function fillLayers() {
  const kind = $("kind").value, select = $("layer");
  select.replaceChildren();
  data.maps[kind].forEach((entry, i) => option(select, i, `layer ${entry.layer}`));
  select.value = data.maps[kind].length - 1;
  fillHeads();
}

function fillHeads() {
  const entry = data.maps[$("kind").value][+$("layer").value], select = $("head");
  select.replaceChildren();
  option(select, "average", "average of heads");
  entry.heads.forEach((_, h) => option(select, h, `head ${h}`));
  render();
}

function tokenSpans(container, tokens, role) {
  container.replaceChildren();
  tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = t;
    span.dataset[role] = i;
    if (role === "q") {
      span.tabIndex = 0;
      span.addEventListener("mouseenter", () => highlight(i));
      span.addEventListener("focus", () => highlight(i));
      span.addEventListener("mouseleave", clearHighlight);
    }
    container.appendChild(span);
  });
}

function buildMatrix() {
  const table = $("matrix");
  table.replaceChildren();
  const head = table.insertRow();
  head.appendChild(document.createElement("th"));
  view.keys.forEach((t, j) => {
    const th = document.createElement("th");
    th.className = "col";
    th.textContent = t;
    th.dataset.k = j;
    head.appendChild(th);
  });
  view.queries.forEach((t, i) => {
    const tr = table.insertRow();
    tr.dataset.q = i;
    const th = document.createElement("th");
    th.className = "row";
    th.textContent = t;
    tr.appendChild(th);
    view.keys.forEach((_, j) => {
      const td = tr.insertCell();
      if (isMasked(view.kind, i, j)) td.className = "masked";
    });
    tr.addEventListener("mouseenter", () => highlight(i));
    tr.addEventListener("mouseleave", clearHighlight);
  });
}

function render() {
  const kind = $("kind").value;
  const t = tokensOf(kind);
  view = {kind, queries: t.queries, keys: t.keys, raw: []};
  const flat = flatWeights(kind, +$("layer").value, $("head").value), n = t.keys.length;
  for (let i = 0; i < t.queries.length; i++) view.raw.push(flat.slice(i * n, (i + 1) * n));
  $("queries-label").textContent = t.labels[0];
  $("keys-label").textContent = t.labels[1];
  $("hint").textContent = HINTS[kind];
  tokenSpans($("queries"), t.queries, "q");
  tokenSpans($("keys"), t.keys, "k");
  buildMatrix();
  active = -1;
  applyTemperature();
}

function applyTemperature() {
  const tau = Math.pow(10, +$("temperature").value / 100);
  $("temperature-value").textContent = tau.toFixed(2);
  shown = sharpen(view.raw, tau);
  const rows = $("matrix").rows;
  shown.forEach((row, i) => row.forEach((w, j) => {
    const td = rows[i + 1].cells[j + 1];
    td.title = `${view.queries[i]} → ${view.keys[j]}: ${isMasked(view.kind, i, j) ? "masked" : w.toFixed(4)}`;
    if (!isMasked(view.kind, i, j)) td.style.backgroundColor = `rgba(${MATRIX_RGB}, ${w.toFixed(4)})`;
  }));
  if (active >= 0) highlight(active);
}

function highlight(i) {
  active = i;
  const row = shown[i];
  document.querySelectorAll("#keys .tok").forEach((el, j) => {
    el.style.backgroundColor = `rgba(${HIGHLIGHT_RGB}, ${row[j].toFixed(4)})`;
    el.classList.remove("aligned");
    el.classList.toggle("masked", isMasked(view.kind, i, j));
  });
  document.querySelectorAll("#queries .tok").forEach((el, q) => el.classList.toggle("active", q === i));
  for (const tr of $("matrix").rows) tr.classList.toggle("active", tr.dataset.q === String(i));
  const best = row.map((w, j) => [w, j]).filter(([w]) => w > 0).sort((a, b) => b[0] - a[0]).slice(0, 3);
  $("readout").textContent = `“${view.queries[i]}” attends to: ` +
    best.map(([w, j]) => `${view.keys[j]} (#${j}) ${w.toFixed(3)}`).join(" · ");
  if (view.kind === "cross") markAlignedWord(i);
}

// Outline the source word that the hovered target token's word is aligned to (data.alignment).
function markAlignedWord(i) {
  const targetWord = wordIndex(data.target_tokens)[i], sourceWords = wordIndex(data.source_tokens);
  const aligned = data.alignment[targetWord];
  Array.from($("alignment").rows).forEach((tr, r) => tr.classList.toggle("active", r === targetWord + 1));
  if (aligned === undefined || aligned < 0) return;
  document.querySelectorAll("#keys .tok").forEach((el, j) => {
    el.classList.toggle("aligned", sourceWords[j] === aligned);
  });
}

function clearHighlight() {
  active = -1;
  document.querySelectorAll("#keys .tok").forEach((el) => {
    el.style.backgroundColor = "";
    el.classList.remove("aligned", "masked");
  });
  document.querySelectorAll("#queries .tok.active").forEach((el) => el.classList.remove("active"));
  for (const tr of $("matrix").rows) tr.classList.remove("active");
  for (const tr of $("alignment").rows) tr.classList.remove("active");
  $("readout").textContent = "";
}

function buildAlignment() {
  const table = $("alignment");
  const header = table.insertRow();
  ["target word", "source word it attends to most"].forEach((text) => {
    const th = document.createElement("th");
    th.textContent = text;
    header.appendChild(th);
  });
  data.target_words.forEach((word, w) => {
    const tr = table.insertRow();
    const s = data.alignment[w];
    tr.insertCell().textContent = word;
    tr.insertCell().textContent = s === undefined || s < 0 ? "—" : data.source_words[s];
  });
}

for (const kind of Object.keys(KIND_NAMES)) if (data.maps[kind]) option($("kind"), kind, KIND_NAMES[kind]);
$("kind").addEventListener("change", fillLayers);
$("layer").addEventListener("change", fillHeads);
$("head").addEventListener("change", render);
$("temperature").addEventListener("input", applyTemperature);
buildAlignment();
fillLayers();
</script>
</body>
</html>
"""
