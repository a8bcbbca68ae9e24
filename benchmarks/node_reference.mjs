// The Node socket.io reference server: the official server (npm socket.io 4.8, in memory) with
// the same wire contract as benchmarks/reference_server.py, so every benchmark ratio can be read
// against both.
//
//   node benchmarks/node_reference.mjs --port 8092 [--jwt-secret S]
//
// - connect to any namespace with `auth: {token}`; the token is an HS256 JWT checked against
//   --jwt-secret (when given: signature and exp), so the connect storm pays for a signature check;
// - join {room, since?} -> {ok, room, seq, members, missed?, truncated?};
// - message {room, body} -> broadcast {id, room, seq, ts, sender, body} to the room except the
//   sender, ack {ok, id, room, seq, ts};
// - join {since} replays from an in-memory log (the last 20,000 messages per room).
// No compression of any kind (no permessage-deflate, no HTTP compression); ping interval 25 s and
// timeout 20 s as the other servers. GET /healthz answers {"ok":true}.

import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { Server } from "socket.io";

const LOG_LIMIT = 20_000;

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg("--host", "127.0.0.1");
const port = Number(arg("--port", "8092"));
const secret = arg("--jwt-secret", null);

// HS256 JWT: the signature over "header.payload", then exp (when present).
function verify(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const expected = createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  } catch {
    return null;
  }
  if (header?.alg !== "HS256" || typeof claims !== "object" || claims === null) return null;
  if (typeof claims.exp === "number" && claims.exp <= Date.now() / 1000) return null;
  return claims;
}

const http = createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end('{"ok":true}');
    return;
  }
  // socket.io takes its own path before this handler is called; anything else is not found.
  res.writeHead(404);
  res.end();
});

const io = new Server(http, {
  cors: { origin: "*" },
  pingInterval: 25_000,
  pingTimeout: 20_000,
  maxHttpBufferSize: 1 << 20,
  perMessageDeflate: false,
  httpCompression: false,
});

const seqs = new Map(); // "ns\0room" -> last seq
const logs = new Map(); // "ns\0room" -> rows (oldest first, at most LOG_LIMIT)
let ids = 0;

const namespaces = io.of(/^\/.*$/);

namespaces.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  if (secret !== null) {
    const claims = verify(token);
    if (claims === null) {
      next(new Error("auth_invalid"));
      return;
    }
    socket.data.user = String(claims.sub ?? socket.id);
  } else {
    socket.data.user = socket.id;
  }
  next();
});

namespaces.on("connection", (socket) => {
  const ns = socket.nsp.name;
  socket.on("join", (data, ack) => {
    if (typeof ack !== "function") return;
    const room = data?.room;
    if (typeof room !== "string") {
      ack({ ok: false, error: { code: "bad_request" } });
      return;
    }
    socket.join("r:" + room);
    const key = ns + "\0" + room;
    const out = { ok: true, room, seq: seqs.get(key) ?? 0, members: [] };
    if (Number.isInteger(data.since)) {
      out.missed = (logs.get(key) ?? []).slice(-LOG_LIMIT).filter((m) => m.seq > data.since);
      out.truncated = false;
    }
    ack(out);
  });
  socket.on("message", (data, ack) => {
    const room = data?.room;
    if (typeof room !== "string" || !("body" in data)) {
      if (typeof ack === "function") ack({ ok: false, error: { code: "bad_request" } });
      return;
    }
    const key = ns + "\0" + room;
    const seq = (seqs.get(key) ?? 0) + 1;
    seqs.set(key, seq);
    const user = socket.data.user;
    const row = {
      id: `m${++ids}`,
      room,
      seq,
      ts: Date.now(),
      sender: { id: user, name: user },
      body: data.body,
    };
    let log = logs.get(key);
    if (log === undefined) logs.set(key, (log = []));
    log.push(row);
    if (log.length > LOG_LIMIT * 2) log.splice(0, log.length - LOG_LIMIT); // amortised trim
    socket.to("r:" + room).emit("message", row);
    if (typeof ack === "function") ack({ ok: true, id: row.id, room, seq, ts: row.ts });
  });
});

http.listen(port, host, () => {
  console.log(`node reference serving on http://${host}:${port}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
