// What browser_wss.js and browser_h2ws.js share: Debian's headless Chromium started by
// playwright-core with the flags for a closed network, and the run's deadline.
'use strict';

const { chromium } = require('playwright-core');

// The flags this machine's notes give for Debian's Chromium on a closed network: without the
// background-networking ones Chromium keeps trying (and failing) to reach Google's hosts; no
// QUIC, so h2 over TCP is what an https:// origin gets.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// The environment both scripts read (see their headers); `defaultTimeoutMs` when TIMEOUT_MS is
// not given.
function commonEnv(defaultTimeoutMs) {
  return {
    pageUrl: process.env.PAGE_URL,
    wsUrl: process.env.WS_URL,
    userDataDir: process.env.USER_DATA_DIR,
    timeoutMs: Number(process.env.TIMEOUT_MS || defaultTimeoutMs),
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  };
}

// At the deadline, closing the browser (the context `getContext()` gives, once there is one)
// makes the pending step of main() fail, and main() reports as usual; should that hang too,
// print `result` and exit anyway (Playwright kills Chromium on exit). Returns the timer.
function startDeadline(timeoutMs, result, getContext) {
  return setTimeout(() => {
    result.error = `deadline of ${timeoutMs} ms passed`;
    const context = getContext();
    if (context !== null) context.close().catch(() => {});
    setTimeout(() => {
      console.log(JSON.stringify(result));
      process.exit(1);
    }, 3000).unref();
  }, timeoutMs);
}

// A persistent context so the profile directory is the caller's fresh one (launch() would
// make its own); Playwright starts Chromium in its own process group and kills that group
// on close, on SIGTERM/SIGINT/SIGHUP of this process, and on exit.
async function launch(userDataDir, executablePath, args, timeoutMs) {
  return await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args,
    timeout: timeoutMs,
  });
}

// The first line of an error's message, for the result's "error".
function errorText(err) {
  return String(err && err.message ? err.message : err).split('\n')[0];
}

module.exports = { ARGS, commonEnv, startDeadline, launch, errorText };
