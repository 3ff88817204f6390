// Browser test of the relevance console, in headless Chromium driven by playwright-core.
//
// Started by tests/test_console_browser.py against a real proxy in front of a real engine; all
// inputs come from the environment:
//   CONSOLE_BASE    proxy base URL (http://127.0.0.1:PORT)
//   CONSOLE_TOKEN   the proxy's admin token
//   CONSOLE_CASE    JSON: {index, query, window, lexical: [ids], reranked: [ids], batch: [queries],
//                   beir: {path, queries, lexical, reranked} (a graded BEIR folder and its mean nDCG@10),
//                   template: {dsl, lexical: [ids], reranked: [ids]} (the app's query and its columns)}
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
//   SCREENSHOT      where to write the screenshot of the console (optional)
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.CONSOLE_BASE;
const TOKEN = process.env.CONSOLE_TOKEN;
const CASE = JSON.parse(process.env.CONSOLE_CASE || "{}");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const K = 10;
const TIMEOUT = 30_000;

assert.ok(BASE && TOKEN && CASE.index, "CONSOLE_BASE, CONSOLE_TOKEN and CONSOLE_CASE must be set");

/** What a hit's badge must say, from its positions in the two top-10 lists (0-based). */
function expectedChange(before, after, missing) {
  if (before >= K || after >= K) return missing;
  return after < before ? "up" : after > before ? "down" : "same";
}

function ndcgOneRelevant(ranking, relevant) {
  const at = ranking.slice(0, K).indexOf(relevant);
  return at < 0 ? 0 : 1 / Math.log2(at + 2);
}

/** nDCG@10 with linear gains (trec_eval's ndcg_cut) for graded judgments {id: grade}. */
function gradedNdcg(ranking, grades) {
  const dcg = (gains) => gains.reduce((sum, g, i) => sum + g / Math.log2(i + 2), 0);
  const ideal = Object.values(grades).filter((g) => g > 0).sort((a, b) => b - a).slice(0, K);
  return dcg(ranking.slice(0, K).map((id) => grades[id] || 0)) / dcg(ideal);
}

