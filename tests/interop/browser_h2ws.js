// WebSockets over HTTP/2 (RFC 8441) from a real browser: Debian's headless Chromium, driven by
// playwright-core, loads a page over TLS + h2 and then the page opens a WebSocket to the same
// origin (issue 13, "headless Chromium loading a page over h2 and then opening a WebSocket to
// the same origin, with the test proving from the browser's own network events that the
// WebSocket travelled on the HTTP/2 connection").
//
// Environment:
//   PAGE_URL       the https:// page to load, e.g. https://localhost:8443/  (required; the
//                  page defines window.wsOpen and window.wsExchange, see test_browser_h2.py)
//   WS_URL         the wss:// URL the page opens, e.g. wss://localhost:8443/ws  (required)
//   USER_DATA_DIR  a fresh, empty Chromium profile directory                   (required)
//   BINARY_BYTES   size of the binary message (default 1048576)
//   TIMEOUT_MS     deadline for the whole run (default 20000)
//   CHROMIUM       the browser binary (default /usr/bin/chromium)
//   NET_LOG        a path: Chromium writes its NetLog there (--log-net-log), the browser's own
//                  record of every socket it connected (optional)
//
// Certificate trust comes from the caller's $HOME/.pki/nssdb, as in browser_wss.js; nothing
// relaxes verification.
//
// The browser's own view of the network comes from the Chrome DevTools Protocol (a CDP session
// on the page, Network domain): Network.responseReceived gives the page's `protocol` ("h2" or
// "http/1.1") and `connectionId` (Chromium's id of the socket the response came on);
// Network.webSocketHandshakeResponseReceived gives the WebSocket's handshake status, 101 on
// HTTP/1.1 but 200 on an RFC 8441 stream (the :status of the extended CONNECT).
//
// After the exchange it prints {"ready":true} and keeps the WebSocket open until the server
// closes it (the test sends QUIT to the proxy) or a line "close" comes on stdin (the page then
// closes it with 1000). At the end it prints one JSON line on stdout:
//   {"ok":true,"page":{"status":200,"protocol":"h2","connectionId":12,...},
//    "ws":{"created":1,"handshake":{"status":200,"headers":{...}},"closed":1},
//    "text":{"sent":"...","echo":"..."},"binary":{"bytes":1048576,"same":true},
//    "close":{"code":1001,"reason":"going away","wasClean":true}, ...}
// and exits 0 when every echo came back intact and the WebSocket closed; otherwise "ok":false.
'use strict';

const { ARGS, commonEnv, startDeadline, launch, errorText } = require('./browser_common');

const { pageUrl, wsUrl, userDataDir, timeoutMs, executablePath } = commonEnv(20000);
const binaryBytes = Number(process.env.BINARY_BYTES || 1048576);
const netLog = process.env.NET_LOG || null;

// browser_common.js's flags (no QUIC: h2 over TCP is what an https:// origin gets), and the
// NetLog when asked for.
const args =
  netLog === null ? ARGS : [...ARGS, `--log-net-log=${netLog}`, '--net-log-capture-mode=Default'];

async function main() {
  const result = { ok: false, responses: [], ws: { created: 0, handshakes: [], closed: 0 } };
  let context = null;
  const deadline = startDeadline(timeoutMs, result, () => context);
  try {
    context = await launch(userDataDir, executablePath, args, timeoutMs);
    result.browserVersion = context.browser() ? context.browser().version() : null;
    const page = context.pages()[0] || (await context.newPage());
    const cdp = await context.newCDPSession(page);
    cdp.on('Network.responseReceived', ({ response, type }) => {
      result.responses.push({
        url: response.url,
        type,
        status: response.status,
        protocol: response.protocol,
        connectionId: response.connectionId,
        remotePort: response.remotePort,
      });
    });
    cdp.on('Network.webSocketCreated', ({ url }) => {
      result.ws.created += 1;
      result.ws.url = url;
    });
    cdp.on('Network.webSocketHandshakeResponseReceived', ({ response }) => {
      result.ws.handshakes.push({ status: response.status, headers: response.headers });
    });
    cdp.on('Network.webSocketClosed', () => {
      result.ws.closed += 1;
    });
    await cdp.send('Network.enable');

    const response = await page.goto(pageUrl, { timeout: timeoutMs });
    result.status = response.status();
    result.origin = await page.evaluate(() => window.location.origin);
    result.open = await page.evaluate((url) => window.wsOpen(url), wsUrl);
    Object.assign(result, await page.evaluate((n) => window.wsExchange(n), binaryBytes));
    // The WebSocket stays open: the test reads the server's counters now, then either
    // makes the server close it (QUIT) or writes "close" here for a normal close (1000).
    console.log(JSON.stringify({ ready: true }));
    const stdin = require('readline').createInterface({ input: process.stdin });
    stdin.on('line', (line) => {
      if (line.trim() === 'close') page.evaluate(() => window.ws.close(1000, 'done')).catch(() => {});
    });
    result.close = await page.evaluate(() => window.wsClosed);
    stdin.close();
    // The CDP event of the close may trail the page's close event by a task.
    for (let i = 0; i < 50 && result.ws.closed === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    result.ok =
      !result.error &&
      result.text.echo === result.text.sent &&
      result.binary.same === true &&
      result.close.code !== undefined;
  } catch (err) {
    result.error = result.error || errorText(err);
  } finally {
    if (context !== null) await context.close().catch(() => {});
    clearTimeout(deadline);
  }
  console.log(JSON.stringify(result));
  process.exitCode = result.ok ? 0 : 1;
}

main();
