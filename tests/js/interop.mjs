// Interop check with the official socket.io-client, driven by tests/test_js_interop.py.
// Usage: node tests/js/interop.mjs '<json config>'; prints one JSON result line on stdout.
// Config: { url, slug, suspendedSlug, allowedOrigin, tokens: { alice, bob, carol, dave, expired } }.
import { io } from "socket.io-client";

const config = JSON.parse(process.argv[2]);
const WITHIN = 5000;
const sockets = [];
let step = "start"; // reported if the run times out

// The whole run is bounded: a hang prints a result the test can read, then exits.
const guard = setTimeout(() => finish({ error: `timed out at ${step}` }, 2), 40000);

function finish(result, code = 0) {
  clearTimeout(guard);
  for (const socket of sockets) socket.close();
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

function open(namespace, options = {}) {
  const socket = io(config.url + namespace, {
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: WITHIN,
    ...options,
  });
  sockets.push(socket);
  return socket;
}

// Resolves with { connected } or { message, data } from connect_error, whichever comes first.
function outcome(socket, label) {
  step = label;
  return new Promise((resolve) => {
    socket.once("connect", () => resolve({ connected: true, transport: socket.io.engine.transport.name }));
    socket.once("connect_error", (err) => resolve({ message: err.message, data: err.data ?? null }));
  });
}

function nextEvent(socket, event, within = WITHIN) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), within);
    socket.once(event, (payload) => {
      clearTimeout(timer);
      resolve(payload);
    });
  });
}

async function refusals() {
  const { slug, suspendedSlug, allowedOrigin, tokens } = config;
  const cases = {
    namespace_required: ["", { auth: { token: tokens.alice } }],
    tenant_not_found: ["/no-such-tenant-js", { auth: { token: tokens.alice } }],
    tenant_suspended: ["/" + suspendedSlug, { auth: { token: tokens.alice } }],
    auth_required: ["/" + slug, {}],
    auth_invalid: ["/" + slug, { auth: { token: "not.a.jwt" } }],
    auth_expired: ["/" + slug, { auth: { token: tokens.expired } }],
    origin_forbidden: [
      "/" + slug,
      { auth: { token: tokens.alice }, transports: ["polling"], extraHeaders: { Origin: "https://evil.example.com" } },
    ],
  };
  const results = {};
  for (const [code, [namespace, options]] of Object.entries(cases)) {
    results[code] = await outcome(open(namespace, options), code);
  }
  results.allowed_origin = await outcome(
    open("/" + slug, { auth: { token: tokens.alice }, extraHeaders: { Origin: allowedOrigin } }),
    "allowed_origin",
  );
  return results;
}

async function messaging() {
  const ns = "/" + config.slug;
  const alice = open(ns, { auth: { token: config.tokens.alice } });
  const bob = open(ns, { auth: { token: config.tokens.bob } });
  // Both listeners go on before either socket can connect, so no connect event is missed.
  const connects = await Promise.all([outcome(alice, "alice"), outcome(bob, "bob")]);
  step = "messaging";
  const joins = [
    await alice.timeout(WITHIN).emitWithAck("join", { room: "lobby" }),
    await bob.timeout(WITHIN).emitWithAck("join", { room: "lobby" }),
  ];
  const aliceInbox = [];
  alice.on("message", (m) => aliceInbox.push(m));
  const bobReceives = nextEvent(bob, "message");
  const sent = await alice.timeout(WITHIN).emitWithAck("message", {
    room: "lobby",
    body: { text: "hello from js", n: 1 },
    client_id: "js-1",
  });
  const received = await bobReceives;
  const resent = await alice.timeout(WITHIN).emitWithAck("message", {
    room: "lobby",
    body: { text: "hello from js", n: 1 },
    client_id: "js-1",
  });
  const notJoined = await alice.timeout(WITHIN).emitWithAck("message", { room: "elsewhere", body: 1 });
  const badRequest = await alice.timeout(WITHIN).emitWithAck("join", "lobby");
  const unknown = await alice.timeout(WITHIN).emitWithAck("no-such-event", { room: "lobby" });

  // A long-polling client in the same room: its message reaches the websocket clients.
  const carol = open(ns, { auth: { token: config.tokens.carol }, transports: ["polling"] });
  const carolConnect = await outcome(carol, "carol");
  step = "polling";
  const carolJoin = await carol.timeout(WITHIN).emitWithAck("join", { room: "lobby", since: 0 });
  const bobFromCarol = nextEvent(bob, "message");
  const carolSent = await carol.timeout(WITHIN).emitWithAck("message", { room: "lobby", body: "from polling" });
  const bobGotCarol = await bobFromCarol;
  const history = await bob.timeout(WITHIN).emitWithAck("history", { room: "lobby" });
  // The default transports (long-polling, then the upgrade to a websocket): both ways once
  // upgraded, after the history above was read.
  const dave = open(ns, { auth: { token: config.tokens.dave }, transports: ["polling", "websocket"] });
  const daveConnect = await outcome(dave, "dave");
  step = "upgrade";
  const daveUpgraded =
    dave.io.engine.transport.name === "websocket" ||
    (await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), WITHIN);
      dave.io.engine.once("upgrade", () => {
        clearTimeout(timer);
        resolve(true);
      });
    }));
  const daveJoin = await dave.timeout(WITHIN).emitWithAck("join", { room: "lobby" });
  const daveReceives = nextEvent(dave, "message");
  await bob.timeout(WITHIN).emitWithAck("message", { room: "lobby", body: "to the upgraded" });
  const daveGot = await daveReceives;
  const bobFromDave = nextEvent(bob, "message");
  const daveSent = await dave.timeout(WITHIN).emitWithAck("message", { room: "lobby", body: "from the upgraded" });
  const bobGotDave = await bobFromDave;
  // Give a wrongly echoed broadcast time to arrive before reading alice's inbox.
  await new Promise((resolve) => setTimeout(resolve, 300));
  return {
    connects,
    joins,
    sent,
    received,
    resent,
    aliceInbox,
    notJoined,
    badRequest,
    unknown,
    carol: { connect: carolConnect, join: carolJoin, sent: carolSent, transport: carol.io.engine.transport.name },
    bobGotCarol,
    history,
    dave: {
      connect: daveConnect,
      upgraded: daveUpgraded,
      join: daveJoin,
      got: daveGot,
      sent: daveSent,
      bobGot: bobGotDave,
      transport: dave.io.engine.transport.name,
    },
  };
}

try {
  const result = { refusals: await refusals(), messaging: await messaging() };
  finish(result);
} catch (err) {
  finish({ error: String(err && err.stack ? err.stack : err) }, 1);
}