const profile = mkdtempSync(join(tmpdir(), "console-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1440, height: 1000 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const outside = [];
const consoleErrors = [];
await context.route("**/*", (route) => {
  const url = route.request().url();
  if (url.startsWith(BASE) || url.startsWith("blob:") || url.startsWith("data:")) return route.continue();
  outside.push(url);
  return route.abort();
});
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(TIMEOUT);
page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
page.on("pageerror", (err) => consoleErrors.push(String(err)));

const ids = (side) => page.locator(`#${side}-list li.hit`).evaluateAll((items) => items.map((li) => li.dataset.id));
const badges = (side) => page.locator(`#${side}-list li.hit .change`).evaluateAll((items) => items.map((b) => b.dataset.kind));
const number = async (id) => Number(await page.locator(`#${id}`).textContent());

async function openOptions() {
  await page.locator("#options-panel").evaluate((details) => { details.open = true; });
}

async function metricsSettled() {
  await page.waitForFunction(() => (document.body.dataset.metrics || "").startsWith("ready-"));
}

after(async () => {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
});

test("without a token the console shows only a sign-in form", async () => {
  const response = await page.goto(`${BASE}/_rerank/console`);
  assert.equal(response.status(), 401);
  assert.equal(await page.locator("input[name=token]").count(), 1);
  assert.equal(await page.locator("#controls").count(), 0);
});

test("signing in loads the page and removes the token from the address bar", async () => {
  await page.fill("input[name=token]", TOKEN);
  await Promise.all([page.waitForURL(/\/_rerank\/console/), page.click("button[type=submit]")]);
  await page.waitForFunction(() => document.body.dataset.ready === "true");
  assert.ok(!page.url().includes("token="), `token left in the URL: ${page.url()}`);
  const options = await page.locator("#index option").evaluateAll((o) => o.map((x) => x.value));
  assert.ok(options.includes(CASE.index), `index ${CASE.index} not offered: ${options}`);
  assert.ok(options.every((name) => !name.startsWith(".")), "dot-indices must be hidden");
});

test("a query shows the lexical and reranked columns with rank changes, texts and timings", async () => {
  await page.selectOption("#index", CASE.index);
  await openOptions();
  await page.fill("#window", String(CASE.window));
  await page.fill("#query", CASE.query);
  await page.click("#compare-btn");
  await page.waitForFunction(() => document.querySelectorAll("#reranked-list li.hit").length > 0);
  await metricsSettled();

  const lexical = await ids("lexical");
  const reranked = await ids("reranked");
  assert.deepEqual(lexical, CASE.lexical.slice(0, K), "lexical column = the engine's own top 10");
  assert.deepEqual(reranked, CASE.reranked.slice(0, K), "reranked column = the reranker's order of the window");
  assert.notDeepEqual(lexical, reranked, "the case must change the order");

  const wantLexical = lexical.map((id, i) => expectedChange(i, CASE.reranked.indexOf(id), "out"));
  const wantReranked = reranked.map((id, i) => expectedChange(CASE.lexical.indexOf(id), i, "new"));
  assert.deepEqual(await badges("lexical"), wantLexical);
  assert.deepEqual(await badges("reranked"), wantReranked);
  assert.ok(wantReranked.includes("up") && wantReranked.includes("down"), "the case must move hits both ways");
  if (CASE.reranked.slice(0, K).some((id) => CASE.lexical.indexOf(id) >= K)) {
    assert.ok(wantReranked.includes("new"), "a hit from beyond the lexical top 10 is marked new");
  }
  const up = page.locator("#reranked-list li.hit .change.up").first();
  assert.match(await up.textContent(), /^▲\d+$/);

  const first = page.locator("#reranked-list li.hit").first();
  await first.locator("summary").click();
  const text = await first.locator("pre.hit-text").textContent();
  assert.ok(text.length > 10, "the text sent to the reranker is shown");
  assert.match(await page.locator("#timing-engine").textContent(), /^\d+(\.\d)? ms$/);
  assert.match(await page.locator("#timing-rerank").textContent(), /^\d+(\.\d)? ms$/);
  assert.match(await page.locator("#timing-cache").textContent(), /^(miss|hit|partial) /);
  assert.equal(await page.locator("#ndcg-query-lexical").textContent(), "–", "nothing judged yet");
});

test("judgments are recorded, shown and update nDCG@10 for both columns", async () => {
  const lexical = await ids("lexical");
  const reranked = await ids("reranked");
  // The hit reranking lifts most is relevant, the one it drops most is not: a visible win.
  const lift = (id) => CASE.lexical.indexOf(id) - CASE.reranked.indexOf(id);
  const relevant = [...reranked].sort((a, b) => lift(b) - lift(a))[0];
  const notRelevant = [...lexical].sort((a, b) => lift(a) - lift(b))[0];

  await page.locator(`#reranked-list li.hit[data-id="${relevant}"] button.judge-rel`).click();
  await page.waitForFunction(() => document.querySelector("#judged-count").textContent === "1");
  await metricsSettled();
  await page.locator(`#lexical-list li.hit[data-id="${notRelevant}"] button.judge-non`).click();
  await page.waitForFunction((id) => document.querySelector(`#lexical-list li.hit[data-id="${id}"]`)
    .classList.contains("nonrel"), notRelevant);
  await metricsSettled();

  const wantLexical = ndcgOneRelevant(lexical, relevant);
  const wantReranked = ndcgOneRelevant(reranked, relevant);
  assert.ok(wantReranked > wantLexical, "the case must be a win for the reranker");
  assert.equal(await page.locator("#ndcg-query-lexical").textContent(), wantLexical.toFixed(3));
  assert.equal(await page.locator("#ndcg-query-reranked").textContent(), wantReranked.toFixed(3));
  assert.equal(await page.locator("#ndcg-mean-lexical").textContent(), wantLexical.toFixed(3));
  assert.equal(await page.locator("#ndcg-mean-reranked").textContent(), wantReranked.toFixed(3));
  assert.equal(await number("judged-count"), 1);
  // Both columns show the marks, the judged-queries list has the query.
  assert.equal(await page.locator(`li.hit.rel[data-id="${relevant}"]`).count(), 2);
  await page.waitForFunction((q) => [...document.querySelectorAll("#judged-list button")]
    .some((b) => b.textContent.startsWith(q)), CASE.query);

  // Screenshot of the compare view with judgments, for the README.
  if (process.env.SCREENSHOT) {
    await page.locator("#options-panel").evaluate((details) => { details.open = false; });
    await page.locator("#reranked-list li.hit").first().locator("details").evaluate((d) => { d.open = true; });
    await page.mouse.move(0, 0);
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: false });
  }

  // The judgments survive a reload (they are stored by the proxy, not the page).
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.ready === "true");
  await metricsSettled();
  assert.equal(await page.locator(`#reranked-list li.hit[data-id="${relevant}"] button.judge-rel.on`).count(), 1);
  assert.equal(await page.locator("#ndcg-query-reranked").textContent(), wantReranked.toFixed(3));

  // Clearing a judgment takes it back out of the metric.
  await page.locator(`#reranked-list li.hit[data-id="${relevant}"] button.judge-rel`).click();
  await page.waitForFunction(() => document.querySelector("#judged-count").textContent === "0");
  await page.locator(`#reranked-list li.hit[data-id="${relevant}"] button.judge-rel`).click();
  await page.waitForFunction(() => document.querySelector("#judged-count").textContent === "1");
});

