// Many socket.io-client clients from several loopback source addresses, for the sticky-session
// test (issue 3, point 5).
//
// Environment:
//   URL          the proxy, e.g. http://127.0.0.1:8080
//   ADDRESSES    comma-separated local addresses to connect from (all of 127.0.0.0/8 is local
//                on Linux, so any 127.x.y.z can be bound without set-up)
//   PER_ADDRESS  clients per address (default 2)
//   TIMEOUT_MS   overall deadline (default 10000)
//
// Each client uses the default transports (HTTP long-polling first, then the WebSocket
// upgrade) and reconnection off, so one client is one Engine.IO session. It waits for
// "connect", then for the upgrade, emits "echo" over the WebSocket and waits for the answer.
// One JSON line per client on stdout:
//   {"index":0,"address":"127.0.0.1","ok":true,"sid":"...","transport":"websocket",
//    "server":"s2","echoSid":"...","echoTransport":"websocket","error":null}
// then {"done":true,"ok":N,"failed":M}; exit status 0 when every client succeeded, else 1.
//
// Binding the source address: engine.io-client hands its `agent` option to both transports
// (the polling transport's xmlhttprequest-ssl uses it for every http.request, and the
// websocket transport passes it, with `localAddress`, to `ws`), so one
// `new http.Agent({ localAddress })` per address binds every request of a client to it.
'use strict';

const http = require('http');
const { io } = require('socket.io-client');

const url = process.env.URL;
const addresses = (process.env.ADDRESSES || '127.0.0.1').split(',').filter(Boolean);
const perAddress = Number(process.env.PER_ADDRESS || 2);
const timeoutMs = Number(process.env.TIMEOUT_MS || 10000);

if (!url) {
  console.error('URL is required');
  process.exit(2);
}

function runClient(index, address) {
  const agent = new http.Agent({ localAddress: address });
  const result = { index, address, ok: false, sid: null, transport: null, server: null,
    echoSid: null, echoTransport: null, error: null };
  const socket = io(url, { agent, localAddress: address, reconnection: false, forceNew: true });

  const done = new Promise((resolve) => {
    const finish = (error) => {
      if (result.error === null && error) result.error = error;
      result.ok = result.error === null;
      resolve();
    };
    const timer = setTimeout(() => finish(`timeout (connected=${socket.connected})`), timeoutMs);

    socket.on('connect_error', (err) => { clearTimeout(timer); finish(`connect_error: ${err.message}`); });
    // A WebSocket probe that reaches the wrong server is refused and the client would stay on
    // polling for good; report it instead of waiting for the deadline.
    socket.io.engine.on('upgradeError', (err) => { clearTimeout(timer); finish(`upgradeError: ${err.message}`); });
    socket.on('disconnect', (reason) => { clearTimeout(timer); finish(`disconnect: ${reason}`); });
    socket.on('echo', (answer) => {
      clearTimeout(timer);
      result.server = answer.server;
      result.echoSid = answer.sid;
      result.echoTransport = answer.transport;
      if (answer.payload !== `hello from ${index}`) finish(`bad echo payload ${JSON.stringify(answer)}`);
      else finish(null);
    });
    socket.on('connect', () => {
      const engine = socket.io.engine;
      result.sid = engine.id;
      const send = () => {
        result.transport = engine.transport.name;
        socket.emit('echo', `hello from ${index}`);
      };
      if (engine.transport.name === 'websocket') send();
      else engine.once('upgrade', send);
    });
  });

  return done.then(() => {
    socket.off('disconnect');
    socket.close();
    agent.destroy();
    process.stdout.write(JSON.stringify(result) + '\n');
    return result.ok;
  });
}

const clients = [];
let index = 0;
for (let round = 0; round < perAddress; round++) {
  for (const address of addresses) clients.push(runClient(index++, address));
}

Promise.all(clients).then((oks) => {
  const ok = oks.filter(Boolean).length;
  process.stdout.write(JSON.stringify({ done: true, ok, failed: oks.length - ok }) + '\n');
  process.exitCode = ok === oks.length ? 0 : 1;
});
