// Drive the OHIF viewer served by pacs-lite in headless Chromium.
//
//   node ohif.mjs <base-url> <out-dir> <study-uid>...
//   OHIF_URLS='{"label": "<viewer url>", ...}' node ohif.mjs <base-url> <out-dir>
//
// With OHIF_URLS, the study list is skipped and each given viewer URL (as the viewer-url
// API returns them, token included) is opened instead; screenshots are named by label.
// OHIF_SPKI (base64 SHA-256 of a server key's SubjectPublicKeyInfo) makes Chromium trust
// that HTTPS server's certificate; OHIF_HTTP1=1 turns HTTP/2 off in Chromium. Each study's
// report tells the protocols its requests used (h2, http/1.1) and, in milliseconds from
// navigation, when the first image was drawn and when the last image request finished.
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

const args = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];
if (process.env.OHIF_SPKI) args.push(`--ignore-certificate-errors-spki-list=${process.env.OHIF_SPKI}`);
if (process.env.OHIF_HTTP1) args.push('--disable-http2');
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args });
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
// Every request's timing is kept (Chromium keeps 250 by default).
await page.addInitScript(() => performance.setResourceTimingBufferSize(100000));
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

// When the first viewport canvas has non-background pixels, in ms from navigation start.
async function firstImage() {
  await page.waitForFunction(() => {
    const c = document.querySelector('canvas.cornerstone-canvas');
    if (!c || !c.width) return false;
    const ctx = c.getContext('2d', { willReadFrequently: true });
    if (!ctx) return true; // a WebGL canvas: visible is all we can tell here
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4 * 97) if (d[i] || d[i + 1] || d[i + 2]) return true;
    return false;
  }, null, { timeout: 30000, polling: 20 });
  return page.evaluate(() => performance.now());
}

// The protocols of the page's requests, and when the last image request finished.
async function timings() {
  return page.evaluate(() => {
    const entries = performance.getEntriesByType('resource');
    const protocols = {};
    for (const e of entries) protocols[e.nextHopProtocol || 'unknown'] = (protocols[e.nextHopProtocol || 'unknown'] || 0) + 1;
    const images = entries.filter(e => /\/frames\/|\/instances\/[^/]+$|\/wado\?/.test(e.name));
    return { protocols, imageRequests: images.length, lastImageMs: Math.max(0, ...images.map(e => e.responseEnd)) };
  });
}

async function openViewer(url, name) {
  await page.goto(url, { waitUntil: 'commit', timeout: 60000 });
  const firstImageMs = await firstImage().catch(() => null);
  await page.waitForLoadState('networkidle', { timeout: 120000 }).catch(() => {});
  const canvas = page.locator('canvas.cornerstone-canvas').first();
  const appeared = firstImageMs !== null
    || await canvas.waitFor({ state: 'visible', timeout: 5000 }).then(() => true, () => false);
  const timing = await timings();
  await page.waitForLoadState('networkidle');
  await page.waitForTimeout(2500);
  await dismissOverlays();
  await page.waitForTimeout(500);
  if (appeared) await canvas.screenshot({ path: `${outDir}/${name}.png` });
  await page.screenshot({ path: `${outDir}/${name}-page.png` });
  await collectNotifications();
  report.studies[name] = { canvas: appeared, firstImageMs, ...timing };
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
