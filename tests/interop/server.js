// The walk-through's example backend (the nginx.com article's server.js), written against the
// current `ws` API (`new WebSocketServer({ port })` replaces `require('ws').Server`).
//
// It prints "Server started", listens on PORT (default 8010, the article's backend port), logs
// every message as "Received from client: MSG" and answers "Server received from client: MSG".
// PORT=0 lets the kernel choose; only then the real address follows on its own line,
// "Listening on 127.0.0.1:NNNN", so tests can wait for it instead of guessing a free port.
// HOST (default 127.0.0.1) sets the listening address. SIGINT/SIGTERM exit 0.
'use strict';

const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT ?? 8010);
const host = process.env.HOST || '127.0.0.1';

console.log('Server started');
const wss = new WebSocketServer({ host, port }, () => {
  if (port === 0) {
    const address = wss.address();
    const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    console.log(`Listening on ${shown}:${address.port}`);
  }
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    // ws 8 hands over a Buffer; the article's ws 1.x handed over a string for text frames.
    const message = isBinary ? data.toString('utf8') : data.toString();
    console.log('Received from client: %s', message);
    ws.send('Server received from client: ' + message);
  });
});

wss.on('error', (err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    for (const client of wss.clients) client.terminate();
    wss.close(() => process.exit(0));
  });
}
