// Access lifecycle with the official socket.io-client against two nodes, driven by
// tests/test_js_access.py. Usage: node tests/js/access.mjs '<json config>'; prints one JSON line.
// Config: { urls: [one, two], slug, admin, kid, shortExp, tokens: { refresher, lapser, kicked,
// stays, old, fresh, alice, bob } } — refresher/lapser expire at shortExp; old is signed by kid,
// fresh by a newer key.
import { io } from "socket.io-client";

const config = JSON.parse(process.argv[2]);
const [ONE, TWO] = config.urls;
const WITHIN = 5000;
const sockets = [];
let step = "start";

const guard = setTimeout(() => finish({ error: `timed out at ${step}` }, 2), 45000);

function finish(result, code = 0) {
  clearTimeout(guard);
  for (const socket of sockets) socket.close();
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

// A socket with a record of what the server said before letting go.
function open(url, token) {
  const socket = io(`${url}/${config.slug}`, {
    auth: { token },
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: WITHIN,
  });
  socket.record = { expiring: [], closing: [], disconnect: null };
  socket.on("token_expiring", (payload) => socket.record.expiring.push(payload));
  socket.on("closing", (payload) => socket.record.closing.push(payload));
  socket.gone = new Promise((resolve) =>
    socket.on("disconnect", (reason) => {
      socket.record.disconnect = reason;
      resolve(reason);
    }),
  );
  sockets.push(socket);
  return socket;
}

function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", (err) => reject(new Error(`connect_error ${err.message}`)));
  });
}

function bounded(promise, ms, label) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${label}: not within ${ms} ms`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

async function rest(url, method, path, body) {
  const response = await fetch(`${url}/api/v1/tenants/${config.slug}${path}`, {
    method,
    headers: { Authorization: `Bearer ${config.admin}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function expiry() {
  step = "expiry";
  const { tokens } = config;
  const refresher = open(ONE, tokens.refresher);
  const lapser = open(TWO, tokens.lapser);
  await Promise.all([connected(refresher), connected(lapser)]);
  const refreshed = new Promise((resolve) =>
    refresher.once("token_expiring", async ({ exp }) => {
      const minted = await rest(ONE, "POST", "/tokens", { sub: "refresher", ttl_seconds: 3600 });
      const ack = await refresher.timeout(WITHIN).emitWithAck("refresh", { token: minted.body.token });
      resolve({ exp, ack, newExp: minted.body.expires_at });
    }),
  );
  const refresh = await bounded(refreshed, 10000, "token_expiring");
  await bounded(lapser.gone, 10000, "lapser closed");
  // The lapser's token had the same exp: it is past, and the refresher is still connected.
  const after = await refresher.timeout(WITHIN).emitWithAck("join", { room: "after-expiry" });
  return { refresh, lapser: lapser.record, refresher: { ...refresher.record, connected: refresher.connected, join: after.ok } };
}

async function kick() {
  step = "kick";
  const tabs = [open(ONE, config.tokens.kicked), open(TWO, config.tokens.kicked)];
  const stays = open(TWO, config.tokens.stays);
  await Promise.all([...tabs, stays].map(connected));
  const started = Date.now();
  const answer = await rest(ONE, "POST", "/users/kicked/disconnect", { reason: "bye" });
  await bounded(Promise.all(tabs.map((t) => t.gone)), 1000, "kicked sockets closed");
  return { answer, ms: Date.now() - started, tabs: tabs.map((t) => t.record), stays: stays.connected };
}

async function revoke() {
  step = "revoke";
  const old = open(TWO, config.tokens.old);
  const fresh = open(TWO, config.tokens.fresh);
  await Promise.all([connected(old), connected(fresh)]);
  const answer = await rest(ONE, "DELETE", `/keys/${config.kid}`);
  await bounded(old.gone, 1000, "revoked socket closed");
  return { status: answer.status, old: old.record, fresh: fresh.connected };
}

async function presence() {
  step = "presence";
  const alice = open(ONE, config.tokens.alice);
  const bob = open(TWO, config.tokens.bob);
  await Promise.all([connected(alice), connected(bob)]);
  await alice.timeout(WITHIN).emitWithAck("join", { room: "lobby" });
  await bob.timeout(WITHIN).emitWithAck("join", { room: "lobby" });
  const socketView = await alice.timeout(WITHIN).emitWithAck("presence", { room: "lobby" });
  const restOne = await rest(ONE, "GET", "/rooms/lobby/presence");
  const restTwo = await rest(TWO, "GET", "/rooms/lobby/presence");
  return { socketView, restOne, restTwo };
}

try {
  const result = { expiry: await expiry(), kick: await kick(), revoke: await revoke(), presence: await presence() };
  finish(result);
} catch (err) {
  finish({ error: `${step}: ${err && err.stack ? err.stack : err}` }, 1);
}
