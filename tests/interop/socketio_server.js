// A small Socket.IO server for the sticky-session test (issue 3, point 5): several of these run
// behind wsgate, and each reports which Engine.IO sessions it saw and over which requests.
//
// Environment: NAME (this server's name, default "s1"), PORT (default 3000; PORT=0 lets the
// kernel choose and then prints "Listening on 127.0.0.1:NNNN"), HOST (default 127.0.0.1).
//
// Every other stdout line is one JSON event, written synchronously (stdout is a pipe: Node
// writes pipes synchronously on Linux), so a reader that waits for the process to exit has them
// all:
//   {"event":"request","server":NAME,"method":"GET","transport":"polling","sid":null|"...",
//    "forwardedFor":"127.0.3.1"|null}
//       every HTTP request and WebSocket upgrade request that reaches Engine.IO; the handshake
//       is the polling request without a sid (the default transports start with polling);
//       forwardedFor is the X-Forwarded-For header (the client's address behind a proxy)
//   {"event":"handshake","server":NAME,"sid":"...","transport":"polling"}
//       a new Engine.IO session, created here
//   {"event":"upgrade","server":NAME,"sid":"...","transport":"websocket"}
//       the session switched to WebSocket here
//   {"event":"status","server":NAME,"sid":...,"transport":...,"status":400}
//       a polling response with status >= 400
//   {"event":"error","server":NAME,"code":1,"message":"Session ID unknown","sid":...}
//       Engine.IO refused a request (what a poll routed to the wrong server gets)
// Socket.IO clients that emit "echo" get "echo" back with {server, sid, transport, payload}.
// SIGINT/SIGTERM close every session and exit 0.
'use strict';

const http = require('http');
const { Server } = require('socket.io');

const name = process.env.NAME || 's1';
const port = Number(process.env.PORT ?? 3000);
const host = process.env.HOST || '127.0.0.1';

function log(event) {
  process.stdout.write(JSON.stringify({ server: name, ...event }) + '\n');
}

function query(req) {
  const url = new URL(req.url, 'http://localhost');
  return { sid: url.searchParams.get('sid'), transport: url.searchParams.get('transport') };
}

const httpServer = http.createServer();
const io = new Server(httpServer);

// Engine.IO middlewares run for every HTTP request and for every upgrade request, before the
// session id is checked, so a request that reaches the wrong server is still recorded here.
io.engine.use((req, res, next) => {
  const { sid, transport } = query(req);
  const forwardedFor = req.headers['x-forwarded-for'] ?? null;
  log({ event: 'request', method: req.method, transport, sid, forwardedFor });
  if (!req.headers.upgrade) {
    res.on('finish', () => {
      if (res.statusCode >= 400) log({ event: 'status', sid, transport, status: res.statusCode });
    });
  }
  next();
});

io.engine.on('connection_error', (err) => {
  const { sid, transport } = err.req ? query(err.req) : {};
  log({ event: 'error', code: err.code, message: err.message, sid, transport });
});

io.engine.on('connection', (conn) => {
  log({ event: 'handshake', sid: conn.id, transport: conn.transport.name });
  conn.on('upgrade', (transport) => log({ event: 'upgrade', sid: conn.id, transport: transport.name }));
});

io.on('connection', (socket) => {
  socket.on('echo', (payload) => {
    socket.emit('echo', {
      server: name,
      sid: socket.conn.id,
      transport: socket.conn.transport.name,
      payload,
    });
  });
});

httpServer.on('error', (err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});

httpServer.listen(port, host, () => {
  const address = httpServer.address();
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  console.log(`Listening on ${shown}:${address.port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    io.close(() => process.exit(0));
    // io.close waits for idle keep-alive connections; do not let one hold the exit.
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