test("switching the scorer to lexical makes both columns equal", async () => {
  await openOptions();
  await page.selectOption("#provider", "lexical");
  await page.click("#compare-btn");
  await page.waitForFunction(() => document.querySelector("#reranked-caption").textContent.startsWith("no reranking"));
  assert.deepEqual(await ids("reranked"), await ids("lexical"));
  assert.ok((await badges("reranked")).every((kind) => kind === "same"));
  await page.selectOption("#provider", "configured");
  await page.click("#compare-btn");
  await page.waitForFunction(() => !document.querySelector("#reranked-caption").textContent.startsWith("no reranking"));
});

test("graded judgments (0-3) are given on the page and count as grades in nDCG@10", async () => {
  await openOptions();
  await page.selectOption("#judge-scale", "graded");
  await page.waitForFunction(() => document.querySelectorAll("#reranked-list button.judge-grade").length > 0);
  assert.equal(await page.locator("#reranked-list li.hit").first().locator("button.judge-grade").count(), 4);
  const lexical = await ids("lexical");
  const reranked = await ids("reranked");
  const lift = (id) => CASE.lexical.indexOf(id) - CASE.reranked.indexOf(id);
  const best = [...reranked].sort((a, b) => lift(b) - lift(a))[0];
  const worst = [...lexical].sort((a, b) => lift(a) - lift(b))[0];
  // The hit ranked just below `best` gets the higher grade, so the reranked order is not the ideal one.
  const other = reranked.slice(reranked.indexOf(best) + 1).find((id) => id !== worst);
  assert.ok(other, "a hit ranks below the most lifted one");
  const grades = { [best]: 2, [other]: 3, [worst]: 0 };
  for (const [id, grade] of [[best, 2], [other, 3]]) {
    await page.locator(`#reranked-list li.hit[data-id="${id}"] button.judge-grade[data-grade="${grade}"]`).click();
    await page.waitForFunction(([hit, g]) => document.querySelector(`#reranked-list li.hit[data-id="${hit}"]`)
      .dataset.grade === String(g), [id, grade]);
  }
  const wantLexical = gradedNdcg(lexical, grades).toFixed(3);
  const wantReranked = gradedNdcg(reranked, grades).toFixed(3);
  const binary = gradedNdcg(reranked, { [best]: 1, [other]: 1, [worst]: 0 }).toFixed(3);
  assert.notEqual(wantReranked, binary, "the case must tell graded from binary nDCG");
  await page.waitForFunction(([lex, rr]) => document.querySelector("#ndcg-query-lexical").textContent === lex
    && document.querySelector("#ndcg-query-reranked").textContent === rr, [wantLexical, wantReranked]);
  assert.equal(await page.locator(`#reranked-list li.hit[data-id="${other}"] button.judge-grade.on`).textContent(), "3");
  assert.equal(await page.locator(`li.hit[data-id="${best}"]`).first().getAttribute("data-grade"), "2");
});

