// Drives the status page of `leasehold serve` in headless Chromium (Debian's
// package) through playwright-core, for cli/tests/status_page.rs:
//   node status_page.cjs PAGE_URL RESIGN_URL OUT_DIR
// Waits until the page shows A leading, saves a screenshot, resigns A with
// POST RESIGN_URL, waits until the same page (no reload) shows this
// candidate, B, leading, saves another, and prints one JSON line: what the
// page showed before and after, the resign's answer, and every URL the page
// requested.
"use strict";
const { chromium } = require("playwright-core");

const [pageUrl, resignUrl, outDir] = process.argv.slice(2);
const WAIT = 30000;

async function snapshot(page) {
  return page.evaluate(() => {
    const t = (id) => document.getElementById(id).textContent;
    return {
      leader: t("leader"),
      leader_token: t("leader-token"),
      state: t("state"),
      live: t("live"),
      token: t("token"),
      conn: t("conn"),
      election: t("election"),
      timeline: [...document.querySelectorAll("#timeline li")].map((li) => li.textContent),
    };
  });
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    const requests = [];
    page.on("request", (r) => requests.push(r.url()));
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(pageUrl);
    await page.waitForFunction(
      () => document.body.dataset.leader === "A" && document.getElementById("conn").textContent === "live",
      null, { timeout: WAIT });
    const before = await snapshot(page);
    await page.screenshot({ path: outDir + "/status-page-before.png" });
    const r = await fetch(resignUrl, { method: "POST" });
    const resign = { status: r.status, body: await r.text() };
    await page.waitForFunction(
      () => document.body.dataset.leader === "B" && document.body.dataset.state === "leading",
      null, { timeout: WAIT });
    const after = await snapshot(page);
    await page.screenshot({ path: outDir + "/status-page-after.png" });
    console.log(JSON.stringify({ before, after, resign, requests, errors }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(String(e && e.stack || e));
  process.exit(1);
});
