// The demo chat: /chat/?tenant=<slug>&token=<jwt>&room=<room>.
//
// One Socket.IO connection to the tenant's namespace, one room. The first join shows the latest
// history; every later join (after any disconnect) sends `since` = the highest seq shown, and
// messages are keyed by seq, so a message that arrives twice (replayed and broadcast) shows once.
//
// Typing: the tenant's ephemeral events are not visible to a client, so the page sends `typing`
// and, if the server answers `unknown_event`, stops sending it and never shows the indicator.
//
// Refusals: socket.io-client does not reconnect after the server refuses or closes a namespace
// connection, so this page does: after a refusal that may pass (suspended, unavailable,
// connection limit) it retries with a back-off capped at RETRY_MAX_MS; after one that will not
// (bad token, unknown tenant) it stops and offers "Try again".

import { io } from "/static/vendor/socket.io-client/socket.io.esm.min.js";
import { describe, RETRYABLE } from "/static/codes.js";
import { $, bodyText, el, fill, when } from "/static/dom.js";

const ACK_TIMEOUT_MS = 10000;
const RETRY_MAX_MS = 5000;
const TYPING_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 4000;
const FIRST_HISTORY = 50;
const MAX_REPLAY_PAGES = 20;

const params = new URLSearchParams(location.search);
const tenant = params.get("tenant")?.trim();
const token = params.get("token")?.trim();
const room = params.get("room")?.trim() || "lobby";

if (tenant && token) {
  start();
} else {
  showForm();
}

function showForm() {
  for (const [name, value] of params) {
    const input = document.querySelector(`#open-form [name="${CSS.escape(name)}"]`);
    if (input && value) input.value = value;
  }
  $("#open").hidden = false;
  setState("form", "Not connected");
}

function setState(state, status) {
  document.body.dataset.state = state;
  fill($("#status"), status);
}

/** The token's claims, read without verifying (the server verifies); only for display. */
function claims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(part), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    return JSON.parse(json);
  } catch {
    return {};
  }
}

function clientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function start() {
  const claim = claims(token);
  const me = { id: String(claim.sub ?? ""), name: String(claim.name ?? claim.sub ?? "") };
  const shown = new Map(); // seq -> <li>
  const members = new Map(); // user id -> name
  const typers = new Map(); // user id -> { name, timer }
  let lastSeq = 0;
  let joinedOnce = false;
  let joined = false;
  let typingSupported = true;
  let lastTypingSent = 0;
  let retryTimer = null;
  let retries = 0;
  let closing = null; // the last `closing` notice, explaining the disconnect that follows

  document.title = `#${room} · ${tenant} · orgcast chat`;
  fill($("#title"), `#${room}`, el("span", { class: "hint" }, ` · ${tenant}`));
  $("#chat").hidden = false;
  const list = $("#messages");
  const input = $("#message");
  const sendButton = $("#send");

  const socket = io(`/${tenant}`, {
    auth: { token },
    reconnectionDelayMax: RETRY_MAX_MS,
  });

  // -- connection lifecycle ------------------------------------------------------------------

  // Which transport carries the chat (tests check that the CSP lets the websocket through).
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    document.body.dataset.transport = engine.transport.name;
    engine.on("upgrade", (transport) => (document.body.dataset.transport = transport.name));
  });

  socket.on("connect", () => {
    retries = 0;
    closing = null;
    clearTimeout(retryTimer);
    setState("joining", "Joining…");
    join();
  });

  socket.on("connect_error", (err) => {
    setJoined(false);
    const code = err?.data?.code;
    if (!code) {
      // The transport failed (server down, network): socket.io-client retries by itself.
      setState("offline", "Offline");
      notice(`Cannot reach the server; retrying… (${err?.message ?? "connection error"})`);
      return;
    }
    refused(code, err.data.message);
  });

  socket.on("closing", (data) => {
    closing = data && typeof data.code === "string" ? data : null;
  });

  socket.on("disconnect", (reason) => {
    setJoined(false);
    if (reason === "io client disconnect") return;
    if (reason === "io server disconnect") {
      // The server closed this connection; socket.io-client leaves it closed.
      if (closing) {
        refused(closing.code, closing.message);
      } else {
        setState("reconnecting", "Reconnecting…");
        notice("The server closed the connection; reconnecting…");
        retry(0);
      }
      return;
    }
    setState("reconnecting", "Reconnecting…");
    notice("Connection lost; reconnecting…");
  });

  function refused(code, message) {
    setJoined(false);
    if (RETRYABLE.has(code)) {
      const delay = Math.min(RETRY_MAX_MS, 1000 * 2 ** retries);
      retries += 1;
      setState("refused", "Disconnected");
      notice(`${describe(code, message)} Retrying in ${Math.round(delay / 1000)} s…`, { code });
      retry(delay);
    } else {
      setState("refused", "Disconnected");
      notice(describe(code, message), { code, canRetry: true });
    }
  }

  function retry(delay) {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => {
      if (!socket.connected) socket.connect();
    }, delay);
  }

  $("#retry").addEventListener("click", () => {
    retries = 0;
    notice("Connecting…");
    socket.connect();
  });

  // -- joining and history -------------------------------------------------------------------

  async function join() {
    const payload = joinedOnce ? { room, since: lastSeq } : { room };
    let ack;
    try {
      ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("join", payload);
    } catch {
      // No answer: if the connection is going down its handlers take over; if not, ask again.
      if (socket.connected) {
        notice("The server did not answer the join in time; asking again…");
        setTimeout(() => socket.connected && join(), 2000);
      }
      return;
    }
    if (!ack.ok) {
      const { code, message } = ack.error ?? {};
      if (RETRYABLE.has(code)) {
        refused(code, message);
        socket.disconnect();
      } else {
        setState("refused", "Not in the room");
        notice(describe(code, message), { code });
      }
      return;
    }
    fill($("#members"));
    members.clear();
    for (const member of ack.members ?? []) members.set(member.id, member.name);
    renderMembers();
    if (joinedOnce) {
      for (const message of ack.missed ?? []) show(message, "missed");
      if (ack.truncated) await replay();
    } else {
      await loadHistory();
    }
    lastSeq = Math.max(lastSeq, ack.seq ?? 0);
    joinedOnce = true;
    hideNotice();
    setJoined(true);
    setState("joined", `${me.name || "?"} · connected`);
  }

  async function loadHistory() {
    const ack = await request("history", { room, limit: FIRST_HISTORY });
    if (!ack) return;
    if (ack.has_more) {
      list.prepend(el("li", { class: "system" }, "Older messages are not shown."));
    }
    for (const message of ack.messages) show(message, "history");
  }

  async function replay() {
    for (let page = 0; page < MAX_REPLAY_PAGES; page += 1) {
      const ack = await request("history", { room, after_seq: lastSeq, limit: 100 });
      if (!ack) return;
      for (const message of ack.messages) show(message, "missed");
      if (!ack.has_more || ack.messages.length === 0) return;
    }
  }

  /** An event with an ack; an error ack is shown in words and answers null. */
  async function request(event, payload) {
    try {
      const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
      if (ack.ok) return ack;
      notice(describe(ack.error?.code, ack.error?.message), { code: ack.error?.code });
    } catch {
      notice("The server did not answer in time.");
    }
    return null;
  }

  // -- messages ------------------------------------------------------------------------------

  socket.on("message", (message) => {
    if (message?.room !== room) return;
    stopTyping(message.sender?.id);
    show(message, "live");
  });

  /** Show a stored message once, in seq order; `via` says how it came (history, live, missed,
   * sent), for people inspecting the page and for the tests. */
  function show(message, via) {
    if (typeof message?.seq !== "number" || shown.has(message.seq)) return;
    const mine = message.sender?.id === me.id;
    const item = messageItem(message.sender?.name ?? message.sender?.id ?? "?", message.body, {
      mine,
      ts: message.ts,
    });
    item.dataset.seq = String(message.seq);
    item.dataset.via = via;
    shown.set(message.seq, item);
    lastSeq = Math.max(lastSeq, message.seq);
    // Usually the newest: walk back from the end to the first smaller seq.
    let after = list.lastElementChild;
    while (after && !(Number(after.dataset.seq) < message.seq)) after = after.previousElementSibling;
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    if (after) after.after(item);
    else list.prepend(item);
    if (stick || mine) list.scrollTop = list.scrollHeight;
  }

  function messageItem(name, body, { mine = false, ts = null } = {}) {
    return el(
      "li",
      { class: mine ? "mine" : null },
      el(
        "div",
        { class: "meta" },
        el("span", { class: "who" }, mine ? `${name} (you)` : name),
        ts ? el("time", { datetime: new Date(ts).toISOString() }, when(ts).slice(11, 16)) : null,
      ),
      el("p", { class: "text" }, bodyText(body)),
    );
  }

  $("#send-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (!joined) {
      notice("Not connected: the message was not sent. It is still in the field.");
      return;
    }
    input.value = "";
    lastTypingSent = 0;
    const body = { text };
    const pending = messageItem(me.name, body, { mine: true });
    pending.classList.add("pending");
    list.append(pending);
    list.scrollTop = list.scrollHeight;
    let ack;
    try {
      ack = await socket
        .timeout(ACK_TIMEOUT_MS)
        .emitWithAck("message", { room, body, client_id: clientId() });
    } catch {
      ack = { ok: false, error: { code: "unavailable", message: "no answer from the server" } };
    }
    if (ack.ok) {
      pending.remove();
      show({ ...ack, sender: me, body }, "sent");
      return;
    }
    pending.classList.replace("pending", "failed");
    let why = describe(ack.error?.code, ack.error?.message);
    if (ack.error?.retry_after_ms) why += ` Retry in ${Math.ceil(ack.error.retry_after_ms / 1000)} s.`;
    pending.append(el("span", { class: "failure" }, `Not sent: ${why}`));
  });

  // -- presence ------------------------------------------------------------------------------

  socket.on("presence", (event) => {
    if (event?.room !== room || !event.member) return;
    if (event.action === "join") members.set(event.member.id, event.member.name);
    if (event.action === "leave") {
      members.delete(event.member.id);
      stopTyping(event.member.id);
    }
    renderMembers();
  });

  function renderMembers() {
    const names = [...members].sort((a, b) => a[1].localeCompare(b[1]));
    fill(
      $("#members"),
      names.map(([id, name]) => el("li", { dataset: { id } }, id === me.id ? `${name} (you)` : name)),
    );
    fill($("#member-count"), `(${members.size})`);
  }

  // -- typing --------------------------------------------------------------------------------

  input.addEventListener("input", async () => {
    const now = Date.now();
    if (!typingSupported || !joined || !input.value || now - lastTypingSent < TYPING_EVERY_MS) return;
    lastTypingSent = now;
    try {
      const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("typing", {
        room,
        data: { typing: true },
      });
      if (!ack.ok && ack.error?.code === "unknown_event") {
        typingSupported = false; // this tenant has no `typing` ephemeral event
        document.body.dataset.typing = "unsupported";
      }
    } catch {
      // a lost typing notice does not matter
    }
  });

  socket.on("typing", (event) => {
    const sender = event?.sender;
    if (event?.room !== room || !sender || sender.id === me.id) return;
    if (event.data && event.data.typing === false) {
      stopTyping(sender.id);
      return;
    }
    clearTimeout(typers.get(sender.id)?.timer);
    const timer = setTimeout(() => stopTyping(sender.id), TYPING_SHOWN_MS);
    typers.set(sender.id, { name: sender.name ?? sender.id, timer });
    renderTyping();
  });

  function stopTyping(id) {
    const typer = typers.get(id);
    if (!typer) return;
    clearTimeout(typer.timer);
    typers.delete(id);
    renderTyping();
  }

  function renderTyping() {
    const names = [...typers.values()].map((t) => t.name);
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "Several people are typing…";
    fill($("#typing"), text);
  }

  // -- page state ----------------------------------------------------------------------------

  function setJoined(value) {
    joined = value;
    // Typing and sending stay possible while disconnected; sending says why it cannot.
    input.disabled = false;
    sendButton.disabled = false;
    if (!value) {
      // Who is present is unknown until the next join answers.
      for (const id of [...typers.keys()]) stopTyping(id);
      members.clear();
      renderMembers();
    }
  }

  function notice(text, { code = null, canRetry = false } = {}) {
    const box = $("#notice");
    fill($("#notice-text"), text);
    box.dataset.code = code ?? "";
    $("#retry").hidden = !canRetry;
    box.hidden = false;
  }

  function hideNotice() {
    $("#notice").hidden = true;
    $("#notice").dataset.code = "";
  }

  socket.on("token_expiring", () => {
    notice("Your token expires soon; open the chat again with a new one.", { code: "auth_expired" });
  });
}
