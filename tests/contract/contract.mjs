// Black-box contract test of an orgcast deployment with the official socket.io-client.
//
// Written from the design contract only (§4 connecting, §5 events, the HTTP rows of §6 it needs),
// never from the server's source: it checks the service as an outside client would see it.
//
// Config (JSON), from argv[2] or the CONTRACT_CONFIG environment variable:
//   { "nodes": ["http://127.0.0.1:8080", ...],  // 1 or 2 nodes sharing one database
//     "admin_token": "..." }
// It creates its own tenants over HTTP, spreads its clients round-robin over the nodes, and exits
// 0 printing "N passed, 0 failed", or 1 with a summary of every failure.

import { createHmac, randomBytes } from "node:crypto";
import { isDeepStrictEqual, inspect } from "node:util";
import { io } from "socket.io-client";

const config = JSON.parse(process.argv[2] ?? process.env.CONTRACT_CONFIG ?? "null");
if (!config || !Array.isArray(config.nodes) || config.nodes.length < 1 || !config.admin_token) {
  console.error('usage: node contract.mjs \'{"nodes": ["http://127.0.0.1:8080"], "admin_token": "..."}\'');
  process.exit(2);
}
const NODES = config.nodes.map((url) => url.replace(/\/+$/, ""));
const ADMIN = config.admin_token;
const CLUSTER = NODES.length > 1;
const WAIT_MS = 4000; // any single event or ack
const PROPAGATION_MS = 1000; // the contract's bound for a change to reach every node
const TEST_MS = 30000; // one whole test

// ---------------------------------------------------------------- assertions

class Failure extends Error {}

function show(value) {
  return inspect(value, { depth: 6, breakLength: Infinity, maxArrayLength: 20, maxStringLength: 200 });
}

function check(condition, what) {
  if (!condition) throw new Failure(what);
}

function eq(actual, expected, what) {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Failure(`${what}: expected ${show(expected)}, got ${show(actual)}`);
  }
}

function keys(object) {
  return object && typeof object === "object" ? Object.keys(object).sort() : object;
}

function hasKeys(object, expected, what) {
  eq(keys(object), [...expected].sort(), `${what} keys (got ${show(object)})`);
}

// A success ack: ok true and exactly the listed keys.
function okAck(ack, fields, what) {
  check(ack && typeof ack === "object" && !Array.isArray(ack), `${what}: ack is not an object: ${show(ack)}`);
  check(ack.ok === true, `${what}: expected ok: true, got ${show(ack)}`);
  hasKeys(ack, ["ok", ...fields], what);
  return ack;
}

// An error ack: { ok: false, error: { code, message } }, human text without a stack trace.
function errAck(ack, code, what, extra = []) {
  check(ack && typeof ack === "object", `${what}: ack is not an object: ${show(ack)}`);
  eq(ack.ok, false, `${what}: ok (ack ${show(ack)})`);
  check(ack.error && typeof ack.error === "object", `${what}: no error object in ${show(ack)}`);
  eq(ack.error.code, code, `${what}: error code (ack ${show(ack)})`);
  check(typeof ack.error.message === "string" && ack.error.message.length > 0, `${what}: error.message must be human text: ${show(ack)}`);
  check(!/Traceback|File "|\bat .*\(.*:\d+:\d+\)/.test(ack.error.message), `${what}: stack trace in message: ${show(ack)}`);
  hasKeys(ack.error, ["code", "message", ...extra], `${what}: error`);
  hasKeys(ack, ["ok", "error"], `${what}: ack`);
  return ack.error;
}

// ---------------------------------------------------------------- HTTP

let httpTurn = 0;

async function http(method, path, { body, token = ADMIN, node } = {}) {
  const base = NODES[node ?? httpTurn++ % NODES.length];
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = text;
  }
  return { status: response.status, json };
}

function httpError(response, statuses, code, what) {
  check(statuses.includes(response.status), `${what}: expected HTTP ${statuses.join(" or ")}, got ${response.status} ${show(response.json)}`);
  check(response.json && typeof response.json.error === "object", `${what}: error body must be {"error": {...}}, got ${show(response.json)}`);
  if (code) eq(response.json.error.code, code, `${what}: error code`);
  check(typeof response.json.error.message === "string", `${what}: error.message must be a string: ${show(response.json)}`);
}

function find(value, predicate, path = "") {
  if (predicate(value, path)) return value;
  if (value && typeof value === "object") {
    for (const [key, child] of Object.entries(value)) {
      const hit = find(child, predicate, `${path}.${key}`);
      if (hit !== undefined) return hit;
    }
  }
  return undefined;
}

// Where the create response puts its parts is not fixed by the contract: look for them by shape.
function signingKeyIn(json) {
  return find(json, (v) => v && typeof v === "object" && typeof v.kid === "string" && typeof v.secret === "string");
}

function apiKeyIn(json) {
  const holder = find(json, (v, path) => /api.?key[^.]*$/i.test(path) && (typeof v === "string" || (v && typeof v === "object")));
  if (typeof holder === "string") return holder;
  if (holder) {
    for (const field of ["key", "token", "secret", "plain", "value", "api_key"]) {
      if (typeof holder[field] === "string") return holder[field];
    }
  }
  return undefined;
}

const RUN = randomBytes(4).toString("hex");
const created = [];

async function createTenant(tag, fields = {}) {
  const slug = `ct${RUN}-${tag}`;
  const response = await http("POST", "/api/v1/tenants", { body: { slug, name: `Contract ${tag}`, ...fields } });
  eq(response.status, 201, `create tenant ${slug} (${show(response.json)})`);
  const key = signingKeyIn(response.json);
  check(key, `create tenant ${slug}: no signing key {kid, secret} in ${show(response.json)}`);
  created.push(slug);
  return { slug, key, apiKey: apiKeyIn(response.json), created: response.json };
}

async function patchTenant(tenant, body, node = 0) {
  const response = await http("PATCH", `/api/v1/tenants/${tenant.slug}`, { body, node });
  eq(response.status, 200, `PATCH ${tenant.slug} ${show(body)} (${show(response.json)})`);
  return response.json;
}

// ---------------------------------------------------------------- tokens (HS256, as a tenant backend mints them)

const b64url = (data) => Buffer.from(data).toString("base64url");

