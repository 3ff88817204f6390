// Browser test of the console's Experiment view, in headless Chromium driven by playwright-core.
//
// Started by tests/test_console_experiment.py against two real proxies in front of a real engine;
// all inputs come from the environment:
//   CONSOLE_BASE        a proxy whose UBI queries index holds the seeded searches
//   CONSOLE_EMPTY_BASE  a proxy whose UBI queries index does not exist (the empty state)
//   CONSOLE_TOKEN       both proxies' admin token
//   CONSOLE_CASE        JSON: {events, judged_index, other_index, missing_queries, expected: {setting, arms:
//                       [[arm, searches, ctr, mrr, abandonment]], interleaving, ab, shadow, ctr, intervals}}
//   CHROMIUM            the browser binary (default /usr/bin/chromium)
//   SCREENSHOT          where to write a screenshot of the view (optional)
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.CONSOLE_BASE;
const EMPTY_BASE = process.env.CONSOLE_EMPTY_BASE;
const TOKEN = process.env.CONSOLE_TOKEN;
const CASE = JSON.parse(process.env.CONSOLE_CASE || "{}");
const WANT = CASE.expected;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = 30_000;

assert.ok(BASE && EMPTY_BASE && TOKEN && WANT, "CONSOLE_BASE, CONSOLE_EMPTY_BASE, CONSOLE_TOKEN and CONSOLE_CASE must be set");

const profile = mkdtempSync(join(tmpdir(), "console-experiment-chromium-"));
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
  if (url.startsWith(BASE) || url.startsWith(EMPTY_BASE) || url.startsWith("data:")) return route.continue();
  outside.push(url);
  return route.abort();
});
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(TIMEOUT);
page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
page.on("pageerror", (err) => consoleErrors.push(String(err)));

const text = (selector) => page.locator(selector).textContent();
const attr = (selector, name) => page.locator(selector).getAttribute(name);
const close = (got, want, what) => assert.ok(Math.abs(Number(got) - want) < 1e-9, `${what}: ${got}, want ${want}`);

/** Open the console on `base`, then its Experiment view reading CASE.events, and wait for the answer. */
async function openExperiment(base) {
  await page.goto(`${base}/_rerank/console?token=${encodeURIComponent(TOKEN)}`);
  await page.waitForFunction(() => document.body.dataset.ready === "true");
  await page.click("#tab-experiment");
  await settled();  // the first read, of the default events index
  await page.getByLabel("Click events index", { exact: true }).fill(CASE.events);
  await refresh();
}

async function settled() {
  await page.waitForFunction(() => /^(ready|empty|failed)-/.test(document.body.dataset.experiment || ""));
  return page.evaluate(() => document.body.dataset.experiment);
}

async function refresh() {
  await page.click("#exp-refresh");  // sets "loading" before the click returns
  return settled();
}

after(async () => {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
});

test("the Experiment view shows the setting and the table per arm", async () => {
  await openExperiment(BASE);
  assert.match(await page.evaluate(() => document.body.dataset.experiment), /^ready-/);
  assert.ok(await page.locator("#controls").isHidden(), "the compare controls are not the report's");
  assert.ok(await page.locator("#exp-empty").isHidden());
  assert.equal(await text("#exp-setting"), WANT.setting);
  assert.equal(await text("#exp-searches"), String(WANT.searches));
  const rows = await page.locator("#exp-arms tbody tr").evaluateAll((trs) => trs.map((tr) =>
    [...tr.children].map((td) => td.textContent)));
  assert.deepEqual(rows, WANT.arms);
});

