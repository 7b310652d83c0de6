/* The translation page (index.html): French in, English out, with its decoding options, the n-best hypotheses
   and their attention (attention-viewer.js). It talks only to the gateway that served it: GET api/v1/options and
   api/v1/info once, POST api/v1/translate per translation; a file goes to POST translate_file (LibreTranslate's),
   whose progress is polled from translate_file/progress/<job_id>, and comes back from download_file/<name>. The
   option controls are made from api/v1/options (seq2seq_api.decoding.DecodeConfig), so a new option needs no change
   here; the glossary (a list) has its own table, sent as options.glossary with each translation and as the glossary
   field of a file, and the English terms used come back highlighted. body[data-state] says where the page is:
   loading, ready, busy, done or error (for tests, and for styles). */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  // shown first, in this order; every other option goes under "More options"
  const MAIN_OPTIONS = ["beam_size", "n_best", "sample", "temperature", "top_k", "top_p", "num_samples", "seed"];
  const LIVE_DELAY_MS = 600;  // translate as you type: after this long without a keystroke

  let optionList = [];   // from api/v1/options: [{name, type, default, help, range}]
  let result = null;     // the TextResult on screen
  let pending = null;    // the AbortController of the request in flight
  let viewer = null;     // the AttentionViewer, made on the first translation
  let liveTimer = 0;

  class ApiError extends Error {
    constructor(message, code) {
      super(message);
      this.code = code || "";
    }
  }

  // GET (no body) or POST JSON; resolves to the JSON reply, rejects with ApiError carrying the gateway's message.
  async function api(path, body, signal) {
    const init = body === undefined ? {signal} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body), signal};
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(`cannot reach the gateway (${e.message})`, "UNAVAILABLE");
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (e) {
      payload = null;
    }
    if (!response.ok) {
      const message = payload && payload.error ? payload.error : `HTTP ${response.status} ${response.statusText}`;
      throw new ApiError(message, payload && payload.code);
    }
    if (payload === null) throw new ApiError(`the gateway's reply to ${path} is not JSON`, "INTERNAL");
    return payload;
  }

  function showError(error) {
    const box = $("error");
    box.textContent = error.code ? `${error.code}: ${error.message}` : `Error: ${error.message}`;
    box.hidden = false;
    document.body.dataset.state = "error";
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // ---- the option controls, made from api/v1/options ------------------------------------------------------------

  const kindOf = (type) => ({bool: "bool", boolean: "bool", int: "int", integer: "int", float: "float",
                             number: "float"})[String(type).toLowerCase()] || "text";
  const titleOf = (name) => name.charAt(0).toUpperCase() + name.slice(1).replace(/_/g, " ");

  // An option's bounds, for the input's min and max (and its arrows): ge, gt, le of api/v1/options. The server
  // checks the values (an exclusive gt included) and its message shows up in the page.
  const bounds = (spec) => ({min: spec.ge ?? spec.gt ?? null, max: spec.le ?? null});

  function optionControl(spec) {
    const kind = kindOf(spec.type), id = `option-${spec.name}`, wrap = document.createElement("div");
    wrap.className = `option option-${kind}`;
    const label = document.createElement("label"), input = document.createElement("input");
    label.htmlFor = input.id = id;
    label.textContent = titleOf(spec.name);
    input.name = spec.name;
    input.dataset.kind = kind;
    const help = document.createElement("small");
    help.id = `${id}-help`;
    help.textContent = spec.range ? `${spec.help} (${spec.range})` : spec.help;
    input.setAttribute("aria-describedby", help.id);
    if (kind === "bool") {
      input.type = "checkbox";
      wrap.append(input, label, help);
    } else {
      input.type = kind === "text" ? "text" : "number";
      if (kind !== "text") {
        input.step = kind === "int" ? "1" : "any";
        input.inputMode = kind === "int" ? "numeric" : "decimal";
        const {min, max} = bounds(spec);
        if (min !== null) input.min = min;
        if (max !== null) input.max = max;
      }
      if (spec.default === null || spec.default === undefined) input.placeholder = "unset";
      wrap.append(label, input, help);
    }
    resetControl(input, spec);
    return wrap;
  }

  function resetControl(input, spec) {
    if (input.type === "checkbox") input.checked = Boolean(spec.default);
    else input.value = spec.default === null || spec.default === undefined ? "" : String(spec.default);
  }

  function buildOptions(list) {
    optionList = list.filter((spec) => spec.type !== "list");  // the glossary: the term table, not a control
    const main = [], more = [];
    for (const spec of optionList) (MAIN_OPTIONS.includes(spec.name) ? main : more).push(spec);
    main.sort((a, b) => MAIN_OPTIONS.indexOf(a.name) - MAIN_OPTIONS.indexOf(b.name));
    $("options-main").replaceChildren(...main.map(optionControl));
    $("options-more").replaceChildren(...more.map(optionControl));
    $("options-details").hidden = more.length === 0;
  }

  // The request's options: those set and different from their default (unset ones take the server's default).
  function readOptions() {
    const options = {};
    for (const spec of optionList) {
      const input = $(`option-${spec.name}`), kind = input.dataset.kind;
      if (kind === "bool") {
        if (input.checked !== Boolean(spec.default)) options[spec.name] = input.checked;
        continue;
      }
      if (input.validity.badInput) throw new ApiError(`${spec.name} must be a number`, "INVALID_ARGUMENT");
      const text = input.value.trim();
      if (kind === "int" && text !== "" && !/^-?\d+$/.test(text)) {
        throw new ApiError(`${spec.name} must be an integer, got ${text}`, "INVALID_ARGUMENT");
      }
      const value = kind === "text" ? text : Number(text);
      if (text === "" || value === spec.default) continue;
      // a uint64 (the seed) beyond 2^53 goes as a string, which protobuf's JSON reads exactly
      options[spec.name] = kind === "int" && !Number.isSafeInteger(value) ? text : value;
    }
    return options;
  }

  // ---- the glossary: French term | English term rows, sent as options.glossary ----------------------------------

  const GLOSSARY_START_ROWS = 3;
  let termIds = 0;  // ids for the rows' inputs, never reused, so a label keeps its input when a row above goes

  function termCell(side, lang) {
    const cell = document.createElement("td"), label = document.createElement("label"),
          input = document.createElement("input");
    input.type = "text";
    input.id = `term-${++termIds}`;
    input.className = `term-${side}`;
    input.lang = lang;
    input.maxLength = 100;  // seq2seq_api.glossary.MAX_TERM_CHARS
    input.spellcheck = false;
    label.htmlFor = input.id;
    label.className = "visually-hidden";
    cell.append(label, input);
    return cell;
  }

  function addTermRow() {
    const row = document.createElement("tr"), cell = document.createElement("td"),
          remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove-term";
    remove.textContent = "Remove";
    remove.addEventListener("click", () => {
      row.remove();
      numberTermRows();
      readGlossary();
      $("add-term").focus();  // the focused button went with its row
      if ($("live").checked && $("source").value.trim()) translate();
    });
    cell.append(remove);
    row.append(termCell("source", "fr"), termCell("target", "en"), cell);
    $("glossary-rows").append(row);
    numberTermRows();
    return row;
  }

  // Labels say which row ("French term 2"), so they follow the rows' places.
  function numberTermRows() {
    $("glossary-rows").querySelectorAll("tr").forEach((row, i) => {
      const [source, target] = row.querySelectorAll("label");
      source.textContent = `French term ${i + 1}`;
      target.textContent = `English term ${i + 1}`;
      row.querySelector(".remove-term").setAttribute("aria-label", `Remove row ${i + 1}`);
    });
  }

  const squeeze = (text) => text.trim().split(/\s+/).filter(Boolean).join(" ");

  // The rows with both terms, as the proto's GlossaryTerm {source, target}. A row with one term only is not sent,
  // and the hint says which; empty rows are just empty. The server checks the rest and says what is wrong.
  function readGlossary() {
    const terms = [], incomplete = [];
    $("glossary-rows").querySelectorAll("tr").forEach((row, i) => {
      const source = squeeze(row.querySelector(".term-source").value),
            target = squeeze(row.querySelector(".term-target").value);
      if (source && target) terms.push({source, target});
      else if (source || target) incomplete.push(i + 1);
    });
    $("glossary-hint").textContent = !incomplete.length ? "" : (incomplete.length === 1 ?
      `Row ${incomplete[0]} is not sent: it needs both a French and an English term.` :
      `Rows ${incomplete.join(", ")} are not sent: each needs both a French and an English term.`);
    return terms;
  }

  // Terms are compared as seq2seq_api.glossary compares them: NFKC, lower case (its casefold, but for ß and a few
  // like it), spaces collapsed, whole words only.
  const normalize = (text) => squeeze(text.normalize("NFKC").toLowerCase());
  const WORD = "[\\p{L}\\p{N}_]";  // Python's \w

  // [start, end) of each whole-word occurrence of `term` in `text` (a space in the term: any run of spaces)
  function findAll(term, text) {
    const words = term.split(" ").map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    const before = new RegExp(`^${WORD}`, "u").test(term) ? `(?<!${WORD})` : "";
    const after = new RegExp(`${WORD}$`, "u").test(term) ? `(?!${WORD})` : "";
    const pattern = new RegExp(before + words.join("\\s+") + after, "gu");
    return Array.from(text.matchAll(pattern), (m) => [m.index, m.index + m[0].length]);
  }

  // The terms whose French occurs in a sentence (glossary.matches): one inside a longer term's occurrence does not
  // count ("carte" in "carte mère").
  function termsIn(source, terms) {
    const text = normalize(source), spans = terms.map((t) => findAll(normalize(t.source), text)), every = spans.flat();
    const insideLonger = ([a, b]) => every.some(([c, d]) => c <= a && b <= d && d - c > b - a);
    return terms.filter((t, i) => spans[i].some((span) => !insideLonger(span)));
  }

  // Where the used terms' English stands in the text: each sentence's best hypothesis is found in the text in turn,
  // and in it the English (as given: the server writes it so) of the terms whose French is in that sentence's source.
  // -> [start, end, term], in order, not overlapping.
  function usedTermSpans(textResult, terms) {
    const text = textResult.text || "", spans = [];
    let pos = 0;
    for (const sentence of terms.length ? textResult.sentences || [] : []) {
      const best = ((sentence.hypotheses || [])[0] || {}).text || "", at = best ? text.indexOf(best, pos) : -1;
      if (at < 0) continue;
      for (const term of termsIn(sentence.source || "", terms)) {
        for (const [a, b] of findAll(term.target, best)) spans.push([at + a, at + b, term]);
      }
      pos = at + best.length;
    }
    spans.sort((x, y) => x[0] - y[0] || y[1] - x[1]);  // by start, the longer first where two start together
    let end = 0;
    return spans.filter(([a, b]) => {
      if (a < end) return false;
      end = b;
      return true;
    });
  }

  // The translation as text nodes, with a <mark> around each English term used (textContent only: no markup from
  // the terms or the translation is ever parsed).
  function showTranslation(textResult, terms) {
    const text = textResult.text || "", nodes = [];
    let pos = 0;
    for (const [a, b, term] of usedTermSpans(textResult, terms || [])) {
      const mark = document.createElement("mark");
      mark.className = "term";
      mark.textContent = text.slice(a, b);
      mark.title = `Glossary: ${term.source} → ${term.target}`;
      nodes.push(text.slice(pos, a), mark);
      pos = b;
    }
    nodes.push(text.slice(pos));
    $("translation").replaceChildren(...nodes);
  }

  // ---- translating ------------------------------------------------------------------------------------------------

  function setBusy(busy) {
    $("translation").setAttribute("aria-busy", String(busy));
    $("busy").textContent = busy ? "Translating…" : "";
    if (busy) document.body.dataset.state = "busy";
  }

  async function translate() {
    clearTimeout(liveTimer);
    const text = $("source").value;
    if (!text.trim()) {
      showError(new ApiError("type some French text to translate", ""));
      return;
    }
    let options;
    try {
      options = readOptions();
    } catch (e) {
      showError(e);
      return;
    }
    const terms = readGlossary();
    if (terms.length) options.glossary = terms;
    if (pending) pending.abort();  // a newer text or option wins over the request in flight
    const controller = new AbortController();
    pending = controller;
    setBusy(true);
    try {
      const reply = await api("api/v1/translate", {texts: [text], options, split_sentences: true,
                                                   return_scores: true, return_attention: true}, controller.signal);
      if (!reply.results || !reply.results.length) throw new ApiError("the reply holds no result", "INTERNAL");
      clearError();
      showResult(reply.results[0], terms);
      document.body.dataset.state = "done";
    } catch (e) {
      if (e.name !== "AbortError") showError(e);
    } finally {
      if (pending === controller) {
        pending = null;
        setBusy(false);
      }
    }
  }

  function showResult(textResult, terms) {
    result = textResult;
    showTranslation(textResult, terms);
    const sentences = textResult.sentences || [], select = $("sentence");
    select.replaceChildren(...sentences.map((s, i) => new Option(`${i + 1}. ${s.source}`, String(i))));
    $("sentence-picker").hidden = sentences.length < 2;
    $("hypotheses-section").hidden = sentences.length === 0;
    if (sentences.length) showSentence(0);
    else $("attention-section").hidden = true;
  }

  function showSentence(index) {
    const hypotheses = result.sentences[index].hypotheses || [];
    $("hypotheses").replaceChildren(...hypotheses.map((h, k) => {
      const li = document.createElement("li"), button = document.createElement("button");
      button.type = "button";
      button.className = "hypothesis";
      button.dataset.index = k;
      const text = document.createElement("span"), score = document.createElement("span");
      text.className = "hypothesis-text";
      text.lang = "en";
      text.textContent = h.text || "";
      score.className = "score";
      score.textContent = `score ${(h.score || 0).toFixed(3)}`;
      button.append(text, " ", score);
      button.addEventListener("click", () => showAttention(index, k));
      li.appendChild(button);
      return li;
    }));
    showAttention(index, 0);
  }

  function showAttention(sentence, k) {
    const hypotheses = result.sentences[sentence].hypotheses || [];
    document.querySelectorAll("#hypotheses .hypothesis").forEach((b, i) => {
      b.setAttribute("aria-pressed", String(i === k));
    });
    const attention = hypotheses[k] && hypotheses[k].attention, section = $("attention-section");
    section.hidden = !attention;
    if (!attention) return;
    const many = result.sentences.length > 1 ? ` of sentence ${sentence + 1}` : "";
    $("attention-of").textContent = `Hypothesis ${k + 1}${many}: “${hypotheses[k].text}” (hover or focus a ` +
      "target token to light up what it attends to)";
    try {
      if (viewer) viewer.update(attention);
      else viewer = AttentionViewer.mount($("attention"), attention);
    } catch (e) {
      section.hidden = true;
      showError(new ApiError(`cannot show the attention: ${e.message}`, ""));
    }
  }

  // ---- translating a file ----------------------------------------------------------------------------------------

  const PROGRESS_EVERY_MS = 400;
  let fileJob = null;  // the job_id of the file being translated

  // 128 random bits in hex: crypto.randomUUID needs a secure context, which a gateway on plain HTTP is not
  const newJobId = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
                                    (b) => b.toString(16).padStart(2, "0")).join("");

  function fileStatus(text, failed) {
    $("file-status").textContent = text;
    $("file-status").classList.toggle("failed", Boolean(failed));
  }

  async function translateFile() {
    const file = $("file").files[0];
    if (!file) {
      fileStatus("Choose a .txt, .html or .docx file first.", true);
      return;
    }
    const id = newJobId(), form = new FormData(), bar = $("file-progress");
    for (const [name, value] of [["source", "fr"], ["target", "en"], ["job_id", id]]) form.append(name, value);
    const terms = readGlossary();
    if (terms.length) form.append("glossary", JSON.stringify(terms.map((t) => [t.source, t.target])));
    form.append("file", file);
    fileJob = id;
    $("file-result").hidden = true;
    $("translate-file").disabled = true;
    bar.hidden = false;
    bar.removeAttribute("value");  // indeterminate until the gateway knows how many texts there are
    fileStatus(`Sending ${file.name}…`);
    document.body.dataset.fileState = "busy";
    const timer = setInterval(() => pollFile(id), PROGRESS_EVERY_MS);
    try {
      const response = await fetch("translate_file", {method: "POST", body: form});
      const payload = await response.json().catch(() => null);
      if (!response.ok || !payload || !payload.translatedFileUrl) {
        throw new ApiError(payload && payload.error ? payload.error : `HTTP ${response.status}`);
      }
      // the URL's last segment, relative to the page: the gateway may be served under a path prefix
      const name = payload.translatedFileUrl.split("/").pop(), link = $("file-download");
      link.href = `download_file/${name}`;
      link.download = name.slice(name.indexOf(".") + 1);
      link.textContent = `Download ${link.download}`;
      $("file-result").hidden = false;
      bar.max = 1;
      bar.value = 1;
      fileStatus(`${file.name} is translated.`);
      document.body.dataset.fileState = "done";
    } catch (e) {
      bar.hidden = true;
      fileStatus(e instanceof ApiError ? e.message : `cannot reach the gateway (${e.message})`, true);
      document.body.dataset.fileState = "error";
    } finally {
      fileJob = null;
      clearInterval(timer);
      $("translate-file").disabled = false;
    }
  }

  async function pollFile(id) {
    let progress;
    try {
      progress = await api(`translate_file/progress/${id}`);
    } catch (e) {
      return;  // not registered yet (the upload is still coming) or gone: the POST's answer will say
    }
    if (fileJob !== id || !progress.total) return;
    $("file-progress").max = progress.total;
    $("file-progress").value = progress.done;
    fileStatus(`Translating: ${progress.done} of ${progress.total} paragraphs`);
  }

  // LibreTranslate's frontend settings say whether files translate and which extensions
  async function setUpFiles() {
    let settings;
    try {
      settings = await api("frontend/settings");
    } catch (e) {
      return;  // no file form then; the text translation says what is wrong
    }
    const formats = settings.supportedFilesFormat || [];
    if (!settings.filesTranslation || !formats.length) return;
    $("file").accept = formats.join(",");
    $("file-formats").textContent = `(${formats.join(", ")})`;
    $("file-form").addEventListener("submit", (event) => {
      event.preventDefault();
      translateFile();
    });
    $("file-form").hidden = false;
  }

  // ---- start ------------------------------------------------------------------------------------------------------

  function showInfo(info) {
    const limits = info.limits || {};
    if (limits.max_chars) $("source").maxLength = limits.max_chars;
    const parts = [info.name, info.precision, info.device].filter(Boolean).join(", ");
    $("model-info").textContent = parts ? `Model: ${parts}` : "";
    countChars();
  }

  function countChars() {
    const max = $("source").maxLength;
    $("source-count").textContent = max > 0 ? `${$("source").value.length} / ${max} characters` : "";
  }

  function wire() {
    $("translate-form").addEventListener("submit", (event) => {
      event.preventDefault();
      translate();
    });
    $("source").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        translate();
      }
    });
    $("source").addEventListener("input", () => {
      countChars();
      clearTimeout(liveTimer);
      if ($("live").checked && $("source").value.trim()) liveTimer = setTimeout(translate, LIVE_DELAY_MS);
    });
    $("options").addEventListener("change", () => {
      if ($("live").checked && $("source").value.trim()) translate();
    });
    $("reset-options").addEventListener("click", () => {
      for (const spec of optionList) resetControl($(`option-${spec.name}`), spec);
      if ($("live").checked && $("source").value.trim()) translate();
    });
    $("sentence").addEventListener("change", () => showSentence(+$("sentence").value));
    $("add-term").addEventListener("click", () => addTermRow().querySelector("input").focus());
    $("glossary").addEventListener("input", readGlossary);  // the hint follows the typing
    $("glossary").addEventListener("change", () => {
      if ($("live").checked && $("source").value.trim()) translate();
    });
  }

  async function start() {
    for (let i = 0; i < GLOSSARY_START_ROWS; i++) addTermRow();
    wire();
    setUpFiles();
    const [options, info] = await Promise.allSettled([api("api/v1/options"), api("api/v1/info")]);
    if (options.status === "fulfilled") buildOptions(options.value.options || options.value);
    else showError(new ApiError(`no decoding options (${options.reason.message}); the defaults apply`,
                                options.reason.code));
    if (info.status === "fulfilled") showInfo(info.value);
    else if (options.status === "fulfilled") showError(info.reason);
    if (document.body.dataset.state === "loading") document.body.dataset.state = "ready";
  }

  start();
})();
