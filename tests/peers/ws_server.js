'use strict';
// A Node `ws` server that wsclient's tests run as a real, independent peer (tests/test_peer_node_ws.py).
//
//   node ws_server.js [--ping-interval MS]      (or PING_INTERVAL_MS; default 50)
//
// It listens on 127.0.0.1 on a free port and writes one JSON object per line on stdout: first
// {"event":"listening","port":N}, then connection, message, ping, pong, terminate and close events,
// each with the connection's number, so a test can wait on what the server saw.
//
// Heartbeat: ws's documented pattern. Every interval the server terminates each connection that has not
// answered the previous round's ping, then pings the others.
//
// Text messages that are JSON objects with a "cmd" field are commands:
//   {"cmd": "close", "code": 1011, "reason": "..."}   close this connection with that code
//   {"cmd": "stats", "id": ...}                        reply {"type": "stats", "id", "conn", "pings", "pongs"}
// Every other message is echoed back as it came (text or binary).
//
// The server exits on SIGTERM/SIGINT, and when its stdin closes, so that it never outlives a test run
// that died without stopping it.

const { WebSocketServer } = require('ws');

function option(name, envName, fallback) {
  const flag = `--${name}`;
  const index = process.argv.indexOf(flag);
  if (index !== -1 && index + 1 < process.argv.length) return process.argv[index + 1];
  return process.env[envName] ?? fallback;
}

const pingInterval = Number(option('ping-interval', 'PING_INTERVAL_MS', '50'));
if (!Number.isFinite(pingInterval) || pingInterval <= 0) {
  process.stderr.write(`invalid ping interval: ${pingInterval}\n`);
  process.exit(2);
}

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, clientTracking: true });
let connections = 0;

wss.on('listening', () => emit({ event: 'listening', port: wss.address().port }));

wss.on('connection', (ws) => {
  connections += 1;
  ws.conn = connections;
  ws.isAlive = true;
  ws.pings = 0;
  ws.pongs = 0;
  emit({ event: 'connection', conn: ws.conn });

  ws.on('error', (err) => emit({ event: 'error', conn: ws.conn, message: String(err.message) }));

  ws.on('pong', () => {
    ws.isAlive = true;
    ws.pongs += 1;
    emit({ event: 'pong', conn: ws.conn, pongs: ws.pongs });
  });

  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      const text = data.toString();
      emit({ event: 'message', conn: ws.conn, data: text });
      let command = null;
      try {
        const parsed = JSON.parse(text);
        if (parsed !== null && typeof parsed === 'object' && typeof parsed.cmd === 'string') command = parsed;
      } catch {
        // Not JSON: echoed like any other message.
      }
      if (command !== null) {
        runCommand(ws, command);
        return;
      }
    } else {
      emit({ event: 'message', conn: ws.conn, bytes: data.length });
    }
    ws.send(data, { binary: isBinary });
  });

  ws.on('close', (code, reason) => emit({ event: 'close', conn: ws.conn, code, reason: reason.toString() }));
});

function runCommand(ws, command) {
  switch (command.cmd) {
    case 'close':
      ws.close(Number(command.code), String(command.reason ?? ''));
      break;
    case 'stats':
      ws.send(JSON.stringify({ type: 'stats', id: command.id, conn: ws.conn, pings: ws.pings, pongs: ws.pongs }));
      break;
    default:
      ws.send(JSON.stringify({ type: 'error', id: command.id, error: `unknown cmd ${command.cmd}` }));
  }
}

const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (ws.isAlive === false) {
      emit({ event: 'terminate', conn: ws.conn, pings: ws.pings, pongs: ws.pongs });
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.pings += 1;
    ws.ping();
    emit({ event: 'ping', conn: ws.conn, pings: ws.pings });
  }
}, pingInterval);

function shutdown() {
  clearInterval(heartbeat);
  for (const ws of wss.clients) ws.terminate();
  wss.close(() => process.exit(0));
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.stdin.on('end', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();