function jwt(claims, { kid, secret }, header = {}) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT", kid, ...header }));
  const body = b64url(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

const now = () => Math.floor(Date.now() / 1000);

function token(tenant, sub, name = `Name ${sub}`, extra = {}) {
  const claims = { sub, exp: now() + 600, ...extra };
  if (name !== null) claims.name = name;
  return jwt(claims, tenant.key);
}

function decodeJwt(value) {
  const [, body] = value.split(".");
  return JSON.parse(Buffer.from(body, "base64url").toString());
}

// ---------------------------------------------------------------- Socket.IO clients

let clientTurn = 0;
let openSockets = [];

// Every event a socket receives, in arrival order, with bounded waits.
class Inbox {
  constructor(socket, label) {
    this.label = label;
    this.items = [];
    this.wake = null;
    socket.onAny((event, ...args) => {
      this.items.push({ event, data: args[0] });
      this.wake?.();
    });
  }

  summary() {
    return show(this.items.map((item) => [item.event, item.data]));
  }

  // Take the first event matching; wait up to timeout for it.
  async take(event, predicate = () => true, what = "", timeout = WAIT_MS) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const index = this.items.findIndex((item) => item.event === event && predicate(item.data));
      if (index >= 0) return this.items.splice(index, 1)[0].data;
      const left = deadline - Date.now();
      if (left <= 0) throw new Failure(`${this.label}: no '${event}' event ${what} within ${timeout} ms; received ${this.summary()}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  // Wait for a marker event and return (and remove) every event that arrived before it.
  async before(event, predicate, what) {
    await this.take(event, predicate, what);
    return this.items.splice(0, this.items.length);
  }

  // Remove and return everything received so far (optionally one event name only).
  drain(event) {
    const taken = this.items.filter((item) => !event || item.event === event);
    this.items = this.items.filter((item) => event && item.event !== event);
    return taken;
  }
}

function socketOptions(tenantToken, { transports = ["websocket"], extraHeaders, auth } = {}) {
  const options = { forceNew: true, reconnection: false, transports, timeout: WAIT_MS };
  if (auth !== undefined) options.auth = auth;
  else if (tenantToken !== undefined) options.auth = { token: tenantToken };
  if (extraHeaders) options.extraHeaders = extraHeaders;
  return options;
}

// Open a socket on the next node (or a given one); resolve on connect, reject with connect_error.
function open(namespace, tenantToken, options = {}) {
  const node = options.node ?? clientTurn++ % NODES.length;
  const socket = io(`${NODES[node]}${namespace}`, socketOptions(tenantToken, options));
  openSockets.push(socket);
  socket.node = node;
  socket.inbox = new Inbox(socket, options.label ?? `socket(${namespace} on node ${node})`);
  socket.disconnects = [];
  socket.on("disconnect", (reason) => socket.disconnects.push({ reason, at: Date.now() }));
  const outcome = new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ timeout: true }), WAIT_MS + 1000);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve({ connected: true });
    });
    socket.once("connect_error", (err) => {
      clearTimeout(timer);
      resolve({ err });
    });
  });
  return { socket, outcome };
}

async function connect(tenant, sub, options = {}) {
  const tok = options.token ?? token(tenant, sub, options.name ?? `Name ${sub}`);
  const { socket, outcome } = open(`/${tenant.slug}`, tok, { label: `${tenant.slug}/${sub}#${openSockets.length}`, ...options });
  const result = await outcome;
  if (result.timeout) throw new Failure(`connect ${tenant.slug} as ${sub}: neither connect nor connect_error within ${WAIT_MS + 1000} ms`);
  if (result.err) throw new Failure(`connect ${tenant.slug} as ${sub}: refused ${show(result.err.message)} ${show(result.err.data)}`);
  socket.sub = sub;
  socket.displayName = options.name ?? `Name ${sub}`;
  return socket;
}

// A refused connect: connect_error with err.message = code and err.data = { code, message }.
async function refusal(namespace, tenantToken, code, what, options = {}) {
  const { socket, outcome } = open(namespace, tenantToken, options);
  const result = await outcome;
  socket.close();
  if (result.timeout) throw new Failure(`${what}: hung, no connect_error within ${WAIT_MS + 1000} ms (expected ${code})`);
  if (result.connected) throw new Failure(`${what}: connected, expected refusal ${code}`);
  const err = result.err;
  eq(err.message, code, `${what}: err.message (err.data ${show(err.data)})`);
  check(err.data && typeof err.data === "object", `${what}: err.data must be an object, got ${show(err.data)}`);
  hasKeys(err.data, ["code", "message"], `${what}: err.data`);
  eq(err.data.code, code, `${what}: err.data.code`);
  check(typeof err.data.message === "string" && err.data.message.length > 0, `${what}: err.data.message must be human text`);
}

// Try a connect and report the outcome, for retries while a change crosses nodes.
async function attempt(namespace, tenantToken, options = {}) {
  const { socket, outcome } = open(namespace, tenantToken, options);
  const result = await outcome;
  if (!result.connected) socket.close();
  return { socket, ...result, code: result.err?.message };
}

async function emit(socket, event, ...args) {
  try {
    return await socket.timeout(WAIT_MS).emitWithAck(event, ...args);
  } catch (error) {
    throw new Failure(`${socket.inbox.label}: no ack for '${event}' ${show(args)} within ${WAIT_MS} ms (${error.message}); connected=${socket.connected}`);
  }
}

async function join(socket, room, since) {
  const payload = since === undefined ? { room } : { room, since };
  const ack = await emit(socket, "join", payload);
  const fields = since === undefined ? ["room", "seq", "members"] : ["room", "seq", "members", "missed"];
  if (since !== undefined && ack && "truncated" in ack) fields.push("truncated");
  okAck(ack, fields, `join ${show(payload)}`);
  eq(ack.room, room, "join ack room");
  check(Number.isInteger(ack.seq) && ack.seq >= 0, `join ack seq must be an integer >= 0: ${show(ack)}`);
  check(Array.isArray(ack.members), `join ack members must be a list: ${show(ack)}`);
  for (const member of ack.members) hasKeys(member, ["id", "name"], "join ack member");
  return ack;
}

async function send(socket, room, body, clientId) {
  const payload = clientId === undefined ? { room, body } : { room, body, client_id: clientId };
  const ack = await emit(socket, "message", payload);
  okAck(ack, ["id", "room", "seq", "ts"], `message ${show(payload)}`);
  eq(ack.room, room, "message ack room");
  check(Number.isInteger(ack.seq) && ack.seq >= 1, `message ack seq must be an integer >= 1: ${show(ack)}`);
  return ack;
}

async function history(socket, payload) {
  const ack = await emit(socket, "history", payload);
  okAck(ack, ["room", "messages", "has_more"], `history ${show(payload)}`);
  eq(ack.room, payload.room, "history ack room");
  check(Array.isArray(ack.messages), "history messages must be a list");
  check(typeof ack.has_more === "boolean", `history has_more must be a boolean: ${show(ack)}`);
  return ack;
}

// The broadcast shape of a stored message sent by `socket` (§5).
function expectedMessage(ack, socket, body, clientId) {
  const message = { id: ack.id, room: ack.room, seq: ack.seq, ts: ack.ts, sender: { id: socket.sub, name: socket.displayName }, body };
  if (clientId !== undefined) message.client_id = clientId;
  return message;
}

const isMessage = (seq, room) => (m) => m && m.seq === seq && (room === undefined || m.room === room);
const seqs = (messages) => messages.map((m) => m.seq);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

// Retry a check until it passes or the contract's propagation bound (plus one attempt) is spent.
async function within(ms, what, fn) {
  const deadline = Date.now() + ms;
  let last;
  for (let tries = 0; tries < 200; tries++) {
    try {
      return await fn();
    } catch (error) {
      last = error;
    }
    if (Date.now() >= deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Failure(`${what}: not true within ${ms} ms: ${last?.message ?? last}`);
}

const propagation = CLUSTER ? PROPAGATION_MS : 0;

// ---------------------------------------------------------------- runner

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const notes = [];

let A; // main tenant: ephemeral events, generous rate
let B; // twin tenant: same rooms and user ids as A

test("create tenant: 201 with a signing key and an API key; taken slug 409; bad slugs and shadowing ephemeral names refused", async () => {
  A = await createTenant("a", { ephemeral_events: ["typing", "cursor"], limits: { messages_per_second: 1000 } });
  B = await createTenant("b", { ephemeral_events: ["wave"], limits: { messages_per_second: 1000 } });
  check(typeof A.apiKey === "string" && A.apiKey.length > 0, `create tenant: no plain API key in ${show(A.created)}`);
  const again = await http("POST", "/api/v1/tenants", { body: { slug: A.slug, name: "again" } });
  httpError(again, [409], null, "taken slug");
  for (const slug of ["admin", "metrics", "Bad", "x", "-ab", "ab-", "a".repeat(41)]) {
    httpError(await http("POST", "/api/v1/tenants", { body: { slug, name: "x" } }), [400, 409, 422], null, `slug ${show(slug)}`);
  }
  for (const name of ["message", "join", "connect", "disconnect"]) {
    const response = await http("POST", "/api/v1/tenants", { body: { slug: `ct${RUN}-sh`, name: "x", ephemeral_events: [name] } });
    if (response.status === 201) created.push(`ct${RUN}-sh`);
    httpError(response, [400, 422], null, `ephemeral event shadowing ${show(name)}`);
  }
  httpError(await http("POST", "/api/v1/tenants", { body: { slug: `ct${RUN}-na`, name: "x" }, token: "wrong" }), [401], null, "create with a wrong admin token");
});

test("mint token over HTTP (admin and own API key): a JWT with sub, name, rooms, exp that connects", async () => {
  const response = await http("POST", `/api/v1/tenants/${A.slug}/tokens`, { body: { sub: "minted", name: "Minted", rooms: ["lobby*"], ttl_seconds: 120 } });
  check([200, 201].includes(response.status), `mint: HTTP ${response.status} ${show(response.json)}`);
  const minted = find(response.json, (v) => typeof v === "string" && /^[\w-]+\.[\w-]+\.[\w-]+$/.test(v));
  check(minted, `mint: no JWT in ${show(response.json)}`);
  const claims = decodeJwt(minted);
  eq([claims.sub, claims.name, claims.rooms], ["minted", "Minted", ["lobby*"]], "minted claims");
  check(Math.abs(claims.exp - (now() + 120)) <= 5, `minted exp ${claims.exp} is not now + 120`);
  const socket = await connect(A, "minted", { token: minted });
  const ack = await join(socket, "lobby-1");
  eq(ack.members, [{ id: "minted", name: "Minted" }], "members of a fresh room after join");
  errAck(await emit(socket, "join", { room: "elsewhere" }), "room_forbidden", "minted rooms claim");
  const own = await http("POST", `/api/v1/tenants/${A.slug}/tokens`, { body: { sub: "k" }, token: A.apiKey });
  check([200, 201].includes(own.status), `mint with the tenant's own API key: HTTP ${own.status} ${show(own.json)}`);
  httpError(await http("POST", `/api/v1/tenants/${B.slug}/tokens`, { body: { sub: "k" }, token: A.apiKey }), [401, 403], null, "mint with another tenant's API key");
  httpError(await http("POST", `/api/v1/tenants/${A.slug}/tokens`, { body: { sub: "k" }, token: "nope" }), [401], null, "mint with a bad key");
});

test("connect refused: namespace_required on the bare namespace", async () => {
  await refusal("/", token(A, "u1"), "namespace_required", "connect to /");
  await refusal("/", undefined, "namespace_required", "connect to / without auth");
});

test("connect refused: tenant_not_found for an unknown slug", async () => {
  await refusal(`/ct${RUN}-nobody`, token(A, "u1"), "tenant_not_found", "unknown tenant");
});

test("connect refused: auth_required without a token", async () => {
  await refusal(`/${A.slug}`, undefined, "auth_required", "no auth");
  await refusal(`/${A.slug}`, undefined, "auth_required", "auth {}", { auth: {} });
});

test("connect refused: auth_invalid for bad signature, unknown kid, other tenant's key, bad claims", async () => {
  const ns = `/${A.slug}`;
  const exp = now() + 600;
  const cases = [
    ["garbage", "not-a-jwt"],
    ["wrong secret", jwt({ sub: "u1", exp }, { kid: A.key.kid, secret: "wrong-secret" })],
    ["unknown kid", jwt({ sub: "u1", exp }, { kid: "no-such-kid", secret: A.key.secret })],
    ["other tenant's key", jwt({ sub: "u1", exp }, B.key)],
    ["missing sub", jwt({ exp }, A.key)],
    ["sub over 128 chars", jwt({ sub: "s".repeat(129), exp }, A.key)],
    ["missing exp", jwt({ sub: "u1" }, A.key)],
    ["aud of another slug", jwt({ sub: "u1", exp, aud: B.slug }, A.key)],
    ["alg none", `${b64url(JSON.stringify({ alg: "none", typ: "JWT", kid: A.key.kid }))}.${b64url(JSON.stringify({ sub: "u1", exp }))}.`],
  ];
  for (const [what, bad] of cases) await refusal(ns, bad, "auth_invalid", what);
  // The accepted edges of the same claims.
  const edge = await connect(A, "s".repeat(128), { token: jwt({ sub: "s".repeat(128), exp, aud: A.slug }, A.key) });
  check(edge.connected, "sub of 128 chars with aud = slug connects");
  // A tenant's key is no good on another tenant's namespace.
  await refusal(`/${B.slug}`, token(A, "u1"), "auth_invalid", "A's token on B");
});

test("connect refused: auth_expired for a past exp", async () => {
  await refusal(`/${A.slug}`, jwt({ sub: "u1", exp: now() - 60 }, A.key), "auth_expired", "expired token");
});

test("connect refused: origin_forbidden for an Origin outside allowed_origins; listed origin accepted", async () => {
  const tenant = await createTenant("origin", { allowed_origins: ["https://good.example"] });
  await refusal(`/${tenant.slug}`, token(tenant, "u1"), "origin_forbidden", "Origin https://evil.example", {
    extraHeaders: { Origin: "https://evil.example" },
  });
  await connect(tenant, "u1", { extraHeaders: { Origin: "https://good.example" } });
  // An empty allow-list means any origin: the change reaches every node within the bound.
  await patchTenant(tenant, { allowed_origins: [] });
  await within(propagation, "empty allowed_origins admits any Origin", async () => {
    const result = await attempt(`/${tenant.slug}`, token(tenant, "u2"), { extraHeaders: { Origin: "https://evil.example" } });
    check(result.connected, `refused ${result.code}`);
  });
});

test("connect refused: connection_limit at max_connections (counted across nodes); a freed slot admits the next", async () => {
  const tenant = await createTenant("cap", { limits: { max_connections: 2 } });
  const first = await connect(tenant, "u1");
  await connect(tenant, "u2");
  await within(propagation, "third connection refused", async () => {
    const result = await attempt(`/${tenant.slug}`, token(tenant, "u3"));
    if (result.connected) result.socket.close();
    check(!result.connected, "third connection was accepted");
  });
  await refusal(`/${tenant.slug}`, token(tenant, "u3"), "connection_limit", "third connection");
  first.close();
  await within(propagation + 1000, "a connection after one closed", async () => {
    const result = await attempt(`/${tenant.slug}`, token(tenant, "u3"));
    check(result.connected, `refused ${result.code}`);
  });
});

test("join and leave: exact acks; fresh room seq 0 with self as member; message after leave is not_joined", async () => {
  const s = await connect(A, "u1");
  const ack = await join(s, "jl-room");
  eq(ack, { ok: true, room: "jl-room", seq: 0, members: [{ id: "u1", name: "Name u1" }] }, "join ack of a fresh room");
  const again = await join(s, "jl-room");
  eq(again.members, [{ id: "u1", name: "Name u1" }], "joining twice keeps one member");
  eq(await emit(s, "leave", { room: "jl-room" }), { ok: true, room: "jl-room" }, "leave ack");
  errAck(await emit(s, "message", { room: "jl-room", body: "x" }), "not_joined", "message after leave");
  errAck(await emit(s, "message", { room: "never-joined", body: "x" }), "not_joined", "message to a room never joined");
  // Every allowed character, and the longest allowed name, are valid room names.
  for (const room of ["AZaz09_.:@-", "r".repeat(128), "x"]) {
    eq((await join(s, room)).room, room, `join ${show(room)}`);
    eq((await send(s, room, "edge")).seq, 1, `message in ${show(room)}`);
  }
});

test("message: ack after store, broadcast shape to the room except the sending socket (same user's other socket gets it), seq from 1 without gaps", async () => {
  const room = "msg-room";
  const u1a = await connect(A, "u1");
  const u2 = await connect(A, "u2");
  const u1b = await connect(A, "u1");
  const bystander = await connect(A, "u3"); // connected to the tenant, in no room
  for (const s of [u1a, u2, u1b]) await join(s, room);
  const bodies = ["text", 42, 0, false, true, null, [1, "a", { b: [] }], { nested: { x: [1, 2.5] } }, "ünïcødé ✓ 😀"];
  const sent = [];
  for (const body of bodies) {
    const ack = await send(u1a, room, body);
    sent.push(expectedMessage(ack, u1a, body));
  }
  eq(seqs(sent), range(1, bodies.length), "seqs of sequential messages");
  for (const receiver of [u2, u1b]) {
    for (const message of sent) {
      eq(await receiver.inbox.take("message", isMessage(message.seq, room), `seq ${message.seq}`), message, `${receiver.inbox.label} broadcast`);
    }
  }
  // The sender's own socket gets nothing: a later message from u2 arrives with nothing before it.
  const marker = await send(u2, room, "marker");
  const before = await u1a.inbox.before("message", isMessage(marker.seq, room), "marker");
  eq(before.filter((i) => i.event === "message"), [], "messages echoed to the sending socket");
  eq(marker.seq, bodies.length + 1, "seq after another user's message");
  // The bystander's marker: a message in a room of its own, sent after everything above.
  await join(bystander, "bystander-room");
  const own = await connect(A, "u4");
  await join(own, "bystander-room");
  const mark = await send(own, "bystander-room", "mark");
  const seen = await bystander.inbox.before("message", isMessage(mark.seq, "bystander-room"), "own-room marker");
  eq(seen.filter((i) => i.data?.room !== "bystander-room").map((i) => [i.event, i.data]), [], "events of a room the socket never joined");
  // Durably stored before the ack: history on any node has every message at once.
  const page = await history(u2, { room, limit: 100 });
  eq(page.messages, [...sent, expectedMessage(marker, u2, "marker")], "history right after the acks");
  eq(page.has_more, false, "has_more of the whole room");
});

test("message: concurrent senders on every node get distinct seqs forming 1..N without gaps; everyone receives the others'", async () => {
  const room = "race-room";
  const senders = [];
  for (let i = 0; i < 4; i++) senders.push(await connect(A, `racer${i}`));
  for (const s of senders) await join(s, room);
  const perSender = 15;
  const acks = await Promise.all(
    senders.map((s, i) => Promise.all(range(1, perSender).map((n) => send(s, room, { from: i, n })))),
  );
  const all = acks.flat().map((ack) => ack.seq).sort((x, y) => x - y);
  eq(all, range(1, senders.length * perSender), "all acked seqs");
  for (const [i, receiver] of senders.entries()) {
    const expected = acks.flatMap((list, j) => (j === i ? [] : list.map((a) => a.seq))).sort((x, y) => x - y);
    const got = [];
    for (const seq of expected) got.push((await receiver.inbox.take("message", isMessage(seq, room), `seq ${seq}`)).seq);
    eq(got.length, expected.length, `${receiver.inbox.label} received count`);
    eq(receiver.inbox.drain("message").map((i) => i.data.seq), [], `${receiver.inbox.label} extra messages (own or duplicates)`);
  }
  const page = await history(senders[0], { room, limit: 100 });
  eq(seqs(page.messages), range(1, senders.length * perSender), "history seqs");
});

test("message: client_id is idempotent per user and room; broadcast carries client_id", async () => {
  const room = "idem-room";
  const u1 = await connect(A, "u1");
  const u2 = await connect(A, "u2");
  await join(u1, room);
  await join(u2, room);
  const first = await send(u1, room, { n: 1 }, "cid-1");
  eq(await u2.inbox.take("message", isMessage(first.seq, room)), expectedMessage(first, u1, { n: 1 }, "cid-1"), "broadcast with client_id");
  const retry = await send(u1, room, { n: 1 }, "cid-1");
  eq([retry.id, retry.seq], [first.id, first.seq], "resent client_id returns the original id/seq");
  // The same key from another socket of the same user, after a reconnect, still maps to the original.
  const u1again = await connect(A, "u1");
  await join(u1again, room);
  const third = await send(u1again, room, { n: 1 }, "cid-1");
  eq([third.id, third.seq], [first.id, first.seq], "same client_id from another socket of the same user");
  // Another user, or another room, with the same key is a new message.
  const other = await send(u2, room, { n: 2 }, "cid-1");
  eq(other.seq, first.seq + 1, "same client_id from another user is a new message");
  await join(u1, "idem-room-2");
  const elsewhere = await send(u1, "idem-room-2", { n: 3 }, "cid-1");
  eq(elsewhere.seq, 1, "same client_id in another room is a new message");
  const page = await history(u2, { room });
  eq(page.messages.map((m) => [m.seq, m.client_id, m.sender.id]), [[1, "cid-1", "u1"], [2, "cid-1", "u2"]], "stored once per user");
});

test("join since: after a disconnect, missed lists every message with seq > since, oldest first, across nodes", async () => {
  const room = "recover-room";
  const writer = await connect(A, "writer");
  let reader = await connect(A, "reader");
  await join(writer, room);
  await join(reader, room);
  const early = [];
  for (let i = 1; i <= 3; i++) early.push(expectedMessage(await send(writer, room, `early ${i}`), writer, `early ${i}`));
  for (const m of early) await reader.inbox.take("message", isMessage(m.seq, room));
  const lastSeen = early.at(-1).seq;
  reader.close();
  const late = [];
  for (let i = 1; i <= 4; i++) late.push(expectedMessage(await send(writer, room, `late ${i}`), writer, `late ${i}`));
  // A fresh socket, on the other node when there are two.
  reader = await connect(A, "reader", { node: CLUSTER ? (reader.node + 1) % NODES.length : 0 });
  const ack = await join(reader, room, lastSeen);
  eq(ack.seq, late.at(-1).seq, "join since: seq is the room's latest");
  eq(ack.missed, late, "join since: missed");
  check(ack.truncated === undefined || ack.truncated === false, `join since: truncated must be absent or false when all fit: ${show(ack.truncated)}`);
  const upToDate = await join(reader, room, ack.seq);
  eq(upToDate.missed, [], "join since the latest seq: nothing missed");
  const fromZero = await join(reader, room, 0);
  eq(fromZero.missed, [...early, ...late], "join since 0: the whole room");
});

test("join since: a long gap is paged (truncated: true, oldest first) and the rest is reachable by history", async () => {
  const room = "gap-room";
  const writer = await connect(A, "writer");
  await join(writer, room);
  // More than one replay page (config.replay_page, the server's messages.replay_page, when given).
  const total = (config.replay_page ?? 200) + 30;
  for (let start = 1; start <= total; start += 50) {
    await Promise.all(range(start, Math.min(total, start + 49)).map((n) => send(writer, room, n)));
  }
  const reader = await connect(A, "reader");
  const ack = await join(reader, room, 0);
  eq(ack.seq, total, "join seq");
  check(ack.missed.length >= 1, "missed is empty after a gap of 230");
  eq(seqs(ack.missed), range(1, ack.missed.length), "missed seqs are the oldest, in order");
  if (ack.missed.length < total) {
    eq(ack.truncated, true, `missed has ${ack.missed.length} of ${total}: truncated`);
    notes.push(`join since: missed page size is ${ack.missed.length}`);
    let after = ack.missed.at(-1).seq;
    const rest = [];
    for (let pages = 0; pages < 50 && after < total; pages++) {
      const page = await history(reader, { room, after_seq: after, limit: 100 });
      check(page.messages.length > 0, `history after_seq ${after} is empty with has_more ${page.has_more}`);
      rest.push(...page.messages);
      after = page.messages.at(-1).seq;
      eq(page.has_more, after < total, `history after_seq page ending at ${after}: has_more`);
    }
    eq(seqs(rest), range(ack.missed.length + 1, total), "the rest by history after_seq");
  } else {
    check(ack.truncated === undefined || ack.truncated === false, "truncated with nothing left");
    notes.push(`join since: all ${total} missed messages fit one page; truncation not exercised`);
  }
});

test("history: latest limit by default, before_seq / after_seq paging with has_more, oldest first", async () => {
  const room = "hist-room";
  const s = await connect(A, "u1");
  await join(s, room);
  const empty = await history(s, { room });
  eq([empty.messages, empty.has_more], [[], false], "history of an empty room");
  const sent = [];
  for (let i = 1; i <= 7; i++) sent.push(expectedMessage(await send(s, room, `h${i}`), s, `h${i}`));
  const cases = [
    [{ limit: 3 }, [5, 6, 7], true],
    [{ before_seq: 5, limit: 3 }, [2, 3, 4], true],
    [{ before_seq: 2, limit: 3 }, [1], false],
    [{ before_seq: 1 }, [], false],
    [{ after_seq: 4, limit: 2 }, [5, 6], true],
    [{ after_seq: 5, limit: 2 }, [6, 7], false],
    [{ after_seq: 7 }, [], false],
    [{}, [1, 2, 3, 4, 5, 6, 7], false],
    [{ after_seq: 2, before_seq: 6 }, [3, 4, 5], false],
  ];
  for (const [bounds, expected, more] of cases) {
    const page = await history(s, { room, ...bounds });
    eq(page.messages, expected.map((seq) => sent[seq - 1]), `history ${show(bounds)} messages`);
    eq(page.has_more, more, `history ${show(bounds)} has_more`);
  }
});

test("presence: deduplicated by user; join/leave events on a user's first join and last leave or disconnect", async () => {
  const room = "pres-room";
  const watcher = await connect(A, "watcher");
  await join(watcher, room);
  const u1a = await connect(A, "u1");
  const joined = await join(u1a, room);
  eq(sortMembers(joined.members), [{ id: "u1", name: "Name u1" }, { id: "watcher", name: "Name watcher" }], "join ack members");
  eq(await watcher.inbox.take("presence", (p) => p.member?.id === "u1"), { room, action: "join", member: { id: "u1", name: "Name u1" } }, "presence join");
  // A second socket of the same user: no event, one member.
  const u1b = await connect(A, "u1");
  await join(u1b, room);
  let marker = await send(u1b, room, "after second join");
  let before = await watcher.inbox.before("message", isMessage(marker.seq, room), "marker");
  eq(before.filter((i) => i.event === "presence"), [], "presence events for a user's second socket");
  let ack = await emit(watcher, "presence", { room });
  okAck(ack, ["room", "members"], "presence");
  eq([ack.room, sortMembers(ack.members)], [room, [{ id: "u1", name: "Name u1" }, { id: "watcher", name: "Name watcher" }]], "presence members deduplicated");
  // One of two sockets leaves: the user is still present.
  eq(await emit(u1a, "leave", { room }), { ok: true, room }, "leave ack");
  marker = await send(u1b, room, "after first leave");
  before = await watcher.inbox.before("message", isMessage(marker.seq, room), "marker");
  eq(before.filter((i) => i.event === "presence"), [], "presence events while the user has a socket left");
  ack = await emit(watcher, "presence", { room });
  eq(sortMembers(ack.members), [{ id: "u1", name: "Name u1" }, { id: "watcher", name: "Name watcher" }], "presence after one socket left");
  // The last socket disconnects: leave.
  u1b.close();
  eq(await watcher.inbox.take("presence", (p) => p.member?.id === "u1"), { room, action: "leave", member: { id: "u1", name: "Name u1" } }, "presence leave on disconnect");
  ack = await emit(watcher, "presence", { room });
  eq(ack.members, [{ id: "watcher", name: "Name watcher" }], "presence after the user left");
  // An explicit leave of a user's only socket is a leave too.
  const u2 = await connect(A, "u2");
  await join(u2, room);
  await watcher.inbox.take("presence", (p) => p.member?.id === "u2" && p.action === "join");
  await emit(u2, "leave", { room });
  eq(await watcher.inbox.take("presence", (p) => p.member?.id === "u2"), { room, action: "leave", member: { id: "u2", name: "Name u2" } }, "presence leave on leave");
});

function sortMembers(members) {
  return [...members].sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
}

test("ephemeral events: relayed to the room except the sender as {room, sender, data}, ack {ok: true}, not stored", async () => {
  const room = "eph-room";
  const u1 = await connect(A, "u1");
  const u2 = await connect(A, "u2");
  await join(u1, room);
  await join(u2, room);
  const stored = await send(u1, room, "before");
  await u2.inbox.take("message", isMessage(stored.seq, room));
  eq(await emit(u1, "typing", { room, data: { typing: true } }), { ok: true }, "ephemeral ack");
  eq(await u2.inbox.take("typing"), { room, sender: { id: "u1", name: "Name u1" }, data: { typing: true } }, "ephemeral relay");
  eq(await emit(u1, "cursor", { room, data: [3, 4] }), { ok: true }, "second ephemeral ack");
  eq(await u2.inbox.take("cursor"), { room, sender: { id: "u1", name: "Name u1" }, data: [3, 4] }, "second ephemeral relay");
  const marker = await send(u2, room, "after");
  eq(marker.seq, stored.seq + 1, "ephemeral events take no seq");
  const before = await u1.inbox.before("message", isMessage(marker.seq, room), "marker");
  eq(before.filter((i) => ["typing", "cursor"].includes(i.event)), [], "ephemeral echoed to the sender");
  const page = await history(u1, { room });
  eq(page.messages.map((m) => m.body), ["before", "after"], "history holds no ephemeral event");
  errAck(await emit(u1, "wave", { room, data: 1 }), "unknown_event", "B's ephemeral event on A");
});

test("errors: bad_request for every malformed payload, and the connection stays up", async () => {
  const s = await connect(A, "u1");
  await join(s, "ok-room");
  const bad = [
    ["join", []],
    ["join", ["lobby"]],
    ["join", [42]],
    ["join", [null]],
    ["join", [[1, 2]]],
    ["join", [{}]],
    ["join", [{ room: 5 }]],
    ["join", [{ room: "" }]],
    ["join", [{ room: "r".repeat(129) }]],
    ["join", [{ room: "has space" }]],
    ["join", [{ room: "slash/room" }]],
    ["join", [{ room: "hash#room" }]],
    ["join", [{ room: "ok-room", since: "3" }]],
    ["leave", [{}]],
    ["leave", [{ room: ["a"] }]],
    ["message", [{ room: "ok-room" }]],
    ["message", [{ body: "x" }]],
    ["message", [{ room: "ok-room", body: "x", client_id: 7 }]],
    ["message", [{ room: "bad room", body: "x" }]],
    ["message", ["text"]],
    ["history", [{}]],
    ["history", [{ room: "ok-room", limit: "ten" }]],
    ["history", [{ room: "ok-room", before_seq: "5" }]],
    ["history", [{ room: "ok-room", after_seq: [1] }]],
    ["presence", [{}]],
    ["presence", [{ room: "" }]],
    ["typing", [{ data: 1 }]],
    ["typing", ["x"]],
  ];
  for (const [event, args] of bad) {
    errAck(await emit(s, event, ...args), "bad_request", `${event} ${show(args)}`);
  }
  const ack = await send(s, "ok-room", "still up");
  eq(ack.seq, 1, "message after bad requests");
  check(s.connected, "socket still connected");
});

test("errors: room_forbidden outside the token's rooms globs", async () => {
  const s = await connect(A, "u1", { token: token(A, "u1", "Name u1", { rooms: ["team:*", "dm:u1"] }) });
  await join(s, "team:red");
  await join(s, "dm:u1");
  for (const room of ["lobby", "dm:u2", "team"]) errAck(await emit(s, "join", { room }), "room_forbidden", `join ${room}`);
  const empty = await connect(A, "u2", { token: token(A, "u2", "Name u2", { rooms: [] }) });
  errAck(await emit(empty, "join", { room: "lobby" }), "room_forbidden", "rooms claim []");
});

test("errors: too_large above max_message_bytes (encoded body), socket stays up; a limit change applies to the next event", async () => {
  const tenant = await createTenant("big", { limits: { max_message_bytes: 100, messages_per_second: 1000 } });
  const s = await connect(tenant, "u1");
  await join(s, "r");
  const fits = await send(s, "r", "x".repeat(98)); // 100 bytes encoded, with quotes
  eq(fits.seq, 1, "body of exactly max_message_bytes");
  errAck(await emit(s, "message", { room: "r", body: "x".repeat(99) }), "too_large", "body of max_message_bytes + 1");
  errAck(await emit(s, "message", { room: "r", body: { list: "y".repeat(5000) } }), "too_large", "5 kB body");
  errAck(await emit(s, "message", { room: "r", body: "z".repeat(200000) }), "too_large", "200 kB body (below the transport limit)");
  check(s.connected, "socket still connected after too_large");
  eq((await send(s, "r", "small")).seq, 2, "seq after refused large bodies (nothing stored)");
  await patchTenant(tenant, { limits: { max_message_bytes: 1000 } }, 0);
  await within(propagation, "raised max_message_bytes", async () => {
    const ack = await emit(s, "message", { room: "r", body: "x".repeat(500) });
    check(ack.ok === true, `still refused: ${show(ack)}`);
  });
});

test("errors: rate_limited with retry_after_ms over messages_per_second; refused messages are not stored", async () => {
  const tenant = await createTenant("rate", { limits: { messages_per_second: 3 } });
  const s = await connect(tenant, "u1");
  await join(s, "r");
  const acks = await Promise.all(range(1, 15).map((n) => emit(s, "message", { room: "r", body: n })));
  const ok = acks.filter((a) => a.ok === true);
  const limited = acks.filter((a) => a.ok !== true);
  check(limited.length >= 1, `15 messages at once with messages_per_second 3: none refused (${show(acks)})`);
  check(ok.length >= 1 && ok.length <= 6, `15 messages at once with messages_per_second 3: ${ok.length} accepted`);
  let retryAfter = 0;
  for (const ack of limited) {
    const where = ack.error && "retry_after_ms" in ack.error ? ack.error : ack;
    if (where === ack) {
      check(Number.isInteger(ack.retry_after_ms), `rate_limited ack has no retry_after_ms: ${show(ack)}`);
      eq(ack.ok, false, "rate_limited ok");
      eq(ack.error.code, "rate_limited", "rate_limited code");
    } else {
      errAck(ack, "rate_limited", "rate_limited ack", ["retry_after_ms"]);
    }
    check(Number.isInteger(where.retry_after_ms) && where.retry_after_ms > 0 && where.retry_after_ms <= 1000, `retry_after_ms must be an integer in (0, 1000]: ${show(ack)}`);
    retryAfter = Math.max(retryAfter, where.retry_after_ms);
  }
  eq(seqs(ok).sort((x, y) => x - y), range(1, ok.length), "accepted seqs are 1..k without gaps");
  check(s.connected, "socket still connected after rate_limited");
  // Waiting the advertised time is enough for the next message (the server's own number).
  await new Promise((resolve) => setTimeout(resolve, retryAfter));
  const next = await send(s, "r", "after waiting");
  eq(next.seq, ok.length + 1, "message after retry_after_ms");
  // Another connection reads the room: this one's budget is not the point here.
  const reader = await connect(tenant, "u2");
  await join(reader, "r");
  const page = await history(reader, { room: "r" });
  eq(seqs(page.messages), range(1, ok.length + 1), "stored messages (refused ones not stored)");
});

test("errors: room_limit at max_rooms_per_connection; leaving frees a slot", async () => {
  const tenant = await createTenant("rooms", { limits: { max_rooms_per_connection: 2 } });
  const s = await connect(tenant, "u1");
  await join(s, "r1");
  await join(s, "r2");
  errAck(await emit(s, "join", { room: "r3" }), "room_limit", "third room");
  await emit(s, "leave", { room: "r1" });
  await join(s, "r3");
  // The limit is per connection: another socket of the same user has its own slots.
  const other = await connect(tenant, "u1");
  await join(other, "r1");
});

test("errors: unknown_event for an undeclared event name", async () => {
  const s = await connect(A, "u1");
  errAck(await emit(s, "no-such-event", { room: "r" }), "unknown_event", "undeclared event");
  errAck(await emit(s, "dance"), "unknown_event", "undeclared event without payload");
  check(s.connected, "socket still connected");
});

test("tenant isolation: same room names and user ids in two tenants never see each other", async () => {
  const room = "shared-name";
  const a1 = await connect(A, "same-user");
  const a2 = await connect(A, "other");
  const b1 = await connect(B, "same-user", { name: "Bname same-user" });
  const b2 = await connect(B, "other", { name: "Bname other" });
  for (const s of [a1, a2, b1, b2]) await join(s, room);
  const inA = await send(a1, room, "in A");
  const inB = await send(b1, room, "in B");
  eq([inA.seq, inB.seq], [1, 1], "each tenant's room starts at seq 1");
  eq(await a2.inbox.take("message", isMessage(1, room)), expectedMessage(inA, a1, "in A"), "A's message in A");
  eq(await b2.inbox.take("message", isMessage(1, room)), expectedMessage(inB, b1, "in B"), "B's message in B");
  const markerA = await send(a2, room, "marker A");
  const markerB = await send(b2, room, "marker B");
  const seenB = await b1.inbox.before("message", isMessage(markerB.seq, room), "marker B");
  eq(seenB.filter((i) => /Name |in A|marker A/.test(JSON.stringify(i.data))), [], "A's traffic in B");
  const seenA = await a1.inbox.before("message", isMessage(markerA.seq, room), "marker A");
  eq(seenA.filter((i) => /Bname|in B|marker B/.test(JSON.stringify(i.data))), [], "B's traffic in A");
  const hb = await history(b1, { room });
  eq(hb.messages.map((m) => m.body), ["in B", "marker B"], "B's history");
  const pb = await emit(b1, "presence", { room });
  eq(sortMembers(pb.members), [{ id: "other", name: "Bname other" }, { id: "same-user", name: "Bname same-user" }], "B's presence");
  errAck(await emit(b1, "typing", { room, data: 1 }), "unknown_event", "A's ephemeral event on B");
  const restB = await http("GET", `/api/v1/tenants/${B.slug}/rooms/${room}/messages`);
  eq(restB.status, 200, "REST history of B");
  check(!JSON.stringify(restB.json).includes("in A"), `A's message in B's REST history: ${show(restB.json)}`);
  httpError(await http("GET", `/api/v1/tenants/${B.slug}/rooms/${room}/messages`, { token: A.apiKey }), [401, 403], null, "A's API key on B's history");
});

test("REST publish: stored, then broadcast to the whole room on every node; REST history agrees", async () => {
  const room = "rest-room";
  const sockets = [];
  for (const sub of ["p1", "p2", "p3"]) sockets.push(await connect(A, sub));
  for (const s of sockets) await join(s, room);
  const first = await send(sockets[0], room, "from socket");
  const response = await http("POST", `/api/v1/tenants/${A.slug}/rooms/${room}/messages`, { body: { body: { alert: "from backend" } } });
  check([200, 201].includes(response.status), `REST publish: HTTP ${response.status} ${show(response.json)}`);
  for (const s of sockets) {
    const got = await s.inbox.take("message", isMessage(first.seq + 1, room), "REST-published");
    eq([got.room, got.seq, got.body], [room, first.seq + 1, { alert: "from backend" }], `${s.inbox.label} REST-published message`);
  }
  const byKey = await http("POST", `/api/v1/tenants/${A.slug}/rooms/${room}/messages`, { body: { body: "by api key" }, token: A.apiKey });
  check([200, 201].includes(byKey.status), `REST publish with the tenant's API key: HTTP ${byKey.status} ${show(byKey.json)}`);
  for (const s of sockets) await s.inbox.take("message", isMessage(first.seq + 2, room), "API-key-published");
  httpError(await http("POST", `/api/v1/tenants/${A.slug}/rooms/${room}/messages`, { body: { body: "x" }, token: B.apiKey }), [401, 403], null, "B's API key publishing on A");
  const page = await history(sockets[1], { room });
  eq(page.messages.map((m) => m.body), ["from socket", { alert: "from backend" }, "by api key"], "socket history after REST publish");
  const rest = await http("GET", `/api/v1/tenants/${A.slug}/rooms/${room}/messages?after_seq=1&limit=1`);
  eq(rest.status, 200, `REST history HTTP status ${show(rest.json)}`);
  const restMessages = find(rest.json, (v) => Array.isArray(v));
  eq(restMessages, [page.messages[1]], "REST history after_seq=1&limit=1 (broadcast shape)");
});

test("long-polling client: connects, joins, sends and receives", async () => {
  const room = "poll-room";
  const poller = await connect(A, "poller", { transports: ["polling"] });
  const ws = await connect(A, "ws");
  await join(poller, room);
  await join(ws, room);
  const fromPoller = await send(poller, room, { via: "polling" });
  eq(await ws.inbox.take("message", isMessage(fromPoller.seq, room)), expectedMessage(fromPoller, poller, { via: "polling" }), "websocket receives from polling");
  const fromWs = await send(ws, room, { via: "websocket" });
  eq(await poller.inbox.take("message", isMessage(fromWs.seq, room)), expectedMessage(fromWs, ws, { via: "websocket" }), "polling receives from websocket");
  eq(poller.io.engine.transport.name, "polling", "transport stayed long-polling");
});

test("signing keys: a rotated key works at the next connect; a revoked key is refused", async () => {
  const tenant = await createTenant("keys");
  const response = await http("POST", `/api/v1/tenants/${tenant.slug}/keys`, { body: {} });
  check([200, 201].includes(response.status), `add key: HTTP ${response.status} ${show(response.json)}`);
  const fresh = signingKeyIn(response.json);
  check(fresh && fresh.kid !== tenant.key.kid, `add key: no new {kid, secret} in ${show(response.json)}`);
  await within(propagation, "new key accepted", async () => {
    const result = await attempt(`/${tenant.slug}`, jwt({ sub: "u1", exp: now() + 60 }, fresh));
    check(result.connected, `refused ${result.code}`);
  });
  const revoked = await http("DELETE", `/api/v1/tenants/${tenant.slug}/keys/${tenant.key.kid}`);
  check([200, 204].includes(revoked.status), `revoke key: HTTP ${revoked.status} ${show(revoked.json)}`);
  await within(propagation, "revoked key refused", async () => {
    await refusal(`/${tenant.slug}`, token(tenant, "u1"), "auth_invalid", "token signed with a revoked key");
  });
  await connect(tenant, "u2", { token: jwt({ sub: "u2", exp: now() + 60 }, fresh) });
});

test("suspend: live sockets on every node disconnected within 1 s, events meanwhile get tenant_suspended, connects refused; resume admits again", async () => {
  const tenant = await createTenant("susp", { limits: { messages_per_second: 1000 } });
  const sockets = [];
  for (let i = 0; i < 2 * NODES.length; i++) sockets.push(await connect(tenant, `u${i}`));
  for (const s of sockets) await join(s, "r");
  // One socket per node keeps talking while the suspend happens, until it is cut off.
  let applied = null;
  const talking = sockets.slice(0, NODES.length).map(async (s) => {
    const acks = [];
    for (let i = 0; i < 2000 && s.connected && (applied === null || Date.now() - applied < PROPAGATION_MS + 500); i++) {
      const sentAfter = applied !== null;
      try {
        acks.push({ sentAfter, ack: await s.timeout(PROPAGATION_MS).emitWithAck("message", { room: "r", body: i }) });
      } catch {
        break; // disconnected while waiting for the ack
      }
    }
    return { node: s.node, acks };
  });
  const started = Date.now();
  await patchTenant(tenant, { status: "suspended" }, 0);
  applied = Date.now();
  const outcomes = await Promise.all(talking);
  for (const s of sockets) {
    const left = PROPAGATION_MS - (Date.now() - applied);
    if (s.connected && left > 0) await new Promise((resolve) => (s.once("disconnect", resolve), setTimeout(resolve, left)));
    check(!s.connected, `${s.inbox.label} (node ${s.node}) still connected ${Date.now() - applied} ms after the suspend was applied`);
    const at = s.disconnects[0]?.at ?? Date.now();
    notes.push(`suspend: node ${s.node} socket disconnected ${at - applied} ms after the PATCH answered (${at - started} ms after it was sent), reason ${s.disconnects[0]?.reason}`);
  }
  let suspendedAcks = 0;
  for (const { node, acks } of outcomes) {
    // Accepted until the change reaches the socket's node, refused from then on: never ok again.
    const firstRefusal = acks.findIndex((a) => a.ack.ok !== true);
    if (firstRefusal < 0) continue;
    for (const { ack } of acks.slice(firstRefusal)) errAck(ack, "tenant_suspended", `event on a live socket of a suspended tenant (node ${node})`);
    const lateOk = acks.filter((a) => a.sentAfter && a.ack.ok === true);
    if (node === 0) eq(lateOk.length, 0, `events accepted on the node that applied the suspend after it answered`);
    suspendedAcks += acks.length - firstRefusal;
    const late = acks.filter((a) => a.sentAfter && a.ack.ok === true).length;
    if (late) notes.push(`suspend: node ${node} accepted ${late} event(s) sent after the PATCH answered (within the 1 s bound)`);
  }
  notes.push(`suspend: ${suspendedAcks} event(s) answered tenant_suspended before the disconnect`);
  for (let node = 0; node < NODES.length; node++) {
    await within(propagation, `new connect refused on node ${node}`, () => refusal(`/${tenant.slug}`, token(tenant, "late"), "tenant_suspended", `connect to a suspended tenant on node ${node}`, { node }));
  }
  await patchTenant(tenant, { status: "active" }, NODES.length - 1);
  for (let node = 0; node < NODES.length; node++) {
    await within(propagation, `connect after resume on node ${node}`, async () => {
      const result = await attempt(`/${tenant.slug}`, token(tenant, "back"), { node });
      check(result.connected, `refused ${result.code}`);
    });
  }
});

test("delete: live sockets disconnected within 1 s, then tenant_not_found; messages gone", async () => {
  const tenant = await createTenant("del");
  const sockets = [];
  for (let i = 0; i < NODES.length; i++) sockets.push(await connect(tenant, `u${i}`));
  await join(sockets[0], "r");
  await send(sockets[0], "r", "doomed");
  const response = await http("DELETE", `/api/v1/tenants/${tenant.slug}`, { node: 0 });
  check([200, 204].includes(response.status), `DELETE tenant: HTTP ${response.status} ${show(response.json)}`);
  created.splice(created.indexOf(tenant.slug), 1);
  const applied = Date.now();
  for (const s of sockets) {
    const left = PROPAGATION_MS - (Date.now() - applied);
    if (s.connected && left > 0) await new Promise((resolve) => (s.once("disconnect", resolve), setTimeout(resolve, left)));
    check(!s.connected, `${s.inbox.label} still connected 1 s after the delete`);
  }
  for (let node = 0; node < NODES.length; node++) {
    await within(propagation, `tenant_not_found on node ${node}`, () => refusal(`/${tenant.slug}`, token(tenant, "u9"), "tenant_not_found", `connect to a deleted tenant on node ${node}`, { node }));
  }
  httpError(await http("GET", `/api/v1/tenants/${tenant.slug}/rooms/r/messages`), [404], null, "history of a deleted tenant");
});

// ---------------------------------------------------------------- main

async function runOne({ name, fn }) {
  openSockets = [];
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Failure(`test did not finish within ${TEST_MS} ms`)), TEST_MS);
      }),
    ]);
    return null;
  } catch (error) {
    // A script error: its first frames are enough to find it.
    return error instanceof Failure ? error.message : (error?.stack ?? String(error)).split("\n").slice(0, 3).join("\n    ");
  } finally {
    clearTimeout(timer);
    for (const s of openSockets) s.close();
  }
}

