/* The attention viewer, shared by the web page (index.html) and the files of `--attention-html`, which inline it.

     const viewer = AttentionViewer.mount(element, attention);  // builds the viewer inside `element`
     viewer.update(otherAttention);                             // another translation; the picked map is kept

   `attention` is the API's Attention message as JSON, as the gateway's /api/v1/translate returns it
   (MessageToDict with proto field names, which leaves out zero fields: a missing layer or head is 0). Hover or
   focus a target token to light up the tokens it attends to; pick the map, layer and head; a temperature τ
   re-sharpens or flattens the weights. Fetches nothing and writes no global but AttentionViewer. */
(function (global) {
  "use strict";

  const KINDS = ["cross", "decoder_self", "encoder_self"];
  const KIND_NAMES = {cross: "Cross-attention", decoder_self: "Decoder self-attention",
                      encoder_self: "Encoder self-attention"};
  const HINTS = {
    cross: "Rows: target tokens; columns: the source tokens each one attends to.",
    decoder_self: "Rows: target tokens; columns: the earlier target tokens. Hatched cells are masked " +
                  "(a token never sees later tokens, §3.2.3): their weight is 0.",
    encoder_self: "Rows and columns: source tokens.",
  };
  const MATRIX_RGB = "33, 102, 172", HIGHLIGHT_RGB = "217, 95, 2";
  let mounted = 0;  // viewers on this page: their element ids differ

  // Rows of `queries` attend to columns of `keys`.
  function tokensOf(data, kind) {
    if (kind === "cross") return {queries: data.target_tokens, keys: data.source_tokens,
                                  labels: ["Target (hover a token)", "Source"]};
    if (kind === "decoder_self") return {queries: data.target_tokens, keys: data.target_tokens,
                                         labels: ["Target (hover a token)", "Target, earlier tokens"]};
    return {queries: data.source_tokens, keys: data.source_tokens, labels: ["Source (hover a token)", "Source"]};
  }
  const isMasked = (kind, i, j) => kind === "decoder_self" && j > i;

  // An AttentionMap -> {layer, head, weights}, checked against the size its tokens give it.
  function readMap(message, rows, cols) {
    const layer = message.layer || 0, head = message.head || 0, weights = message.weights || [];
    const shape = [message.rows || 0, message.cols || 0];
    if (shape[0] !== rows || shape[1] !== cols || weights.length !== rows * cols) {
      throw new Error(`attention map layer ${layer} head ${head} is ${shape[0]}×${shape[1]} with ` +
                      `${weights.length} weights; its tokens make it ${rows}×${cols}`);
    }
    return {layer, head, weights};
  }

  // The message -> {tokens, words, alignment, maps: {kind: [{layer, heads: [flat weights], average}]}}, layers in
  // order (the rule of attention_view.layers_of; for "cross", cross_average is the average of its layer).
  function read(attention) {
    const data = {};
    for (const key of ["source_tokens", "target_tokens", "source_words", "target_words", "alignment"]) {
      data[key] = attention[key] || [];
    }
    data.maps = {};
    for (const kind of KINDS) {
      const {queries, keys} = tokensOf(data, kind), layers = new Map();
      const entry = (layer) => {
        if (!layers.has(layer)) layers.set(layer, {layer, heads: [], average: null});
        return layers.get(layer);
      };
      for (const message of attention[kind] || []) {
        const map = readMap(message, queries.length, keys.length);
        if (map.head < 0) entry(map.layer).average = map.weights;
        else entry(map.layer).heads[map.head] = map.weights;
      }
      if (kind === "cross" && attention.cross_average) {
        const map = readMap(attention.cross_average, queries.length, keys.length);
        entry(map.layer).average = map.weights;
      }
      const list = Array.from(layers.values()).sort((a, b) => a.layer - b.layer);
      for (const e of list) {
        if (Array.from(e.heads).some((w) => !w)) throw new Error(`${kind} layer ${e.layer} misses a head`);
      }
      if (list.length) data.maps[kind] = list;
    }
    if (!data.maps.cross) throw new Error("the attention has no cross-attention map to show");
    return data;
  }

  // The pieces' word index, the rule of seq2seq.attention_maps.group_words: a word starts at "▁"; "</s>" is one.
  function wordIndex(tokens) {
    let w = -1;
    return tokens.map((t, i) => {
      if (i === 0 || t.startsWith("\u2581") || t === "</s>" || tokens[i - 1] === "</s>") w += 1;
      return w;
    });
  }

  function flatWeights(entry, head) {
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

  // Static markup only: every token is set with textContent, never parsed as HTML.
  const SKELETON = `
    <div class="av-controls">
      <label>Map <select class="av-kind"></select></label>
      <label>Layer <select class="av-layer"></select></label>
      <label>Head <select class="av-head"></select></label>
      <label>Temperature τ <input class="av-temperature" type="range" min="-100" max="100" step="1" value="0"></label>
      <output class="av-temperature-value">1.00</output>
    </div>
    <p class="av-hint"></p>
    <div class="av-strip"><span class="av-strip-label av-queries-label"></span>
      <div class="av-queries" role="toolbar"></div></div>
    <div class="av-strip"><span class="av-strip-label av-keys-label"></span>
      <div class="av-keys" role="group"></div></div>
    <p class="av-readout" aria-live="polite"></p>
    <p class="av-matrix-title"></p>
    <div class="av-matrix-wrap"><table class="av-matrix"></table></div>
    <h3>Word alignment (from the cross-attention)</h3>
    <table class="av-alignment"></table>`;

  class Viewer {
    constructor(element) {
      this.root = element;
      element.classList.add("av-viewer");
      element.innerHTML = SKELETON;
      const title = this.el("av-matrix-title");
      title.id = `av-${++mounted}-matrix-title`;
      this.el("av-matrix").setAttribute("aria-labelledby", title.id);
      this.data = null;
      this.view = null;    // the map on screen: {kind, queries, keys, raw: rows of weights}
      this.shown = null;   // view.raw after the temperature
      this.active = -1;    // the highlighted query row, or -1
      this.el("av-kind").addEventListener("change", () => this.fillLayers());
      this.el("av-layer").addEventListener("change", () => this.fillHeads());
      this.el("av-head").addEventListener("change", () => this.render());
      this.el("av-temperature").addEventListener("input", () => this.applyTemperature());
      this.el("av-queries").addEventListener("keydown", (event) => this.moveFocus(event));
    }

    el(name) {
      return this.root.querySelector("." + name);
    }

    all(selector) {
      return Array.from(this.root.querySelectorAll(selector));
    }

    // Show another translation's attention; the kind, layer and head on screen stay where they still exist.
    update(attention) {
      const data = read(attention);  // throws before anything on screen changes
      const keep = this.data && {kind: this.el("av-kind").value, layer: this.layerOnScreen(),
                                 head: this.el("av-head").value};
      this.data = data;
      const kinds = this.el("av-kind");
      kinds.replaceChildren();
      for (const kind of KINDS) if (data.maps[kind]) option(kinds, kind, KIND_NAMES[kind]);
      if (keep && data.maps[keep.kind]) kinds.value = keep.kind;
      this.buildAlignment();
      this.fillLayers(keep);
      return this;
    }

    layerOnScreen() {
      const entries = this.data.maps[this.el("av-kind").value];
      return entries[+this.el("av-layer").value].layer;
    }

    fillLayers(keep) {
      const entries = this.data.maps[this.el("av-kind").value], select = this.el("av-layer");
      select.replaceChildren();
      entries.forEach((entry, i) => option(select, i, `layer ${entry.layer}`));
      const kept = keep ? entries.findIndex((e) => e.layer === keep.layer) : -1;
      select.value = kept >= 0 ? kept : entries.length - 1;
      this.fillHeads(keep);
    }

    fillHeads(keep) {
      const entry = this.data.maps[this.el("av-kind").value][+this.el("av-layer").value];
      const select = this.el("av-head");
      select.replaceChildren();
      option(select, "average", "average of heads");
      entry.heads.forEach((_, h) => option(select, h, `head ${h}`));
      if (keep && Array.from(select.options).some((o) => o.value === keep.head)) select.value = keep.head;
      this.render();
    }

    render() {
      const kind = this.el("av-kind").value, t = tokensOf(this.data, kind);
      const entry = this.data.maps[kind][+this.el("av-layer").value];
      const flat = flatWeights(entry, this.el("av-head").value), n = t.keys.length;
      this.view = {kind, queries: t.queries, keys: t.keys, raw: []};
      for (let i = 0; i < t.queries.length; i++) this.view.raw.push(flat.slice(i * n, (i + 1) * n));
      this.el("av-queries-label").textContent = t.labels[0];
      this.el("av-keys-label").textContent = t.labels[1];
      this.el("av-queries").setAttribute("aria-label", `${t.labels[0]}: hover, focus or use the arrow keys`);
      this.el("av-keys").setAttribute("aria-label", t.labels[1]);
      this.el("av-hint").textContent = HINTS[kind];
      this.tokenButtons(t.queries);
      this.tokenSpans(t.keys);
      this.buildMatrix(entry.layer);
      this.active = -1;
      this.applyTemperature();
    }

    // The query tokens: buttons with one tab stop (the arrow keys move between them), hover and focus alike.
    tokenButtons(tokens) {
      const container = this.el("av-queries");
      container.replaceChildren();
      tokens.forEach((t, i) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "av-tok";
        button.textContent = t;
        button.dataset.q = i;
        button.tabIndex = i === 0 ? 0 : -1;
        button.addEventListener("mouseenter", () => this.highlight(i));
        button.addEventListener("mouseleave", () => this.clearHighlight());
        button.addEventListener("focus", () => this.highlight(i));
        button.addEventListener("blur", () => this.clearHighlight());
        container.appendChild(button);
      });
    }

    moveFocus(event) {
      const buttons = this.all(".av-queries .av-tok"), at = buttons.indexOf(document.activeElement);
      const to = {ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: buttons.length - 1}[event.key];
      if (at < 0 || to === undefined) return;
      event.preventDefault();
      const next = buttons[Math.max(0, Math.min(buttons.length - 1, to))];
      buttons.forEach((b) => { b.tabIndex = b === next ? 0 : -1; });
      next.focus();
    }

    tokenSpans(tokens) {
      const container = this.el("av-keys");
      container.replaceChildren();
      tokens.forEach((t, j) => {
        const span = document.createElement("span");
        span.className = "av-tok";
        span.textContent = t;
        span.dataset.k = j;
        container.appendChild(span);
      });
    }

    buildMatrix(layer) {
      const table = this.el("av-matrix"), view = this.view;
      table.replaceChildren();
      this.el("av-matrix-title").textContent = `${KIND_NAMES[view.kind]}, layer ${layer}, ` +
        `${this.el("av-head").selectedOptions[0].textContent} (each cell's title gives its weight)`;
      const head = table.createTHead().insertRow();
      head.appendChild(document.createElement("td"));
      view.keys.forEach((t, j) => {
        const th = document.createElement("th");
        th.className = "col";
        th.scope = "col";
        th.textContent = t;
        th.dataset.k = j;
        head.appendChild(th);
      });
      const body = table.createTBody();
      view.queries.forEach((t, i) => {
        const tr = body.insertRow();
        tr.dataset.q = i;
        const th = document.createElement("th");
        th.className = "row";
        th.scope = "row";
        th.textContent = t;
        tr.appendChild(th);
        view.keys.forEach((_, j) => {
          const td = tr.insertCell();
          if (isMasked(view.kind, i, j)) td.className = "masked";
        });
        tr.addEventListener("mouseenter", () => this.highlight(i));
        tr.addEventListener("mouseleave", () => this.clearHighlight());
      });
    }

    applyTemperature() {
      const slider = this.el("av-temperature"), view = this.view;
      const tau = Math.pow(10, +slider.value / 100);
      this.el("av-temperature-value").textContent = tau.toFixed(2);
      slider.setAttribute("aria-valuetext", `τ = ${tau.toFixed(2)}`);
      this.shown = sharpen(view.raw, tau);
      const rows = this.el("av-matrix").tBodies[0].rows;
      this.shown.forEach((row, i) => row.forEach((w, j) => {
        const td = rows[i].cells[j + 1], masked = isMasked(view.kind, i, j);
        td.title = `${view.queries[i]} → ${view.keys[j]}: ${masked ? "masked" : w.toFixed(4)}`;
        if (!masked) td.style.backgroundColor = `rgba(${MATRIX_RGB}, ${w.toFixed(4)})`;
      }));
      if (this.active >= 0) this.highlight(this.active);
    }

    highlight(i) {
      const view = this.view, row = this.shown[i];
      this.active = i;
      this.all(".av-keys .av-tok").forEach((el, j) => {
        el.style.backgroundColor = `rgba(${HIGHLIGHT_RGB}, ${row[j].toFixed(4)})`;
        el.classList.remove("aligned");
        el.classList.toggle("masked", isMasked(view.kind, i, j));
      });
      this.all(".av-queries .av-tok").forEach((el, q) => el.classList.toggle("active", q === i));
      for (const tr of this.el("av-matrix").tBodies[0].rows) tr.classList.toggle("active", tr.dataset.q === String(i));
      const best = row.map((w, j) => [w, j]).filter(([w]) => w > 0).sort((a, b) => b[0] - a[0]).slice(0, 3);
      this.el("av-readout").textContent = `“${view.queries[i]}” attends to: ` +
        best.map(([w, j]) => `${view.keys[j]} (#${j}) ${w.toFixed(3)}`).join(" · ");
      if (view.kind === "cross") this.markAlignedWord(i);
    }

    // Outline the source word that the highlighted target token's word is aligned to (data.alignment).
    markAlignedWord(i) {
      const data = this.data;
      const targetWord = wordIndex(data.target_tokens)[i], sourceWords = wordIndex(data.source_tokens);
      const aligned = data.alignment[targetWord];
      Array.from(this.el("av-alignment").tBodies[0].rows)
        .forEach((tr, r) => tr.classList.toggle("active", r === targetWord));
      if (aligned === undefined || aligned < 0) return;
      this.all(".av-keys .av-tok").forEach((el, j) => el.classList.toggle("aligned", sourceWords[j] === aligned));
    }

    clearHighlight() {
      this.active = -1;
      this.all(".av-keys .av-tok").forEach((el) => {
        el.style.backgroundColor = "";
        el.classList.remove("aligned", "masked");
      });
      this.all(".av-queries .av-tok.active, .av-matrix tr.active, .av-alignment tr.active")
        .forEach((el) => el.classList.remove("active"));
      this.el("av-readout").textContent = "";
    }

    buildAlignment() {
      const table = this.el("av-alignment"), data = this.data;
      table.replaceChildren();
      const header = table.createTHead().insertRow();
      ["target word", "source word it attends to most"].forEach((text) => {
        const th = document.createElement("th");
        th.scope = "col";
        th.textContent = text;
        header.appendChild(th);
      });
      const body = table.createTBody();
      data.target_words.forEach((word, w) => {
        const tr = body.insertRow(), s = data.alignment[w];
        tr.insertCell().textContent = word;
        tr.insertCell().textContent = s === undefined || s < 0 ? "—" : data.source_words[s];
      });
    }
  }

  global.AttentionViewer = {
    /** Build a viewer inside `element` and show `attention`; throws Error (with what is wrong) on a bad message. */
    mount(element, attention) {
      return new Viewer(element).update(attention);
    },
    read,
  };
})(window);
