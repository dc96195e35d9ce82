// Drive the OHIF viewer served by pacs-lite in headless Chromium.
//
//   node ohif.mjs <base-url> <out-dir> <study-uid>...
//   OHIF_URLS='{"label": "<viewer url>", ...}' node ohif.mjs <base-url> <out-dir>
//
// With OHIF_URLS, the study list is skipped and each given viewer URL (as the viewer-url
// API returns them, token included) is opened instead; screenshots are named by label.
// With OHIF_APP_CONFIG (a file), the browser gets that file for /app-config.js instead of
// the server's (another data source configuration, say).
//
// Opens the study list and screenshots it, then opens each study in the viewer and
// screenshots its first viewport's canvas. Prints one JSON report on stdout: the study
// list's text, per study whether a canvas appeared, plus every failed HTTP request,
// console error and error notification seen, and the count of requests to the server by
// kind (wado for WADO-URI, frames, metadata, qido, other). The Python test judges the
// report and the pixels.
import { chromium } from 'playwright-core';

const [base, outDir, ...studies] = process.argv.slice(2);
const report = { list: null, studies: {}, httpErrors: [], consoleErrors: [], notifications: [], requests: {} };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on('console', m => { if (m.type() === 'error') report.consoleErrors.push(m.text().slice(0, 500)); });
page.on('response', r => { if (r.status() >= 400) report.httpErrors.push(`${r.status()} ${r.url()}`); });
page.on('requestfailed', r => report.httpErrors.push(`failed ${r.url()} ${r.failure()?.errorText}`));
page.on('request', r => {
  const url = new URL(r.url());
  if (url.origin !== new URL(base).origin) return;
  const p = url.pathname;
  const kind = p === '/wado' ? 'wado' : p.includes('/frames/') ? 'frames' : p.endsWith('/metadata') ? 'metadata'
    : p.startsWith('/dicom-web/') ? 'qido' : 'other';
  report.requests[kind] = (report.requests[kind] || 0) + 1;
});
if (process.env.OHIF_APP_CONFIG) {
  const { readFileSync } = await import('node:fs');
  const body = readFileSync(process.env.OHIF_APP_CONFIG, 'utf8');
  await page.route('**/app-config.js', route =>
    route.fulfill({ status: 200, contentType: 'application/javascript; charset=utf-8', body }));
}

async function dismissOverlays() {
  for (const label of ['Skip all', 'Confirm and hide']) {
    const button = page.getByText(label, { exact: true });
    if (await button.count()) await button.first().click().catch(() => {});
  }
}

async function collectNotifications() {
  const texts = await page.$$eval('[data-sonner-toast][data-type="error"], [role="alert"]',
    els => els.map(e => e.textContent.trim()).filter(t => t.length > 0));
  report.notifications.push(...texts);
}

async function openViewer(url, name) {
  await page.goto(url, { waitUntil: 'networkidle', timeout: 60000 });
  const canvas = page.locator('canvas.cornerstone-canvas').first();
  const appeared = await canvas.waitFor({ state: 'visible', timeout: 30000 }).then(() => true, () => false);
  await page.waitForLoadState('networkidle');
  await page.waitForTimeout(2500);
  await dismissOverlays();
  await page.waitForTimeout(500);
  if (appeared) await canvas.screenshot({ path: `${outDir}/${name}.png` });
  await page.screenshot({ path: `${outDir}/${name}-page.png` });
  await collectNotifications();
  report.studies[name] = { canvas: appeared };
}

try {
  if (process.env.OHIF_URLS) {
    for (const [label, url] of Object.entries(JSON.parse(process.env.OHIF_URLS))) {
      await openViewer(url, label);
    }
    throw 'done';
  }
  await page.goto(`${base}/viewer`, { waitUntil: 'networkidle', timeout: 60000 });
  await page.waitForSelector('table tbody tr, [data-cy="study-list-results"] tr, [role="row"]', { timeout: 30000 })
    .catch(() => {});
  await page.waitForTimeout(1000);
  await dismissOverlays();
  report.list = await page.evaluate(() => document.body.innerText);
  await page.screenshot({ path: `${outDir}/study-list.png` });
  await collectNotifications();

  for (const uid of studies) {
    await openViewer(`${base}/viewer/viewer?StudyInstanceUIDs=${uid}`, uid);
  }
} catch (e) {
  if (e !== 'done') report.fatal = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
