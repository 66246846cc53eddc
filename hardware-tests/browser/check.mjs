// Loads care-record pages from a running appliance in headless Chromium (Debian's, driven by
// playwright-core over mTLS with the partner's client certificate) and checks each as a
// clinician's browser would show it: no console error, no request beyond the page itself, no
// horizontal scroll at phone and desktop widths, every requested section heading, no WCAG 2.1 AA
// violation (axe-core), printable to PDF, and hostile record text shown as text.
//
// Usage: node check.mjs JOB.json   (JOB is written by hardware-tests/tests/e2e_browser.rs)
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const WIDTHS = [360, 1280];
const failures = [];
const fail = (page, width, what) => failures.push(`${page.name} @${width}px: ${what}`);

const browser = await chromium.launch({
  executablePath: job.chromium,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  for (const target of job.pages) {
    for (const width of WIDTHS) {
      await check(target, width);
    }
  }
} finally {
  await browser.close();
}

if (failures.length > 0) {
  console.error(failures.join("\n"));
  process.exit(1);
}
console.log(`browser checks passed: ${job.pages.length} pages at ${WIDTHS.join(" and ")} px`);

async function check(target, width) {
  const context = await browser.newContext({
    viewport: { width, height: 900 },
    ignoreHTTPSErrors: true,
    clientCertificates: [{ origin: job.origin, certPath: job.cert, keyPath: job.key }],
  });
  const page = await context.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("console", (m) => {
    if (m.type() === "error") fail(target, width, `console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => fail(target, width, `page error: ${e.message}`));
  page.on("dialog", async (d) => {
    fail(target, width, `a dialog opened (script ran): ${d.message()}`);
    await d.dismiss();
  });
  // The view is the structured-record POST with GP Connect headers: the navigation carries them.
  await page.route("**/*", async (route) => {
    if (route.request().url() === target.url && route.request().isNavigationRequest()) {
      await route.continue({
        method: "POST",
        headers: { ...route.request().headers(), ...target.headers },
        postData: target.body,
      });
    } else {
      fail(target, width, `request attempted: ${route.request().url()}`);
      await route.abort();
    }
  });
  const response = await page.goto(target.url);
  if (!response || response.status() !== 200) {
    fail(target, width, `status ${response && response.status()}`);
    await context.close();
    return;
  }
  const csp = (await response.allHeaders())["content-security-policy"] || "";
  if (!csp.includes("default-src 'none'")) fail(target, width, `CSP: ${csp}`);
  if (requests.length !== 1) fail(target, width, `requests: ${requests.join(", ")}`);

  const headings = await page.locator("h2").allTextContents();
  for (const section of target.sections) {
    if (!headings.includes(section)) fail(target, width, `no section heading "${section}"`);
  }
  const warnings = await page.locator("section .warning").count();
  if (target.withheld && warnings === 0) fail(target, width, "no withheld-items warning");
  if (target.override && (await page.locator("[role=alert]").count()) !== 1) {
    fail(target, width, "no override notice");
  }
  const scroll = await page.evaluate(() => ({
    content: document.documentElement.scrollWidth,
    viewport: document.documentElement.clientWidth,
  }));
  if (scroll.content > scroll.viewport) {
    fail(target, width, `horizontal scroll: ${scroll.content} > ${scroll.viewport}`);
  }
  const active = await page.evaluate(() => document.querySelectorAll("script, img, iframe, object, embed, link").length);
  if (active !== 0) fail(target, width, `${active} script/img/iframe/object/embed/link elements`);
  for (const text of target.shown || []) {
    const found = await page.evaluate((t) => document.body.innerText.includes(t), text);
    if (!found) fail(target, width, `text not shown as text: ${text}`);
  }

  // axe runs through the DevTools protocol, which the page's CSP does not govern.
  await page.evaluate(axeSource);
  const results = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }),
  );
  for (const v of results.violations) {
    fail(target, width, `axe ${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).join("; ")}`);
  }

  if (job.screenshots) {
    mkdirSync(job.screenshots, { recursive: true });
    // The top of the page, as a clinician first sees it (whole records run to many screens).
    const height = Math.min(await page.evaluate(() => document.documentElement.scrollHeight), 1500);
    await page.screenshot({
      path: `${job.screenshots}/${target.name}-${width}.png`,
      fullPage: true,
      clip: { x: 0, y: 0, width, height },
    });
  }
  if (width === WIDTHS[WIDTHS.length - 1]) {
    await page.emulateMedia({ media: "print" });
    const pdf = await page.pdf({ format: "A4", printBackground: false });
    if (pdf.length < 1000 || pdf.subarray(0, 5).toString() !== "%PDF-") fail(target, width, "print to PDF failed");
    if (job.screenshots) writeFileSync(`${job.screenshots}/${target.name}.pdf`, pdf);
  }
  await context.close();
}
