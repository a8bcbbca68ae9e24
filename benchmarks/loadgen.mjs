// The load generator: one Node process driving many official socket.io-client sockets.
//
//   node benchmarks/loadgen.mjs CONFIG.json
//
// CONFIG is {scenario, url, namespace, tokens[], timeout_s, server_pid?, clk_tck?, ...}; the
// result is one JSON document on stdout (the last line). Every run is bounded: a hard timeout
// exits with code 2, and every loop below has a count and a deadline. The generator reports its
// own CPU time (process.cpuUsage) per phase, so a run can say when it, not the server, was the
// limit. Scenarios: fanout, chat, storm, recovery, tenants, hold, fixed (see each function).

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const PAD = "x".repeat(cfg.pad_bytes ?? 64);

const hardTimeout = setTimeout(() => {
  console.log(JSON.stringify({ error: `timed out after ${cfg.timeout_s}s` }));
  process.exit(2);
}, (cfg.timeout_s ?? 300) * 1000);

const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function note(text) {
  process.stderr.write(`[loadgen] ${text}\n`);
}

// -- measurement helpers ---------------------------------------------------------------------

class Samples {
  constructor() {
    this.values = new Float64Array(1024);
    this.n = 0;
  }
  add(v) {
    if (this.n === this.values.length) {
      const grown = new Float64Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.n++] = v;
  }
  summary() {
    if (this.n === 0) return { n: 0 };
    const sorted = this.values.slice(0, this.n).sort();
    const at = (q) => sorted[Math.min(this.n - 1, Math.floor(q * this.n))];
    const r = (v) => Math.round(v * 100) / 100;
    return {
      n: this.n,
      p50_ms: r(at(0.5)),
      p90_ms: r(at(0.9)),
      p99_ms: r(at(0.99)),
      max_ms: r(sorted[this.n - 1]),
    };
  }
}

