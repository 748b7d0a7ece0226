// semindex search page. Plain JS, no dependencies, no build step.
//
// Safety rule for this file: data from the server (ids, titles, texts, metadata, error
// messages) only ever reaches the page through textContent / createTextNode, never
// innerHTML, so a document whose text is "<script>" shows exactly that text. The page's
// Content-Security-Policy (set by semindex/api/ui.py) forbids inline scripts as a second line.
"use strict";

(function () {
  const KEY_STORAGE = "semindex.apiKey"; // sessionStorage: gone when the tab closes, never in a URL
  const COLL_STORAGE = "semindex.collection";
  const PASSAGE_CHARS = 360;
  const STOPWORDS = new Set(("a an and are as at be by for from has have how i in is it its of on or " +
    "that the this to was were what when where which who why will with do does did").split(" "));

  const $ = (id) => document.getElementById(id);
  const el = {
    key: $("api-key"), keyError: $("key-error"), collection: $("collection"), overview: $("overview"),
    form: $("search-form"), q: $("q"), mode: $("mode"), k: $("k"), rerank: $("rerank"),
    filter: $("filter"), filterError: $("filter-error"), status: $("status"), error: $("error"),
    results: $("results"), dialog: $("doc-view"), docTitle: $("doc-title"), docId: $("doc-id"),
    docMeta: $("doc-meta"), docText: $("doc-text"), docClose: $("doc-close"),
  };

  // -- small DOM helpers (text only) ---------------------------------------------------------

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }

  function show(p, message) {
    p.textContent = message || "";
    p.hidden = !message;
  }

  function formatBytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  function valueText(v) {
    return typeof v === "string" ? v : JSON.stringify(v);
  }

  // -- the API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(detail);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    const key = el.key.value.trim();
    if (key) headers["Authorization"] = "Bearer " + key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", credentials: "omit",
      });
    } catch (e) {
      throw new ApiError(0, "network", "cannot reach the server: " + e.message);
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const code = data && typeof data.error === "string" ? data.error : "http_" + resp.status;
      const detail = data && typeof data.detail === "string" ? data.detail : resp.statusText || "request failed";
      throw new ApiError(resp.status, code, detail);
    }
    return data;
  }

  const collPath = (name) => "/collections/" + encodeURIComponent(name);

  function authProblem(err) {
    if (err instanceof ApiError && err.status === 401) {
      show(el.keyError, "API key refused (401): " + err.message + ". Type the server's key above.");
      el.key.focus();
      return true;
    }
    return false;
  }

  // -- collections and overview -----------------------------------------------------------------

  async function loadCollections() {
    show(el.keyError, "");
    show(el.error, "");
    let data;
    try {
      data = await api("GET", "/collections");
    } catch (err) {
      el.collection.replaceChildren();
      el.overview.replaceChildren();
      if (!authProblem(err)) show(el.error, "Could not list collections: " + err.message);
      return;
    }
    const names = data.collections.map((c) => c.name);
    const wanted = sessionStorage.getItem(COLL_STORAGE);
    el.collection.replaceChildren(...names.map((n) => { const o = node("option", null, n); o.value = n; return o; }));
    if (!names.length) {
      show(el.error, "This store has no collections yet (semindex index FILE).");
      el.overview.replaceChildren();
      return;
    }
    el.collection.value = names.includes(wanted) ? wanted : names[0];
    renderOverview(data.collections.find((c) => c.name === el.collection.value));
  }

  function renderOverview(info) {
    if (!info) { el.overview.replaceChildren(); return; }
    const rows = [
      ["documents", String(info.count)],
      ["model", info.model || "none (vectors only)"],
      ["index", info.index_type + (info.index_device && info.index_device !== "cpu" ? " on " + info.index_device : "")],
      ["memory", formatBytes(info.index_bytes)],
      ["on disk", formatBytes(info.bytes_on_disk)],
      ["dimension", String(info.dimension) + " · " + info.metric],
    ];
    const parts = [];
    for (const [k, v] of rows) {
      const wrap = node("div");
      wrap.append(node("dt", null, k), node("dd", null, v));
      parts.push(wrap);
    }
    el.overview.replaceChildren(...parts);
  }

  async function refreshOverview() {
    const name = el.collection.value;
    if (!name) return;
    sessionStorage.setItem(COLL_STORAGE, name);
    try {
      renderOverview(await api("GET", collPath(name)));
    } catch (err) {
      if (!authProblem(err)) show(el.error, err.message);
    }
  }

  // -- highlighting --------------------------------------------------------------------------------

  function queryTerms(query) {
    const words = query.toLowerCase().match(/[\p{L}\p{N}]+/gu) || [];
    const terms = words.filter((w) => w.length > 1 && !STOPWORDS.has(w));
    return [...new Set(terms)].sort((a, b) => b.length - a.length);
  }

  function termRegex(terms) {
    if (!terms.length) return null;
    const esc = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    // A term matches at the start of a word (so "hole" marks "holes"); \p{L} keeps it Unicode-aware.
    return new RegExp("(?<![\\p{L}\\p{N}])(" + esc.join("|") + ")", "giu");
  }

  // Append `text` to `parent` as text nodes and <mark>s; returns how many marks it made.
  function appendHighlighted(parent, text, re) {
    if (!re) { parent.append(document.createTextNode(text)); return 0; }
    let last = 0, marks = 0;
    re.lastIndex = 0;
    for (const m of text.matchAll(re)) {
      if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
      parent.append(node("mark", null, m[0]));
      last = m.index + m[0].length;
      marks += 1;
    }
    if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
    return marks;
  }

  // The part of the hit to show: its best chunk when the hit carries chunk offsets, else a
  // window of the text around the first query term.
  function passage(hit, re) {
    const text = typeof hit.text === "string" ? hit.text : "";
    const chunks = Array.isArray(hit.chunks) ? hit.chunks.filter((c) => c && Number.isInteger(c.start) && Number.isInteger(c.end)) : [];
    if (chunks.length) {
      const best = chunks.reduce((a, b) => ((b.score ?? -Infinity) > (a.score ?? -Infinity) ? b : a));
      const inText = best.end <= text.length && best.start >= 0 && best.start < best.end;
      // semindex sends the best chunk's text as the hit's text; a hit with the whole text is sliced.
      const body = inText ? text.slice(best.start, best.end) : text;
      return {
        text: body, before: best.start > 0, after: inText && best.end < text.length,
        label: "chunk " + (best.index ?? "?") + " · chars " + best.start + "–" + best.end,
      };
    }
    if (text.length <= PASSAGE_CHARS) return { text, before: false, after: false, label: null };
    let start = 0;
    if (re) {
      re.lastIndex = 0;
      const m = re.exec(text);
      if (m) start = Math.max(0, m.index - Math.floor(PASSAGE_CHARS / 4));
    }
    if (start > 0) {
      const space = text.indexOf(" ", start);
      if (space !== -1 && space - start < 30) start = space + 1;
    }
    let end = Math.min(text.length, start + PASSAGE_CHARS);
    if (end < text.length) {
      const space = text.lastIndexOf(" ", end);
      if (space > start && end - space < 30) end = space; // end on a word boundary
    }
    return { text: text.slice(start, end), before: start > 0, after: end < text.length, label: null };
  }

  // -- search --------------------------------------------------------------------------------------

  function readFilter() {
    const raw = el.filter.value.trim();
    if (!raw) return { ok: true, value: undefined };
    try {
      return { ok: true, value: JSON.parse(raw) };
    } catch (e) {
      return { ok: false, message: "Filter is not valid JSON: " + e.message };
    }
  }

  function isFilterError(err) {
    return err instanceof ApiError && (err.code === "invalid_filter" || /^filter\b/i.test(err.message));
  }

  let searchSeq = 0;

  async function search() {
    const name = el.collection.value;
    const query = el.q.value.trim();
    show(el.error, "");
    show(el.filterError, "");
    if (!name) { show(el.error, "Pick a collection first."); return; }
    if (!query) { el.q.focus(); return; }
    const filter = readFilter();
    if (!filter.ok) { show(el.filterError, filter.message); el.filter.focus(); return; }
    const k = Number.parseInt(el.k.value, 10);
    const body = { query, k: Number.isFinite(k) ? k : 10, mode: el.mode.value };
    if (filter.value !== undefined) body.filter = filter.value;
    const rerank = el.rerank.value.trim();
    if (rerank) body.rerank = rerank;

    const seq = ++searchSeq;
    el.results.dataset.state = "loading";
    el.status.textContent = "Searching…";
    const t0 = performance.now();
    let data;
    try {
      data = await api("POST", collPath(name) + "/search", body);
    } catch (err) {
      if (seq !== searchSeq) return;
      el.results.dataset.state = "error";
      el.results.replaceChildren(); // the old hits would read as the answer to this query
      el.status.textContent = "";
      if (authProblem(err)) return;
      if (isFilterError(err)) show(el.filterError, err.message);
      else show(el.error, err.message);
      return;
    }
    if (seq !== searchSeq) return; // a newer search started meanwhile
    show(el.keyError, "");
    renderHits(data.hits, query);
    const ms = Math.round(performance.now() - t0);
    el.status.textContent = data.hits.length + (data.hits.length === 1 ? " hit" : " hits") + " in " + ms + " ms";
    el.results.dataset.state = "done";
    if (!performance.getEntriesByName("semindex:first-result").length) performance.mark("semindex:first-result");
  }

  function renderHits(hits, query) {
    const re = termRegex(queryTerms(query));
    const items = hits.map((hit, i) => {
      const li = node("li", "hit");
      li.dataset.id = hit.id;
      const head = node("div", "hit-head");
      head.append(
        node("span", "rank", "#" + (i + 1)),
        node("span", "score", typeof hit.score === "number" ? hit.score.toFixed(4) : String(hit.score)),
        node("code", "hit-id", hit.id),
      );
      const open = node("button", "open", "Open");
      open.type = "button";
      open.addEventListener("click", () => openDocument(hit.id));
      head.append(open);
      li.append(head);
      if (hit.title) {
        const h = node("h3", "title");
        appendHighlighted(h, hit.title, re);
        li.append(h);
      }
      const meta = hit.metadata && typeof hit.metadata === "object" ? Object.entries(hit.metadata) : [];
      if (meta.length) {
        const ul = node("ul", "meta");
        for (const [k, v] of meta) {
          const item = node("li");
          item.append(node("span", "meta-key", k), document.createTextNode(": "), node("span", "meta-value", valueText(v)));
          ul.append(item);
        }
        li.append(ul);
      }
      const p = passage(hit, re);
      const para = node("p", "passage");
      if (p.before) para.append(document.createTextNode("… "));
      appendHighlighted(para, p.text, re);
      if (p.after) para.append(document.createTextNode(" …"));
      li.append(para);
      if (p.label) li.append(node("p", "chunk", p.label));
      return li;
    });
    if (!items.length) items.push(node("li", "empty", "No documents match."));
    el.results.replaceChildren(...items);
  }

  // -- one document ------------------------------------------------------------------------------

  async function openDocument(id) {
    const name = el.collection.value;
    let doc;
    try {
      doc = await api("GET", collPath(name) + "/documents/" + encodeURIComponent(id));
    } catch (err) {
      if (!authProblem(err)) show(el.error, err.message);
      return;
    }
    const re = termRegex(queryTerms(el.q.value));
    el.docTitle.textContent = doc.title || "(untitled)";
    el.docId.textContent = doc.id;
    el.docMeta.textContent = JSON.stringify(doc.metadata || {}, null, 2);
    el.docText.replaceChildren();
    appendHighlighted(el.docText, doc.text || "", re);
    if (typeof el.dialog.showModal === "function") el.dialog.showModal();
    else el.dialog.setAttribute("open", "");
    el.docClose.focus();
  }

  function closeDocument() {
    if (typeof el.dialog.close === "function") el.dialog.close();
    else el.dialog.removeAttribute("open");
  }

  // -- wiring ----------------------------------------------------------------------------------------

  function typingIn(target) {
    return target instanceof HTMLElement &&
      (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
  }

  el.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  el.key.addEventListener("change", () => {
    const key = el.key.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    loadCollections();
  });
  el.key.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); el.key.blur(); } });
  el.collection.addEventListener("change", refreshOverview);
  el.form.addEventListener("submit", (e) => { e.preventDefault(); search(); });
  // Enter in the filter box searches too (Shift+Enter for a new line).
  el.filter.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); search(); }
  });
  el.docClose.addEventListener("click", closeDocument);
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && !typingIn(e.target) && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      closeDocument();
      el.q.focus();
      el.q.select();
    }
  });

  loadCollections().then(() => { if (el.keyError.hidden) el.q.focus(); });
})();