test("a query set run shows a table and a chart of per-query nDCG changes", async () => {
  await page.click("#tab-batch");
  await page.selectOption("#batch-source", "paste");
  await page.fill("#batch-queries", CASE.batch.join("\n"));
  await page.fill("#set-name", "browser-smoke");
  await page.click("#save-set");
  await page.waitForFunction(() => [...document.querySelectorAll("#batch-set option")].some((o) => o.value === "browser-smoke"));
  await page.selectOption("#batch-source", "set");
  await page.selectOption("#batch-set", "browser-smoke");
  await page.click("#batch-run");
  await page.waitForFunction(() => document.body.dataset.batch === "done");
  const rows = await page.locator("#batch-table tbody tr").evaluateAll((trs) => trs.map((tr) => ({
    query: tr.children[1].textContent, kind: tr.dataset.kind })));
  assert.equal(rows.length, CASE.batch.length);
  assert.equal(rows[0].query, CASE.query, "the only judged query (a win) comes first");
  assert.equal(rows[0].kind, "win");
  assert.equal(await page.locator("#batch-chart svg rect.win").count(), 1);
  assert.equal(await page.locator("#batch-progress").evaluate((p) => `${p.value}/${p.max}`), `${rows.length}/${rows.length}`);
  assert.equal(await number("batch-wins"), 1);
  if (process.env.SCREENSHOT_BATCH) await page.screenshot({ path: process.env.SCREENSHOT_BATCH });
});

test("a BEIR folder is run through its labelled fields, graded qrels counted as grades", async () => {
  await page.selectOption("#batch-source", "beir");
  await page.getByLabel("BEIR folder on the proxy's machine", { exact: true }).fill(CASE.beir.path);
  await page.getByLabel("Split", { exact: true }).fill("test");
  await page.getByLabel("At most (queries)", { exact: true }).fill(String(CASE.beir.queries));
  await page.click("#batch-run");
  await page.waitForFunction(() => document.body.dataset.batch === "done");
  assert.equal(await page.locator("#batch-table tbody tr").count(), CASE.beir.queries);
  assert.equal(await page.locator("#batch-mean-lexical").textContent(), CASE.beir.lexical);
  assert.equal(await page.locator("#batch-mean-reranked").textContent(), CASE.beir.reranked);
});

test("the app's query DSL with {{query}} is the search of both columns", async () => {
  await page.click("#tab-compare");
  await openOptions();
  await page.getByLabel(/Query DSL/).fill(CASE.template.dsl);
  await page.fill("#query", CASE.query);
  await page.click("#compare-btn");
  await page.waitForFunction(() => document.querySelector("#search-json").textContent.includes("range"));
  const sent = JSON.parse(await page.locator("#search-json").textContent());
  assert.equal(sent.query.bool.must.multi_match.query, CASE.query, "{{query}} holds the typed text");
  assert.equal(sent.size, CASE.window);
  assert.deepEqual(await ids("lexical"), CASE.template.lexical.slice(0, K));
  assert.deepEqual(await ids("reranked"), CASE.template.reranked.slice(0, K));
  assert.notDeepEqual(CASE.template.lexical.slice(0, K), CASE.lexical.slice(0, K), "the template must search differently");
});

test("the page never contacted anything but the proxy and logged no errors", () => {
  assert.deepEqual(outside, []);
  assert.deepEqual(consoleErrors.filter((e) => !e.includes("401")), []);
});