// CPU of this process and (when its pid is given) of the server, over one phase.
function serverTicks() {
  if (!cfg.server_pid) return null;
  try {
    const stat = readFileSync(`/proc/${cfg.server_pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]); // utime + stime
  } catch {
    return null;
  }
}

// Nanoseconds a task spent waiting for a CPU while runnable: other load on the same core.
function runqueueWaitNs(pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[1]);
  } catch {
    return null;
  }
}

function phase() {
  const t0 = now();
  const cpu0 = process.cpuUsage();
  const srv0 = serverTicks();
  const genWait0 = runqueueWaitNs("self");
  const srvWait0 = cfg.server_pid ? runqueueWaitNs(cfg.server_pid) : null;
  return () => {
    const wall = (now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const gen = (cpu.user + cpu.system) / 1e6;
    const out = {
      wall_s: round(wall, 3),
      generator_cpu_s: round(gen, 3),
      generator_cpu_frac: round(gen / wall, 3),
    };
    const srv1 = serverTicks();
    if (srv0 !== null && srv1 !== null) {
      const s = (srv1 - srv0) / (cfg.clk_tck ?? 100);
      out.server_cpu_s = round(s, 3);
      out.server_cpu_frac = round(s / wall, 3);
    }
    const genWait1 = runqueueWaitNs("self");
    if (genWait0 !== null && genWait1 !== null) {
      out.generator_runqueue_wait_frac = round((genWait1 - genWait0) / 1e9 / wall, 3);
    }
    const srvWait1 = cfg.server_pid ? runqueueWaitNs(cfg.server_pid) : null;
    if (srvWait0 !== null && srvWait1 !== null) {
      out.server_runqueue_wait_frac = round((srvWait1 - srvWait0) / 1e9 / wall, 3);
    }
    return out;
  };
}

function round(v, digits = 2) {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

// -- sockets ---------------------------------------------------------------------------------

function connectOne(index, namespace = cfg.namespace, token = null) {
  const tok = token ?? cfg.tokens[index % cfg.tokens.length];
  const socket = io(cfg.url + namespace, {
    auth: { token: tok },
    transports: ["websocket"],
    forceNew: true,
    reconnection: false,
    timeout: 20000,
  });
  const started = now();
  return new Promise((resolve) => {
    socket.once("connect", () => resolve({ socket, ms: now() - started }));
    socket.once("connect_error", (err) => {
      socket.close();
      resolve({ socket: null, ms: now() - started, error: err.message });
    });
  });
}

// Connects `count` sockets, at most `concurrency` handshakes at a time.
async function connectMany(count, concurrency, latencies = null, target = null) {
  const sockets = new Array(count);
  const errors = {};
  let next = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      const t = target ? target(i) : {};
      const r = await connectOne(i, t.namespace, t.token);
      if (r.socket === null) errors[r.error] = (errors[r.error] ?? 0) + 1;
      else if (latencies) latencies.add(r.ms);
      sockets[i] = r.socket;
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return { sockets, errors };
}

function ack(socket, event, payload, ms = 30000) {
  return socket.timeout(ms).emitWithAck(event, payload);
}

async function joinAll(sockets, roomOf) {
  const acks = await Promise.all(
    sockets.map((s, i) => (s ? ack(s, "join", { room: roomOf(i) }) : null)),
  );
  const failed = acks.filter((a) => a && !a.ok).length;
  if (failed) throw new Error(`${failed} joins refused: ${JSON.stringify(acks.find((a) => a && !a.ok))}`);
}

function closeAll(sockets) {
  for (const s of sockets) if (s) s.close();
}

// Resolves when `done()` holds or `quietMs` pass without progress, bounded by `maxMs`.
async function settle(progress, done, quietMs, maxMs) {
  const deadline = now() + maxMs;
  let last = progress();
  let lastChange = now();
  while (now() < deadline && !done()) {
    await sleep(20);
    const p = progress();
    if (p !== last) {
      last = p;
      lastChange = now();
    } else if (now() - lastChange > quietMs) break;
  }
}

// How long until the webhook receiver at `url` has at least `events` events (polled every 50 ms,
// at most 60 s): the time the server's delivery worker took to catch up. null if it did not.
async function drained(url, events) {
  const t0 = now();
  while (now() - t0 < 60000) {
    const response = await fetch(url);
    if ((await response.json()).events >= events) {
      const ms = Math.round(now() - t0);
      note(`webhook backlog drained in ${ms} ms`);
      return ms;
    }
    await sleep(50);
  }
  note("webhook backlog not drained in 60 s");
  return null;
}

// -- (a) fan-out: one room, N clients, saturation search on the sender rate ------------------

async function fanout() {
  const n = cfg.clients;
  const { sockets, errors } = await connectMany(n, 50);
  if (Object.keys(errors).length) throw new Error(`connect errors: ${JSON.stringify(errors)}`);
  await joinAll(sockets, () => cfg.room);
  const senders = sockets.slice(0, cfg.senders);
  let step = 0;
  let received = 0;
  let lat = new Samples();
  for (const s of sockets) {
    s.on("message", (m) => {
      if (m.body.step !== step) return; // a straggler of an earlier step
      received++;
      lat.add(now() - m.body.t);
    });
  }

  async function runStep(rate, seconds) {
    step++;
    received = 0;
    lat = new Samples();
    let sent = 0;
    let acked = 0;
    const ackErrors = {};
    const ackLat = new Samples();
    const end = phase();
    const t0 = now();
    const total = Math.round(rate * seconds);
    while (sent < total && now() - t0 < seconds * 1000 + 5000) {
      const due = Math.min(total, Math.floor(((now() - t0) / 1000) * rate));
      for (; sent < due; sent++) {
        const s = senders[sent % senders.length];
        const t = now();
        s.emit("message", { room: cfg.room, body: { t, step, text: PAD } }, (a) => {
          if (a && a.ok) {
            acked++;
            ackLat.add(now() - t);
          } else {
            const code = a?.error?.code ?? "no_ack";
            ackErrors[code] = (ackErrors[code] ?? 0) + 1;
          }
        });
      }
      await sleep(2);
    }
    const sendWall = (now() - t0) / 1000;
    const expected = sent * (n - 1);
    const usage = end();
    await settle(() => received, () => received >= expected, 500, cfg.grace_s * 1000);
    const ratio = expected ? received / expected : 0;
    const latency = lat.summary();
    const result = {
      rate,
      sent,
      acked,
      ack_errors: ackErrors,
      expected,
      received,
      delivery_ratio: round(ratio, 4),
      deliveries_per_s: Math.round(received / sendWall),
      latency,
      ack_latency: ackLat.summary(),
      ...usage,
    };
    result.pass = ratio >= 0.99 && (latency.p99_ms ?? Infinity) < cfg.p99_limit_ms;
    note(
      `fanout rate=${rate}/s deliveries=${result.deliveries_per_s}/s ratio=${result.delivery_ratio} ` +
        `p99=${latency.p99_ms}ms gen_cpu=${usage.generator_cpu_frac} srv_cpu=${usage.server_cpu_frac} ` +
        `srv_wait=${usage.server_runqueue_wait_frac} `  +
        `${result.pass ? "pass" : "FAIL"}`,
    );
    // Let a failing step's backlog drain before the next one starts.
    await settle(() => received, () => false, 400, 8000);
    return result;
  }

  const steps = [];
  let best = null;
  let failed = null;
  let rate = cfg.start_rate;
  for (let i = 0; i < cfg.max_steps && rate <= cfg.max_rate; i++) {
    const r = await runStep(rate, cfg.step_s);
    steps.push(r);
    if (!r.pass) {
      failed = rate;
      break;
    }
    best = r;
    rate = Math.round(rate * cfg.growth);
  }
  // Bisect between the last passing and the first failing rate.
  for (let i = 0; i < cfg.refine && best && failed && failed - best.rate > 2; i++) {
    const mid = Math.round((best.rate + failed) / 2);
    const r = await runStep(mid, cfg.step_s);
    steps.push(r);
    if (r.pass) best = r;
    else failed = mid;
  }
  let half = null;
  if (best) half = await runStep(Math.max(1, Math.round(best.rate / 2)), cfg.step_s);
  closeAll(sockets);
  return { clients: n, senders: cfg.senders, steps, saturation: best, first_failure: failed, half };
}

// -- (b) chat: 2 clients per room, everyone sending -------------------------------------------

async function chat() {
  const n = cfg.clients;
  const { sockets, errors } = await connectMany(n, 50);
  if (Object.keys(errors).length) throw new Error(`connect errors: ${JSON.stringify(errors)}`);
  const roomOf = (i) => `chat-${Math.floor(i / 2)}`;
  await joinAll(sockets, roomOf);
  let phaseId = 0;
  let received = 0;
  let lat = new Samples();
  for (const s of sockets) {
    s.on("message", (m) => {
      if (m.body.phase !== phaseId) return;
      received++;
      lat.add(now() - m.body.t);
    });
  }

  // Closed loop: every client keeps `window` messages in flight; throughput at saturation.
  async function closedLoop(seconds) {
    phaseId++;
    received = 0;
    lat = new Samples();
    let acked = 0;
    let sent = 0;
    const ackErrors = {};
    const ackLat = new Samples();
    let running = true;
    const end = phase();
    const t0 = now();
    const sendFrom = (i) => {
      if (!running) return;
      const t = now();
      sent++;
      sockets[i].emit("message", { room: roomOf(i), body: { t, phase: phaseId, text: PAD } }, (a) => {
        if (a && a.ok) {
          acked++;
          ackLat.add(now() - t);
        } else {
          const code = a?.error?.code ?? "no_ack";
          ackErrors[code] = (ackErrors[code] ?? 0) + 1;
        }
        sendFrom(i);
      });
    };
    for (let w = 0; w < cfg.window; w++) for (let i = 0; i < n; i++) sendFrom(i);
    await sleep(seconds * 1000);
    running = false;
    const wall = (now() - t0) / 1000;
    const usage = end();
    const ackedAtEnd = acked;
    const receivedAtEnd = received;
    await settle(() => received + acked, () => received >= sent && acked >= sent, 500, cfg.grace_s * 1000);
    const result = {
      mode: "closed_loop",
      window: cfg.window,
      sent,
      acked: ackedAtEnd,
      ack_errors: ackErrors,
      received: receivedAtEnd,
      stored_per_s: Math.round(ackedAtEnd / wall),
      delivered_per_s: Math.round(receivedAtEnd / wall),
      stored_and_delivered_per_s: Math.round(Math.min(ackedAtEnd, receivedAtEnd) / wall),
      latency: lat.summary(),
      ack_latency: ackLat.summary(),
      ...usage,
    };
    note(
      `chat closed loop: stored=${result.stored_per_s}/s delivered=${result.delivered_per_s}/s ` +
        `ack p99=${result.ack_latency.p99_ms}ms gen_cpu=${usage.generator_cpu_frac} srv_cpu=${usage.server_cpu_frac} ` +
        `srv_wait=${usage.server_runqueue_wait_frac}`,
    );
    await settle(() => received + acked, () => false, 400, 8000);
    return result;
  }

  // Open loop at a fixed total rate spread over all clients: latency below saturation.
  async function openLoop(rate, seconds) {
    phaseId++;
    received = 0;
    lat = new Samples();
    let sent = 0;
    let acked = 0;
    const ackErrors = {};
    const ackLat = new Samples();
    const end = phase();
    const t0 = now();
    const total = Math.round(rate * seconds);
    while (sent < total && now() - t0 < seconds * 1000 + 5000) {
      const due = Math.min(total, Math.floor(((now() - t0) / 1000) * rate));
      for (; sent < due; sent++) {
        const i = sent % n;
        const t = now();
        sockets[i].emit("message", { room: roomOf(i), body: { t, phase: phaseId, text: PAD } }, (a) => {
          if (a && a.ok) {
            acked++;
            ackLat.add(now() - t);
          } else {
            const code = a?.error?.code ?? "no_ack";
            ackErrors[code] = (ackErrors[code] ?? 0) + 1;
          }
        });
      }
      await sleep(2);
    }
    const usage = end();
    await settle(() => received, () => received >= sent, 500, cfg.grace_s * 1000);
    const result = {
      mode: "open_loop",
      rate,
      sent,
      acked,
      ack_errors: ackErrors,
      received,
      delivery_ratio: round(sent ? received / sent : 0, 4),
      latency: lat.summary(),
      ack_latency: ackLat.summary(),
      ...usage,
    };
    note(`chat open loop rate=${rate}/s p99=${result.latency.p99_ms}ms ratio=${result.delivery_ratio}`);
    return result;
  }

  const saturation = await closedLoop(cfg.duration_s);
  if (cfg.webhook_count_url) saturation.drain_ms = await drained(cfg.webhook_count_url, saturation.sent);
  const halfRate = Math.max(1, Math.round(saturation.stored_and_delivered_per_s / 2));
  const half = await openLoop(halfRate, cfg.duration_s);
  closeAll(sockets);
  return { clients: n, rooms: n / 2, saturation, half };
}

// -- (c) connect storm: N clients with a JWT each, all at once --------------------------------

async function storm() {
  const rounds = [];
  for (let r = 0; r < cfg.rounds; r++) {
    const lat = new Samples();
    const end = phase();
    const { sockets, errors } = await connectMany(cfg.clients, cfg.concurrency, lat);
    const usage = end();
    const ok = sockets.filter(Boolean).length;
    const result = {
      clients: cfg.clients,
      connected: ok,
      errors,
      connects_per_s: Math.round(ok / usage.wall_s),
      latency: lat.summary(),
      ...usage,
    };
    note(`storm round ${r}: ${result.connects_per_s} connects/s p99=${result.latency.p99_ms}ms`);
    rounds.push(result);
    closeAll(sockets);
    await sleep(cfg.pause_ms ?? 1000);
  }
  const rates = rounds.map((x) => x.connects_per_s).sort((a, b) => a - b);
  return { rounds, median_connects_per_s: rates[Math.floor(rates.length / 2)] };
}

// -- (d) recovery: fill a room, then rejoin with since=0 and time the replay ------------------

async function recovery() {
  const { socket: filler, error } = await connectOne(0);
  if (!filler) throw new Error(`connect: ${error}`);
  const room = cfg.room;
  const joined = await ack(filler, "join", { room });
  const start = joined.seq;
  let sent = 0;
  let acked = 0;
  const fill = phase();
  await new Promise((resolve, reject) => {
    const pump = () => {
      while (sent < cfg.messages && sent - acked < cfg.window) {
        sent++;
        filler.emit("message", { room, body: { i: sent, text: PAD } }, (a) => {
          if (!a || !a.ok) return reject(new Error(`fill refused: ${JSON.stringify(a)}`));
          acked++;
          if (acked === cfg.messages) resolve();
          else pump();
        });
      }
    };
    pump();
  });
  const fillUsage = fill();
  filler.close();
  const samples = [];
  for (let k = 0; k < cfg.repeats; k++) {
    const { socket, error: err } = await connectOne(k + 1);
    if (!socket) throw new Error(`connect: ${err}`);
    const end = phase();
    const t = now();
    const a = await ack(socket, "join", { room, since: start }, 60000);
    const ms = now() - t;
    const usage = end();
    if (!a.ok) throw new Error(`join refused: ${JSON.stringify(a)}`);
    samples.push({ ms: round(ms), missed: a.missed.length, truncated: !!a.truncated, ...usage });
    socket.close();
    note(`recovery ${k}: ${a.missed.length} missed in ${round(ms)}ms`);
  }
  const times = samples.map((s) => s.ms).sort((a, b) => a - b);
  return {
    messages: cfg.messages,
    fill_per_s: Math.round(cfg.messages / fillUsage.wall_s),
    samples,
    median_ms: times[Math.floor(times.length / 2)],
    min_ms: times[0],
  };
}

// -- (e) tenant scale: connect latency to a warm tenant and to never-seen ones ----------------

async function tenants() {
  const warm = new Samples();
  const first = await connectOne(0, cfg.warm.namespace, cfg.warm.token);
  if (!first.socket) throw new Error(`warm connect: ${first.error}`);
  first.socket.close();
  const w = await connectMany(cfg.warm_connects, cfg.concurrency, warm, () => cfg.warm);
  closeAll(w.sockets);
  const cold = new Samples();
  const c = await connectMany(cfg.cold.length, 1, cold, (i) => cfg.cold[i]);
  closeAll(c.sockets);
  const errors = { ...w.errors, ...c.errors };
  return { warm: warm.summary(), cold: cold.summary(), errors };
}

// -- fixed rate: low-load latency (N clients in R rooms, one message stream at a fixed rate) ---

// Every client joins room `i % rooms`; messages go out at `rate` per second, round robin over
// the clients (so over the rooms); each delivery's latency is measured at its recipients (the
// sender excluded). Reported: delivery and ack latency percentiles, generator and server CPU.
async function fixed() {
  const n = cfg.clients;
  const rooms = cfg.rooms;
  const roomOf = (i) => `fixed-${i % rooms}`;
  const { sockets, errors } = await connectMany(n, 50);
  if (Object.keys(errors).length) throw new Error(`connect errors: ${JSON.stringify(errors)}`);
  await joinAll(sockets, roomOf);
  let lat = new Samples();
  let received = 0;
  let measuring = false;
  for (const s of sockets) {
    s.on("message", (m) => {
      if (!measuring) return;
      received++;
      lat.add(now() - m.body.t);
    });
  }
  async function run(rate, seconds) {
    let sent = 0;
    let acked = 0;
    const ackErrors = {};
    const ackLat = new Samples();
    const t0 = now();
    const total = Math.round(rate * seconds);
    while (sent < total && now() - t0 < seconds * 1000 + 5000) {
      const due = Math.min(total, Math.floor(((now() - t0) / 1000) * rate));
      for (; sent < due; sent++) {
        const i = sent % n;
        const t = now();
        sockets[i].emit("message", { room: roomOf(i), body: { t, text: PAD } }, (a) => {
          if (a && a.ok) {
            acked++;
            ackLat.add(now() - t);
          } else {
            const code = a?.error?.code ?? "no_ack";
            ackErrors[code] = (ackErrors[code] ?? 0) + 1;
          }
        });
      }
      await sleep(1);
    }
    return { sent, ackLat, ackErrors, acked: () => acked };
  }
  // Warm-up (not measured): the first messages of each room prepare statements, fill caches.
  await run(cfg.rate, Math.min(2, cfg.duration_s));
  await sleep(300);
  measuring = true;
  const end = phase();
  const r = await run(cfg.rate, cfg.duration_s);
  const usage = end();
  const perRoom = n / rooms;
  const expected = r.sent * (perRoom - 1);
  await settle(() => received, () => received >= expected, 500, cfg.grace_s * 1000);
  measuring = false;
  const result = {
    clients: n,
    rooms,
    rate: cfg.rate,
    sent: r.sent,
    acked: r.acked(),
    ack_errors: r.ackErrors,
    expected,
    received,
    delivery_ratio: round(expected ? received / expected : 0, 4),
    latency: lat.summary(),
    ack_latency: r.ackLat.summary(),
    ...usage,
  };
  note(`fixed ${n}x${rooms} @${cfg.rate}/s p50=${result.latency.p50_ms} p99=${result.latency.p99_ms}ms gen_cpu=${usage.generator_cpu_frac}`);
  closeAll(sockets);
  return result;
}

// -- memory: hold N idle sockets (each joined to a room) until told to let go ----------------

async function hold() {
  const { sockets, errors } = await connectMany(cfg.clients, 50);
  if (Object.keys(errors).length) throw new Error(`connect errors: ${JSON.stringify(errors)}`);
  await joinAll(sockets, (i) => `idle-${i % 100}`);
  console.log(JSON.stringify({ holding: cfg.clients }));
  const lines = createInterface({ input: process.stdin });
  for await (const _ of lines) break;
  closeAll(sockets);
  return { clients: cfg.clients };
}

const scenarios = { fanout, chat, storm, recovery, tenants, hold, fixed };

try {
  const run = scenarios[cfg.scenario];
  if (!run) throw new Error(`unknown scenario ${cfg.scenario}`);
  const total = phase();
  const result = await run();
  console.log(JSON.stringify({ scenario: cfg.scenario, result, total: total() }));
  clearTimeout(hardTimeout);
  process.exit(0);
} catch (err) {
  console.log(JSON.stringify({ error: String(err?.stack ?? err) }));
  process.exit(1);
}