// Every node must be up before anything else means something.
for (const base of NODES) {
  const ready = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(WAIT_MS) }).then((r) => r.status, (e) => e.message);
  if (ready !== 200) {
    console.log(`node ${base} is not ready (/readyz: ${ready})\n0 passed, 1 failed`);
    process.exit(1);
  }
}

const only = process.env.CONTRACT_ONLY;
const failures = [];
let passed = 0;
console.log(`contract: ${NODES.length} node(s) ${NODES.join(", ")}, run ${RUN}`);
for (const entry of tests) {
  if (only && !entry.name.includes(only)) continue;
  // Tenants A and B come from the first test; the others need them.
  if (only && !A && entry !== tests[0]) await runOne(tests[0]);
  if (!A && entry !== tests[0]) {
    failures.push({ name: entry.name, failure: "skipped: the shared tenants could not be created" });
    continue;
  }
  const started = Date.now();
  const failure = await runOne(entry);
  if (failure) {
    failures.push({ name: entry.name, failure });
    console.log(`FAIL ${entry.name} (${Date.now() - started} ms)\n     ${failure}`);
  } else {
    passed += 1;
    console.log(`ok   ${entry.name} (${Date.now() - started} ms)`);
  }
}
for (const slug of created) {
  await http("DELETE", `/api/v1/tenants/${slug}`).catch(() => undefined);
}
for (const note of notes) console.log(`note ${note}`);
if (failures.length) {
  console.log(`\n${failures.length} failure(s):`);
  for (const { name, failure } of failures) console.log(`- ${name}\n    ${failure}`);
}
console.log(`${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
