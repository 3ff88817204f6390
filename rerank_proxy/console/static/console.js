/* Relevance console of rerank-proxy: plain JS, no framework, no network but the proxy itself.
 *
 * The admin token arrives once as ?token= (or from the sign-in form), is kept in sessionStorage
 * for this tab only, removed from the address bar, and sent as a bearer header on API calls.
 * Every text that comes from documents or users is inserted with textContent, never as HTML.
 */
"use strict";
(() => {
  const API = "/_rerank/console/api";
  const TOKEN_KEY = "rerank-proxy-console-token";
  const SCALE_KEY = "rerank-proxy-console-scale";
  const PLACEHOLDER = /\{\{\s*query\s*\}\}/;
  const GRADE_NAMES = ["not relevant", "related", "highly relevant", "perfectly relevant"];
  const $ = (id) => document.getElementById(id);

  const state = {
    options: null, indices: [], last: null, judgments: {}, metricsSeq: 0, compareSeq: 0,
    fields: {}, batchAbort: null, experimentSeq: 0,
  };

  // --- token -------------------------------------------------------------------------------------

  function takeToken() {
    const url = new URL(window.location.href);
    const fromUrl = url.searchParams.get("token");
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      url.searchParams.delete("token");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }
  const token = takeToken();

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    window.location.replace(window.location.pathname + "?signin");
  }

  // --- helpers -----------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
  const signed = (value) => (value === null || value === undefined ? "–" : (value > 0 ? "+" : "") + Number(value).toFixed(3));

  function notify(message, kind) {
    const box = $("notice");
    box.textContent = message || "";
    box.className = "notice" + (kind ? " " + kind : "");
    box.hidden = !message;
  }

  /** A call to the console's API (a path under it), or to another admin endpoint (a /_rerank/ path);
   * a refusal throws an Error carrying the engine-style error's status and type. */
  async function api(path, { method = "GET", body, raw = false, signal } = {}) {
    const headers = { Authorization: "Bearer " + token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path.startsWith("/_rerank/") ? path : API + path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store",
    });
    if (response.status === 401) {
      notify("The admin token was not accepted. Sign out and sign in again.");
      throw new Error("unauthorised");
    }
    if (!response.ok) {
      let reason = response.status + " " + response.statusText, type = null;
      try {
        const { error } = await response.json();
        reason = error.reason || reason;
        type = error.type || null;
      } catch (_) { /* not JSON */ }
      throw Object.assign(new Error(reason), { status: response.status, type });
    }
    return raw ? response : response.json();
  }

  async function download(path, filename) {
    try {
      const response = await api(path, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { href: url, download: filename });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) { notify("Export failed: " + err.message); }
  }

  // --- options, indices, fields ------------------------------------------------------------------

  function renderProviders() {
    const select = $("provider");
    select.replaceChildren();
    for (const choice of state.options.providers) {
      const name = choice.id === "configured" ? `configured: ${choice.provider} ${choice.model}`.trim()
        : choice.id === "lexical" ? "lexical only (no reranking)" : `local: built-in ${choice.model}`;
      select.append(el("option", { value: choice.id, disabled: !choice.available, title: choice.reason || null },
        name + (choice.available ? "" : " (unavailable)")));
    }
    const first = state.options.providers.find((c) => c.available);
    if (first) select.value = first.id;
    const configured = state.options.providers[0];
    $("configured").textContent = configured.available
      ? `reranker: ${configured.provider} ${configured.model} · score ${configured.score_mode}` : "no reranker configured";
    syncModel();
  }

  function syncModel() {
    const choice = state.options.providers.find((c) => c.id === $("provider").value) || {};
    $("model").disabled = !choice.models_switchable;
    $("model").placeholder = choice.model || "—";
    if (!choice.models_switchable) $("model").value = "";
  }

  function currentIndex() { return state.indices.find((i) => i.name === $("index").value); }

  function renderIndices() {
    const select = $("index");
    const wanted = select.value || new URLSearchParams(location.hash.slice(1)).get("index");
    select.replaceChildren();
    for (const index of state.indices) {
      const docs = index.docs === null ? "" : ` (${index.docs} docs)`;
      select.append(el("option", { value: index.name }, index.name + docs + (index.reranked ? "" : " · not reranked")));
    }
    if (wanted && state.indices.some((i) => i.name === wanted)) select.value = wanted;
    onIndexChange();
  }

  async function onIndexChange() {
    const index = currentIndex();
    $("window").placeholder = index && index.rule ? String(index.rule.window) : String(state.options.defaults.window);
    refreshJudged();
    if (index) await loadFields(index);
  }

  async function loadFields(index) {
    if (!state.fields[index.name]) {
      try { state.fields[index.name] = (await api("/fields?index=" + encodeURIComponent(index.name))).fields; }
      catch (err) { state.fields[index.name] = []; }
    }
    const chosen = new Set(index.rule && index.rule.fields.length ? index.rule.fields : state.options.defaults.fields);
    const list = $("fields-list");
    list.replaceChildren();
    for (const field of state.fields[index.name]) {
      list.append(el("label", {}, el("input", { type: "checkbox", value: field, checked: chosen.has(field) }), field));
    }
    if (index.rule && index.rule.template) $("template").value = index.rule.template;
  }

  function syncTextMode() {
    const mode = $("text-mode").value;
    $("fields-box").hidden = mode !== "fields";
    $("template-box").hidden = mode !== "template";
  }

  /** The comparison options as the API takes them, from the form. */
  function compareOptions() {
    const options = { index: $("index").value, provider: $("provider").value, score_mode: $("score-mode").value };
    if ($("model").value.trim() && !$("model").disabled) options.model = $("model").value.trim();
    if ($("window").value) options.window = Number($("window").value);
    if ($("blend-weight").value !== "") options.blend_weight = Number($("blend-weight").value);
    const mode = $("text-mode").value;
    if (mode === "fields") {
      options.fields = [...$("fields-list").querySelectorAll("input:checked")].map((box) => box.value);
    } else if (mode === "template" && $("template").value.trim()) {
      options.template = $("template").value;
    }
    const dsl = $("query-dsl").value.trim();
    if (PLACEHOLDER.test(dsl)) {
      options.query_template = dsl;  // parsed by the proxy, which says what is wrong with it
    } else if (dsl) {
      try { options.dsl = JSON.parse(dsl); } catch (_) { throw new Error("the query DSL is not valid JSON"); }
    }
    return options;
  }

  // --- compare -----------------------------------------------------------------------------------

  function changeBadge(change) {
    const text = { up: "▲" + change.by, down: "▼" + change.by, new: "new", out: "out", same: "=" }[change.kind];
    const title = { up: `up ${change.by}`, down: `down ${change.by}`, new: "not in the lexical top 10",
      out: "not in the reranked top 10", same: "same rank" }[change.kind];
    return el("span", { class: "change " + change.kind, title, dataset: { kind: change.kind } }, text);
  }

  function judgeButtons(hit) {
    const grade = state.judgments[hit.id];
    const set = (value) => () => judge(hit.id, grade === value ? null : value);
    if ($("judge-scale").value === "graded") {
      return el("span", { class: "judge", role: "group", "aria-label": "grade" }, ...GRADE_NAMES.map((name, g) =>
        el("button", { type: "button", class: "judge-grade" + (grade === g ? " on" : ""), title: `${g}: ${name}`,
          dataset: { grade: String(g) }, "aria-pressed": String(grade === g), onclick: set(g) }, String(g))));
    }
    return el("span", { class: "judge" },
      el("button", { type: "button", class: "judge-rel" + (grade > 0 ? " on" : ""), title: "relevant",
        "aria-pressed": String(grade > 0), onclick: () => judge(hit.id, grade > 0 ? null : 1) }, "✓ relevant"),
      el("button", { type: "button", class: "judge-non" + (grade === 0 ? " on" : ""), title: "not relevant",
        "aria-pressed": String(grade === 0), onclick: set(0) }, "✗"));
  }

  function hitItem(hit, side) {
    const grade = state.judgments[hit.id];
    const judged = grade === undefined ? "" : grade > 0 ? " rel" : " nonrel";
    const meta = side === "lexical"
      ? [`score ${fmt(hit.score)}`, `reranked #${hit.reranked_rank}`]
      : [`score ${fmt(hit.score)}`, hit.rerank_score === null ? null : `model ${fmt(hit.rerank_score)}`,
        `lexical #${hit.lexical_rank} (${fmt(hit.lexical_score)})`];
    return el("li", { class: "hit" + judged, dataset: { id: hit.id, side, grade: grade === undefined ? "" : String(grade) },
      onmouseenter: () => link(hit.id, true), onmouseleave: () => link(hit.id, false) },
      el("span", { class: "rank" }, String(hit.rank)),
      el("span", { class: "label" }, hit.label || "(no text)"),
      el("span", { class: "head-right" }, changeBadge(hit.change)),
      el("span", { class: "meta" }, el("span", { class: "doc-id" }, "_id " + hit.id),
        ...meta.filter(Boolean).map((m) => el("span", {}, m)), judgeButtons(hit)),
      el("details", {}, el("summary", {}, `text sent to the reranker (${hit.text.length} chars)`),
        el("pre", { class: "hit-text" }, hit.text)));
  }

  function link(id, on) {
    for (const node of document.querySelectorAll(".hit")) {
      if (node.dataset.id === id) node.classList.toggle("linked", on);
    }
  }

  function renderColumns() {
    const result = state.last;
    $("lexical-list").replaceChildren(...result.lexical.map((hit) => hitItem(hit, "lexical")));
    $("reranked-list").replaceChildren(...result.reranked.map((hit) => hitItem(hit, "reranked")));
  }

  function renderCompare() {
    const r = state.last;
    $("columns").hidden = false;
    $("summary").hidden = false;
    $("lexical-caption").textContent = `engine top ${r.lexical.length} of ${r.total_hits ?? "?"} hits`;
    const model = r.provider.choice === "lexical" ? "no reranking" : `${r.provider.name} ${r.provider.model}`;
    $("reranked-caption").textContent = `${model} · ${r.score_mode} · window ${r.window}`;
    const t = r.timings;
    const cache = t.cache && t.cache.status ? `${t.cache.status} (${t.cache.cached} cached, ${t.cache.sent} sent)` : "—";
    $("timings").replaceChildren(...[
      el("span", {}, "engine ", el("b", { id: "timing-engine" }, fmt(t.engine_ms, 1) + " ms"),
        t.engine_took_ms === null ? "" : ` (took ${t.engine_took_ms} ms)`),
      el("span", {}, "rerank ", el("b", { id: "timing-rerank" }, fmt(t.rerank_ms, 1) + " ms")),
      el("span", {}, "cache ", el("b", { id: "timing-cache" }, cache)),
      el("span", {}, "candidates ", el("b", {}, String(r.candidates))),
      r.configured_for_reranking ? null : el("span", {}, "· clients' searches on this index are not reranked"),
    ].filter(Boolean));
    $("rerank-error").textContent = r.error || "";
    $("rerank-error").hidden = !r.error;
    $("search-json").textContent = JSON.stringify(r.search, null, 1);
    $("search-sent").hidden = false;
    renderColumns();
    renderQueryMetric(r.ndcg.lexical, r.ndcg.reranked);
  }

  async function runCompare() {
    const query = $("query").value.trim();
    let options;
    try { options = compareOptions(); } catch (err) { notify(err.message); return; }
    if (!query && !options.dsl) { notify("Type a query."); return; }
    if (query) options.query = query;
    const seq = ++state.compareSeq;
    $("compare-btn").disabled = true;
    document.body.classList.add("busy");
    try {
      const result = await api("/compare", { method: "POST", body: options });
      if (seq !== state.compareSeq) return;
      notify("");
      state.last = result;
      state.lastOptions = options;
      state.judgments = result.judgments || {};
      renderCompare();
      const place = { index: result.index, q: result.query };
      if (options.window) place.window = options.window;
      if (options.provider !== "configured") place.provider = options.provider;
      history.replaceState(null, "", "#" + new URLSearchParams(place));
      refreshMetrics();
    } catch (err) {
      if (seq === state.compareSeq) notify("Compare failed: " + err.message);
    } finally {
      if (seq === state.compareSeq) {
        $("compare-btn").disabled = false;
        document.body.classList.remove("busy");
        document.body.dataset.compared = String(seq);
      }
    }
  }

  // --- judgments and metrics ---------------------------------------------------------------------

  async function judge(docId, grade) {
    const r = state.last;
    if (!r) return;
    try {
      const answer = await api("/judgments", { method: "PUT",
        body: { index: r.index, query: r.query, doc_id: docId, grade } });
      state.judgments = answer.judgments;
      renderColumns();
      refreshJudged();
      await refreshMetrics();
    } catch (err) { notify("Saving the judgment failed: " + err.message); }
  }

  function renderQueryMetric(lexical, reranked) {
    $("ndcg-query-lexical").textContent = fmt(lexical);
    $("ndcg-query-reranked").textContent = fmt(reranked);
  }

  async function refreshMetrics() {
    const options = state.lastOptions;
    if (!options) return;
    const seq = ++state.metricsSeq;
    const body = Object.assign({}, options);
    delete body.query; delete body.dsl;
    document.body.dataset.metrics = "loading";
    try {
      const result = await api("/metrics", { method: "POST", body });
      if (seq !== state.metricsSeq) return;
      $("judged-count").textContent = String(result.evaluated);
      $("ndcg-mean-lexical").textContent = fmt(result.mean.lexical);
      $("ndcg-mean-reranked").textContent = fmt(result.mean.reranked);
      const row = state.last && result.rows.find((q) => q.id === state.last.query_id);
      renderQueryMetric(row ? row.lexical : null, row ? row.reranked : null);
      document.body.dataset.metrics = "ready-" + seq;
    } catch (err) {
      if (seq === state.metricsSeq) { notify("Metrics failed: " + err.message); document.body.dataset.metrics = "failed"; }
    }
  }

  async function refreshJudged() {
    const index = $("index").value;
    if (!index) return;
    try {
      const { queries } = await api("/judgments?index=" + encodeURIComponent(index));
      $("judged-caption").textContent = `${queries.length} on ${index}`;
      $("judged-list").replaceChildren(...queries.map((q) => el("li", {},
        el("button", { type: "button", title: `${q.relevant} relevant of ${q.judged} judged`,
          onclick: () => { $("query").value = q.query; showTab("compare"); runCompare(); } },
        `${q.query} (${q.relevant}/${q.judged})`))));
    } catch (err) { /* shown by api() when it matters */ }
  }

  // --- batch runs --------------------------------------------------------------------------------

  async function refreshSets() {
    try {
      const { sets } = await api("/querysets");
      const select = $("batch-set");
      const previous = select.value;
      select.replaceChildren(...sets.map((set) => el("option", { value: set.name }, `${set.name} (${set.queries})`)));
      if (sets.some((set) => set.name === previous)) select.value = previous;
    } catch (err) { /* api() notified */ }
  }

  function syncBatchSource() {
    const source = $("batch-source").value;
    $("batch-set-box").hidden = source !== "set";
    $("batch-paste-box").hidden = source !== "paste";
    $("batch-beir-box").hidden = source !== "beir";
  }

  async function batchBody() {
    let body;
    try { body = compareOptions(); } catch (err) { notify(err.message); return null; }
    if (body.dsl) {
      notify("A run needs {{query}} in the query DSL: a fixed clause would run the same search for every query.");
      return null;
    }
    const source = $("batch-source").value;
    if (source === "judged") {
      const { queries } = await api("/judgments?index=" + encodeURIComponent(body.index));
      body.queries = queries.map((q) => q.query);
    } else if (source === "set") {
      if (!$("batch-set").value) { notify("No saved query set: paste queries and save them as a set."); return null; }
      body.query_set = $("batch-set").value;  // the proxy reads the set: it can hold thousands of queries
      return body;
    } else if (source === "paste") {
      body.queries = $("batch-queries").value.split("\n").map((q) => q.trim()).filter(Boolean);
    } else {
      body.beir_path = $("beir-path").value.trim();
      body.split = $("beir-split").value.trim() || "test";
      if ($("beir-limit").value) body.limit = Number($("beir-limit").value);
      if (!body.beir_path) { notify("Give the BEIR folder's path on the proxy's machine."); return null; }
      return body;
    }
    if (!body.queries.length) { notify("No queries to run."); return null; }
    return body;
  }

  async function runBatch() {
    const body = await batchBody();
    if (!body) return;
    notify("");
    const controller = new AbortController();
    state.batchAbort = controller;
    $("batch-run").disabled = true;
    $("batch-stop").hidden = false;
    const progress = $("batch-progress");
    progress.hidden = false;
    progress.value = 0;
    $("batch-status").textContent = "starting…";
    document.body.dataset.batch = "running";
    try {
      const response = await api("/batch", { method: "POST", body, raw: true, signal: controller.signal });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.trim()) onBatchEvent(JSON.parse(line));
        }
      }
      document.body.dataset.batch = "done";
    } catch (err) {
      document.body.dataset.batch = "failed";
      if (err.name !== "AbortError") notify("The run failed: " + err.message);
      else $("batch-status").textContent = "stopped";
    } finally {
      $("batch-run").disabled = false;
      $("batch-stop").hidden = true;
      state.batchAbort = null;
    }
  }

  function onBatchEvent(event) {
    if (event.type === "progress") {
      const progress = $("batch-progress");
      progress.max = Math.max(event.total, 1);
      progress.value = event.done;
      $("batch-status").textContent = `${event.done} / ${event.total} queries`;
    } else if (event.type === "result") {
      renderBatch(event);
    }
  }

  function renderBatch(result) {
    $("batch-result").hidden = false;
    $("batch-mean-lexical").textContent = fmt(result.mean.lexical);
    $("batch-mean-reranked").textContent = fmt(result.mean.reranked);
    $("batch-mean-delta").textContent = signed(result.mean.delta);
    $("batch-wins").textContent = String(result.wins);
    $("batch-losses").textContent = String(result.losses);
    $("batch-ties").textContent = String(result.ties);
    $("batch-unjudged").textContent = String(result.queries - result.evaluated);
    $("batch-status").textContent = `${result.queries} queries, ${result.evaluated} with relevant judgments` +
      (result.errors ? `, ${result.errors} with errors` : "");
    drawChart(result.rows.filter((r) => r.delta !== null));
    const body = $("batch-table").tBodies[0];
    body.replaceChildren(...result.rows.map((row, i) => {
      const kind = row.delta === null ? "" : row.delta > 1e-9 ? "win" : row.delta < -1e-9 ? "loss" : "";
      return el("tr", { dataset: { id: row.id, kind: kind || "none" }, title: row.error || null,
        onclick: () => { $("query").value = row.query; showTab("compare"); runCompare(); } },
        el("td", {}, String(i + 1)), el("td", {}, row.query), el("td", {}, fmt(row.lexical)),
        el("td", {}, fmt(row.reranked)), el("td", { class: kind }, row.error && row.delta === null ? "error" : signed(row.delta)),
        el("td", {}, `${row.relevant}/${row.judged}`));
    }));
  }

  /** An SVG element (charts are drawn here, no library: nothing is fetched but the proxy's answers). */
  function svg(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** Bars of per-query nDCG change, biggest win on the left, biggest loss on the right. */
  function drawChart(rows) {
    const sorted = [...rows].sort((a, b) => b.delta - a.delta);
    const width = Math.max($("batch-chart").clientWidth, 300), height = 220, left = 44, right = 10, top = 10, bottom = 10;
    const peak = Math.max(0.05, ...sorted.map((r) => Math.abs(r.delta)));
    const mid = top + (height - top - bottom) / 2;
    const scale = (height - top - bottom) / 2 / peak;
    const step = sorted.length ? Math.min((width - left - right) / sorted.length, 36) : 0;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "per-query change in nDCG@10" });
    chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: mid, y2: mid }));
    chart.append(svg("text", { x: 2, y: top + 10 }, "+" + peak.toFixed(2)));
    chart.append(svg("text", { x: 2, y: mid + 4 }, "0"));
    chart.append(svg("text", { x: 2, y: height - bottom }, "−" + peak.toFixed(2)));
    sorted.forEach((row, i) => {
      const h = Math.max(Math.abs(row.delta) * scale, row.delta === 0 ? 1 : 0);
      const kind = row.delta > 1e-9 ? "win" : row.delta < -1e-9 ? "loss" : "tie";
      const bar = svg("rect", { class: kind, x: left + i * step + step * 0.1, width: Math.max(step * 0.8, 0.5),
        y: row.delta >= 0 ? mid - h : mid, height: h });
      bar.append(svg("title", {}, `${row.query}: ${signed(row.delta)} (${fmt(row.lexical)} → ${fmt(row.reranked)})`));
      chart.append(bar);
    });
    $("batch-chart").replaceChildren(chart);
  }

  async function saveSet() {
    const name = $("set-name").value.trim();
    const queries = $("batch-queries").value.split("\n").map((q) => q.trim()).filter(Boolean);
    if (!name || !queries.length) { notify("Give the set a name and at least one query."); return; }
    try {
      await api("/querysets/" + encodeURIComponent(name), { method: "PUT", body: { queries } });
      notify("");
      await refreshSets();
    } catch (err) { notify("Saving the set failed: " + err.message); }
  }

  async function deleteSet() {
    const name = $("set-name").value.trim();
    if (!name) return;
    try { await api("/querysets/" + encodeURIComponent(name), { method: "DELETE" }); await refreshSets(); }
    catch (err) { notify("Deleting the set failed: " + err.message); }
  }

  // --- the online experiment's report ------------------------------------------------------------

  const REPORT = "/_rerank/admin/experiment";
  const intervalText = (i) => (i ? `95% [${fmt(i.low)}, ${fmt(i.high)}]` : "");

  function experimentPath() {
    const params = new URLSearchParams({ events: $("exp-events").value.trim() || "ubi_events" });
    if ($("exp-index").value) params.set("index", $("exp-index").value);
    return REPORT + "?" + params;
  }

  function syncExperimentIndices() {
    const select = $("exp-index");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "the one index that judged each query"),
      ...state.indices.map((index) => el("option", { value: index.name }, index.name)));
    if (state.indices.some((index) => index.name === chosen)) select.value = chosen;
  }

  async function refreshExperiment() {
    const seq = ++state.experimentSeq;
    document.body.dataset.experiment = "loading";
    $("exp-refresh").disabled = true;
    $("exp-status").textContent = "reading the UBI indices…";
    try {
      const report = await api(experimentPath());
      if (seq !== state.experimentSeq) return;
      if (report.searches) renderExperiment(report);
      else showExperimentEmpty(`the UBI queries index holds no search yet (RERANK_EXPERIMENT=${report.experiment})`);
      document.body.dataset.experiment = (report.searches ? "ready-" : "empty-") + seq;
    } catch (err) {
      if (seq !== state.experimentSeq) return;
      if (err.type === "proxy_report_exception") {  // an index the report reads is not there (or refused)
        showExperimentEmpty(err.message);
        document.body.dataset.experiment = "empty-" + seq;
      } else {
        $("exp-status").textContent = "";
        notify("The experiment report failed: " + err.message);
        document.body.dataset.experiment = "failed-" + seq;
      }
    } finally {
      if (seq === state.experimentSeq) $("exp-refresh").disabled = false;
    }
  }

  function showExperimentEmpty(reason) {
    $("exp-report").hidden = true;
    $("exp-empty").hidden = false;
    $("exp-empty-reason").textContent = reason;
    $("exp-status").textContent = "";
  }

  function renderExperiment(report) {
    notify("");
    $("exp-empty").hidden = true;
    $("exp-report").hidden = false;
    $("exp-setting").textContent = report.experiment || "–";
    $("exp-searches").textContent = String(report.searches);
    const arms = Object.values(report.arms);
    $("exp-arms").tBodies[0].replaceChildren(...arms.map((arm) => el("tr", { dataset: { arm: arm.arm } },
      el("td", {}, arm.arm), el("td", {}, String(arm.searches)), el("td", {}, fmt(arm.ctr_at_10)),
      el("td", {}, fmt(arm.mrr)), el("td", {}, fmt(arm.abandonment)))));
    renderInterleaving(report.interleaving);
    renderAb(report.ab);
    renderShadow(report.shadow);
    drawExperimentPlot(arms, intervalRows(report));
    $("exp-status").textContent = `read at ${new Date().toLocaleTimeString()}`;
  }

  /** Shows a part's numbers, or its "none" line when the records hold nothing of its kind. */
  function showPart(id, present) {
    $(id).classList.toggle("off", !present);
    $(id).querySelector(".none").hidden = present;
  }

  function renderInterleaving(part) {
    showPart("exp-interleaving", !!part);
    if (!part) return;
    $("exp-wins").textContent = String(part.wins);
    $("exp-losses").textContent = String(part.losses);
    $("exp-ties").textContent = String(part.ties);
    $("exp-preference").textContent = fmt(part.preference);
    $("exp-preference-interval").textContent = part.interval ? intervalText(part.interval) : "(no decided search)";
  }

  function renderAb(part) {
    showPart("exp-ab", !!part);
    if (!part) return;
    $("exp-ab-reranked").textContent = fmt(part.reranked_ctr);
    $("exp-ab-lexical").textContent = fmt(part.lexical_ctr);
    $("exp-ab-difference").textContent = signed(part.difference);
    $("exp-ab-interval").textContent = intervalText(part.interval);
  }

  function renderShadow(part) {
    showPart("exp-shadow", !!part);
    if (!part) return;
    $("exp-shadow-searches").textContent = String(part.searches);
    $("exp-shadow-overlap").textContent = fmt(part.overlap_at_10);
    $("exp-shadow-judged").textContent = String(part.judged_searches);
    $("exp-ndcg-served").textContent = fmt(part.ndcg_at_10_served);
    $("exp-ndcg-shadow").textContent = fmt(part.ndcg_at_10_shadow);
    $("exp-shadow-ambiguous").textContent = String(part.ambiguous_searches ?? 0);
  }

  /** The intervals to draw, each against its no-difference mark. */
  function intervalRows(report) {
    const rows = [];
    if (report.ab) {
      rows.push({ kind: "ab", label: "A/B: CTR@10 reranked − lexical", point: report.ab.difference,
        interval: report.ab.interval, mark: 0 });
    }
    if (report.interleaving && report.interleaving.interval) {
      rows.push({ kind: "interleaving", label: "interleaving: share of decided searches won by reranked",
        point: report.interleaving.preference, interval: report.interleaving.interval, mark: 0.5 });
    }
    return rows;
  }

  /** The scale of an interval row: a preference lives in [0, 1]; a difference gets a range centred
   * on 0, wide enough for its interval, so the eye reads the distance from "no difference". */
  function rowDomain(row) {
    if (row.mark === 0.5) return [0, 1];
    const reach = Math.max(0.05, Math.abs(row.interval.low), Math.abs(row.interval.high)) * 1.1;
    return [-reach, reach];
  }

  /** Bars of CTR@10 per arm, then one line per interval with its point and the no-difference mark. */
  function drawExperimentPlot(arms, rows) {
    const width = Math.max($("exp-plot").clientWidth, 320), left = 44, right = 16;
    const barTop = 32, barHeight = 120, rowHeight = 58, rowsTop = barTop + barHeight + 40;
    const height = rowsTop + rows.length * rowHeight + 4;
    const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
      "aria-label": "CTR@10 per arm and the experiment's 95% intervals" });
    const base = barTop + barHeight;
    plot.append(svg("text", { x: 2, y: 12 }, "CTR@10"));
    plot.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: base, y2: base }));
    plot.append(svg("text", { x: 2, y: barTop + 4 }, "1"));
    plot.append(svg("text", { x: 2, y: base + 4 }, "0"));
    const step = arms.length ? Math.min((width - left - right) / arms.length, 120) : 0;
    arms.forEach((arm, i) => {
      const h = arm.ctr_at_10 * barHeight, x = left + i * step + step * 0.2, w = step * 0.6;
      const bar = svg("rect", { class: "bar " + arm.arm, x, width: w, y: base - h, height: h,
        "data-arm": arm.arm, "data-value": arm.ctr_at_10 });
      bar.append(svg("title", {}, `${arm.arm}: CTR@10 ${fmt(arm.ctr_at_10)} over ${arm.searches} searches`));
      plot.append(bar);
      plot.append(svg("text", { class: "value", x: x + w / 2, y: base - h - 4, "text-anchor": "middle" }, fmt(arm.ctr_at_10)));
      plot.append(svg("text", { x: x + w / 2, y: base + 16, "text-anchor": "middle" }, arm.arm));
    });
    rows.forEach((row, i) => drawIntervalRow(plot, row, rowsTop + i * rowHeight, left, width - right));
    $("exp-plot").replaceChildren(plot);
  }

  function drawIntervalRow(plot, row, top, x0, x1) {
    const [d0, d1] = rowDomain(row);
    const x = (v) => x0 + (Math.min(Math.max(v, d0), d1) - d0) / (d1 - d0) * (x1 - x0);
    const y = top + 30;
    plot.append(svg("text", { x: x0, y: top + 10 }, `${row.label}: ${fmt(row.point)} ${intervalText(row.interval)}`));
    plot.append(svg("line", { class: "axis", x1: x0, x2: x1, y1: y, y2: y }));
    plot.append(svg("text", { x: x0, y: y + 16, "text-anchor": "start" }, fmt(d0, 2)));
    plot.append(svg("text", { x: x1, y: y + 16, "text-anchor": "end" }, fmt(d1, 2)));
    plot.append(svg("line", { class: "no-difference", x1: x(row.mark), x2: x(row.mark), y1: y - 12, y2: y + 12,
      "data-kind": row.kind, "data-value": row.mark }));
    plot.append(svg("text", { x: x(row.mark), y: y + 16, "text-anchor": "middle" }, String(row.mark)));
    const line = svg("line", { class: "interval", x1: x(row.interval.low), x2: x(row.interval.high), y1: y, y2: y,
      "data-kind": row.kind, "data-low": row.interval.low, "data-high": row.interval.high });
    line.append(svg("title", {}, intervalText(row.interval)));
    plot.append(line);
    plot.append(svg("circle", { class: "point", cx: x(row.point), cy: y, r: 4, "data-kind": row.kind }));
  }

  // --- tabs and start-up -------------------------------------------------------------------------

  function showTab(name) {
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
    $("view-compare").hidden = name !== "compare";
    $("view-batch").hidden = name !== "batch";
    $("view-experiment").hidden = name !== "experiment";
    $("controls").hidden = name === "experiment";  // the report reads the UBI log, not the compare options
    if (name === "batch") refreshSets();
    if (name === "experiment") { syncExperimentIndices(); refreshExperiment(); }
  }

  function wire() {
    $("controls").addEventListener("submit", (event) => { event.preventDefault(); showTab("compare"); runCompare(); });
    $("index").addEventListener("change", onIndexChange);
    $("provider").addEventListener("change", syncModel);
    $("text-mode").addEventListener("change", syncTextMode);
    $("judge-scale").value = localStorage.getItem(SCALE_KEY) === "graded" ? "graded" : "binary";
    $("judge-scale").addEventListener("change", () => {
      localStorage.setItem(SCALE_KEY, $("judge-scale").value);
      if (state.last) renderColumns();
    });
    $("sign-out").addEventListener("click", signOut);
    for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
    const scoped = () => ($("index").value ? "?index=" + encodeURIComponent($("index").value) : "");
    $("export-qrels").addEventListener("click", () => download("/judgments/qrels.tsv" + scoped(), "qrels.tsv"));
    $("export-queries").addEventListener("click", () => download("/judgments/queries.jsonl" + scoped(), "queries.jsonl"));
    $("export-zip").addEventListener("click", () => download("/judgments/export.zip" + scoped(), "judgments-beir.zip"));
    $("batch-source").addEventListener("change", syncBatchSource);
    $("batch-run").addEventListener("click", runBatch);
    $("batch-stop").addEventListener("click", () => state.batchAbort && state.batchAbort.abort());
    $("save-set").addEventListener("click", saveSet);
    $("delete-set").addEventListener("click", deleteSet);
    $("batch-set").addEventListener("change", () => { $("set-name").value = $("batch-set").value; });
    $("exp-refresh").addEventListener("click", refreshExperiment);
    $("exp-index").addEventListener("change", refreshExperiment);
  }

  async function start() {
    wire();
    syncTextMode();
    syncBatchSource();
    if (!token) { signOut(); return; }
    try {
      const [options, indices] = await Promise.all([api("/options"), api("/indices")]);
      state.options = options;
      state.indices = indices.indices;
      renderProviders();
      renderIndices();
      const place = new URLSearchParams(location.hash.slice(1));
      if (place.get("window")) $("window").value = place.get("window");
      const provider = state.options.providers.find((c) => c.id === place.get("provider") && c.available);
      if (provider) { $("provider").value = provider.id; syncModel(); }
      if (place.get("q")) { $("query").value = place.get("q"); await runCompare(); }
      document.body.dataset.ready = "true";
    } catch (err) {
      notify("The console could not start: " + err.message);
    }
  }

  start();
})();
