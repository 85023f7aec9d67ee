// A real browser opening wss:// through wsgate: Debian's headless Chromium driven by
// playwright-core (issue 5, "a real browser ... opening wss:// through wsgate with a test CA
// and exchanging messages").
//
// Environment:
//   PAGE_URL       an https:// page to load first, e.g. https://localhost:8443/  (required)
//   WS_URL         the wss:// URL the page opens, e.g. wss://localhost:8443/chat  (required)
//   USER_DATA_DIR  a fresh, empty Chromium profile directory                       (required)
//   MESSAGES       how many messages to send (default 5)
//   TIMEOUT_MS     deadline for the whole run (default 15000)
//   CHROMIUM       the browser binary (default /usr/bin/chromium)
//
// Certificate trust comes from outside this script (the caller's $HOME/.pki/nssdb, which
// Chromium on Linux reads for user-added roots). Nothing here relaxes verification: no
// ignoreHTTPSErrors, no --ignore-certificate-errors. A certificate Chromium does not trust
// fails the navigation (net::ERR_CERT_AUTHORITY_INVALID) and the script exits 1.
//
// The page is loaded over https first so the WebSocket is opened by a secure https:// origin,
// as on a production site: the browser sends `Origin: https://localhost:PORT`, mixed content
// rules forbid ws:// there, and the TLS connection of the navigation is checked too.
//
// Prints one JSON line on stdout and exits 0 when every echo came back:
//   {"ok":true,"status":200,"contentType":"text/plain","body":"...","security":{"protocol":"TLS 1.3","issuer":"...","subjectName":"localhost"},
//    "secureContext":true,"origin":"https://localhost:PORT","sent":[...],"received":[...],
//    "closeCode":1000,"wasClean":true,"closeMs":3,"ms":{"launch":..,"page":..,"ws":..,"close":..}}
// On failure {"ok":false,"error":"...",...} and exit status 1.
'use strict';

const { ARGS, commonEnv, startDeadline, launch, errorText } = require('./browser_common');

const { pageUrl, wsUrl, userDataDir, timeoutMs, executablePath } = commonEnv(15000);
const count = Number(process.env.MESSAGES || 5);

// Runs inside the page: open the WebSocket, send `count` messages one at a time (each after
// the previous echo), close normally and report what came back.
async function exchange({ url, count, timeoutMs }) {
  return await new Promise((resolve) => {
    const sent = [];
    const received = [];
    let closing = null;
    const ws = new WebSocket(url);
    const timer = setTimeout(
      () => resolve({ error: `timeout after ${received.length} echoes`, sent, received }),
      timeoutMs,
    );
    const next = () => {
      const text = `message ${sent.length + 1} from the browser \u2713`;
      sent.push(text);
      ws.send(text);
    };
    ws.onopen = () => next();
    ws.onmessage = (event) => {
      received.push(String(event.data));
      if (sent.length < count) next();
      else {
        closing = performance.now();
        ws.close(1000, 'done');
      }
    };
    ws.onerror = () => received.push('<error event>');
    ws.onclose = (event) => {
      clearTimeout(timer);
      resolve({
        sent,
        received,
        closeCode: event.code,
        wasClean: event.wasClean,
        // From close() to the close event: the close handshake plus the server closing TCP.
        closeMs: closing === null ? null : Math.round(performance.now() - closing),
      });
    };
  });
}

async function main() {
  const result = { ok: false, ms: {} };
  let context = null;
  const t0 = Date.now();
  const deadline = startDeadline(timeoutMs, result, () => context);
  try {
    context = await launch(userDataDir, executablePath, ARGS, timeoutMs);
    result.ms.launch = Date.now() - t0;
    result.browserVersion = context.browser() ? context.browser().version() : null;
    const page = context.pages()[0] || (await context.newPage());
    const t1 = Date.now();
    const response = await page.goto(pageUrl, { timeout: timeoutMs });
    result.ms.page = Date.now() - t1;
    result.status = response.status();
    result.contentType = response.headers()['content-type'] || null;
    result.body = await response.text();
    result.security = await response.securityDetails();
    result.userAgent = await page.evaluate(() => navigator.userAgent);
    result.secureContext = await page.evaluate(() => window.isSecureContext);
    result.origin = await page.evaluate(() => window.location.origin);
    const t2 = Date.now();
    Object.assign(result, await page.evaluate(exchange, { url: wsUrl, count, timeoutMs }));
    result.ms.ws = Date.now() - t2;
    result.ok =
      !result.error &&
      result.received.length === count &&
      result.received.every((text, i) => text === result.sent[i]);
  } catch (err) {
    result.error = result.error || errorText(err);
  } finally {
    if (context !== null) {
      const t3 = Date.now();
      await context.close().catch(() => {});
      result.ms.close = Date.now() - t3;
    }
    clearTimeout(deadline);
  }
  result.ms.total = Date.now() - t0;
  console.log(JSON.stringify(result));
  process.exitCode = result.ok ? 0 : 1;
}

main();