test("interleaving, A/B and shadow show their numbers and 95% intervals", async () => {
  const i = WANT.interleaving;
  assert.deepEqual([await text("#exp-wins"), await text("#exp-losses"), await text("#exp-ties")], [i.wins, i.losses, i.ties]);
  assert.equal(await text("#exp-preference"), i.preference);
  assert.equal(await text("#exp-preference-interval"), i.interval);
  const ab = WANT.ab;
  assert.deepEqual([await text("#exp-ab-reranked"), await text("#exp-ab-lexical")], [ab.reranked, ab.lexical]);
  assert.equal(await text("#exp-ab-difference"), ab.difference);
  assert.equal(await text("#exp-ab-interval"), ab.interval);
  const s = WANT.shadow;
  assert.deepEqual([await text("#exp-shadow-searches"), await text("#exp-shadow-overlap"),
    await text("#exp-shadow-judged"), await text("#exp-ndcg-served"), await text("#exp-ndcg-shadow")],
  [s.searches, s.overlap, s.judged, s.served, s.shadow]);
});

test("the plot draws CTR@10 bars and each interval against its no-difference mark", async () => {
  const bars = await page.locator("#exp-plot svg rect.bar").evaluateAll((rects) => rects.map((r) => ({
    arm: r.dataset.arm, value: Number(r.dataset.value), height: Number(r.getAttribute("height")) })));
  assert.deepEqual(bars.map((b) => b.arm), WANT.arms.map((row) => row[0]));
  for (const bar of bars) close(bar.value, WANT.ctr[bar.arm], `CTR@10 of ${bar.arm}`);
  const byArm = Object.fromEntries(bars.map((b) => [b.arm, b.height]));
  close(byArm.reranked / byArm.lexical, WANT.ctr.reranked / WANT.ctr.lexical, "bar heights are to scale");

  for (const [kind, want] of Object.entries(WANT.intervals)) {
    const line = `#exp-plot line.interval[data-kind=${kind}]`;
    close(await attr(line, "data-low"), want.low, `${kind} low`);
    close(await attr(line, "data-high"), want.high, `${kind} high`);
    const mark = `#exp-plot line.no-difference[data-kind=${kind}]`;
    assert.equal(Number(await attr(mark, "data-value")), want.mark);
    const [x1, x2, xMark, xPoint] = [Number(await attr(line, "x1")), Number(await attr(line, "x2")),
      Number(await attr(mark, "x1")), Number(await attr(`#exp-plot circle.point[data-kind=${kind}]`, "cx"))];
    assert.ok(x1 < xPoint && xPoint < x2, `${kind}: the point lies inside its interval`);
    assert.equal(x1 < xMark && xMark < x2, want.low < want.mark && want.mark < want.high,
      `${kind}: the mark is drawn inside the interval exactly when the interval holds it`);
  }
  if (process.env.SCREENSHOT) {
    await page.mouse.move(0, 0);
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  }
});

test("choosing whose judgments score the shadow lists reads the report again", async () => {
  await page.selectOption("#exp-index", CASE.other_index);
  await page.waitForFunction(() => document.querySelector("#exp-shadow-judged").textContent === "0");
  assert.equal(await text("#exp-ndcg-served"), "–");
  await page.selectOption("#exp-index", CASE.judged_index);
  await page.waitForFunction((n) => document.querySelector("#exp-shadow-judged").textContent === n, WANT.shadow.judged);
  assert.equal(await text("#exp-ndcg-shadow"), WANT.shadow.shadow);
});

test("without a UBI queries index the view shows the empty state and the engine's reason", async () => {
  await openExperiment(EMPTY_BASE);
  assert.match(await page.evaluate(() => document.body.dataset.experiment), /^empty-/);
  assert.ok(await page.locator("#exp-report").isHidden());
  assert.match((await text("#exp-empty")).replace(/\s+/g, " "), /No UBI queries recorded yet: send searches with ext\.ubi and click events to ubi_events/);
  const reason = await text("#exp-empty-reason");
  assert.ok(reason.includes(CASE.missing_queries) && reason.includes("404"), `the reason names the index: ${reason}`);
  assert.ok(await page.locator("#notice").isHidden(), "an empty log is no error");
});

test("the page never contacted anything but the proxies and logged no errors but the report's 502", () => {
  assert.deepEqual(outside, []);
  assert.deepEqual(consoleErrors.filter((e) => !e.includes("502")), []);
});
