// The operator console. It uses only the public HTTP API (/api/v1, with the admin token kept in
// this tab's sessionStorage) and, for the live tail of a room, Socket.IO with a token it mints
// through the same API. Views: #/ (tenants) and #/t/<slug> (one tenant).

import { io } from "/static/vendor/socket.io-client/socket.io.esm.min.js";
import { describe } from "/static/codes.js";
import { $, bodyText, el, fill, when } from "/static/dom.js";

const TOKEN_KEY = "orgcast.adminToken";
const REFRESH_MS = 5000;
const LIMITS = [
  ["max_connections", "Max connections"],
  ["max_message_bytes", "Max message bytes"],
  ["max_rooms_per_connection", "Max rooms per connection"],
  ["messages_per_second", "Messages per second"],
  ["history_retention_days", "History retention (days)"],
];
const WEBHOOK_EVENTS = "message.created, member.joined, member.left, user.online, user.offline, room.occupied, room.vacated";

let adminToken = sessionStorage.getItem(TOKEN_KEY);
let leaveView = () => {}; // stops the current view's timers and sockets

// -- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  get words() {
    const fields = (this.details ?? []).map((d) => `${d.field}: ${d.message}`).join("; ");
    return describe(this.code, fields || this.message);
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${adminToken}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "unavailable", "the server did not answer");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data?.error ?? {};
    throw new ApiError(
      response.status,
      error.code ?? `http_${response.status}`,
      error.message ?? response.statusText,
      error.details,
    );
  }
  return data;
}

const tenantPath = (slug) => `/api/v1/tenants/${encodeURIComponent(slug)}`;

// -- sign in ------------------------------------------------------------------------------------

$("#sign-in").addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = $("#sign-in-error");
  box.hidden = true;
  adminToken = $("#admin-token").value.trim();
  try {
    await api("GET", "/api/v1/tenants?limit=1");
  } catch (error) {
    adminToken = null;
    let text = error.words;
    if (error.status === 401) text = "That admin token was refused. (auth_invalid)";
    if (error.status === 403) text = "That is a tenant API key; the console needs the admin token. (forbidden)";
    fill(box, text);
    box.hidden = false;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, adminToken);
  $("#admin-token").value = "";
  route();
});

$("#sign-out").addEventListener("click", () => signOut());

function signOut(reason) {
  leaveView();
  adminToken = null;
  sessionStorage.removeItem(TOKEN_KEY);
  fill($("#view"));
  fill($("#secrets"));
  $("#flash").hidden = true;
  if (reason) {
    fill($("#sign-in-error"), reason);
    $("#sign-in-error").hidden = false;
  }
  route();
}

// -- routing and shared pieces --------------------------------------------------------------------

window.addEventListener("hashchange", () => route());
route();

function route() {
  leaveView();
  leaveView = () => {};
  const signedIn = Boolean(adminToken);
  $("#sign-in").hidden = signedIn;
  $("#nav").hidden = !signedIn;
  if (!signedIn) {
    document.body.dataset.state = "signed-out";
    fill($("#view"));
    $("#admin-token").focus();
    return;
  }
  const match = location.hash.match(/^#\/t\/([^/]+)$/);
  if (match) tenantView(decodeURIComponent(match[1]));
  else listView();
}

/** Run an API action; errors are shown in words (and a refused token signs out). */
async function attempt(action, { ok } = {}) {
  fill($("#flash")).hidden = true; // what it said was about the previous action
  try {
    const result = await action();
    if (ok) flash(ok, "ok");
    return result;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status === 401) {
      signOut("The admin token is no longer accepted; sign in again.");
    } else {
      flash(error.words, "error");
    }
    return undefined;
  }
}

function flash(text, kind = "ok") {
  const box = $("#flash");
  box.className = `notice ${kind}`;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  fill(box, text);
  box.hidden = false;
}

/** Secrets are shown once, in a box that stays until the operator dismisses it. */
function showSecret(title, entries) {
  const box = el(
    "section",
    { class: "panel secret-box", role: "region", "aria-label": title },
    el("h2", {}, title),
    el("p", { class: "hint" }, "Copy it now: it is not shown again."),
    el("dl", {}, entries.map(([term, value]) => [el("dt", {}, term), el("dd", {}, el("code", { class: "secret" }, value))])),
    el("div", { class: "actions" }, el("button", { type: "button", class: "secondary", onclick: () => box.remove() }, "Done, hide it")),
  );
  $("#secrets").prepend(box);
  box.scrollIntoView({ block: "nearest" });
}

function list(text) {
  return text.split(/[\s,]+/).map((item) => item.trim()).filter(Boolean);
}

function field(id, label, attrs = {}, hint = null) {
  const input = el(attrs.multiline ? "textarea" : "input", {
    id,
    name: id,
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": hint ? `${id}-hint` : null,
    ...Object.fromEntries(Object.entries(attrs).filter(([k]) => k !== "multiline")),
  });
  return [el("label", { for: id }, label), input, hint ? el("p", { id: `${id}-hint`, class: "hint" }, hint) : null];
}

function limitFields(prefix, current = {}, effective = {}) {
  return el(
    "fieldset",
    {},
    el("legend", {}, "Limits (blank = the server's default)"),
    el(
      "div",
      { class: "limits" },
      LIMITS.map(([key, label]) =>
        el(
          "div",
          {},
          field(`${prefix}-${key}`, label, {
            type: "number",
            min: key === "messages_per_second" ? "0.1" : "1",
            step: key === "messages_per_second" ? "any" : "1",
            value: current[key] ?? "",
            placeholder: effective[key] !== undefined ? String(effective[key]) : "default",
          }),
        ),
      ),
    ),
  );
}

function readLimits(form, prefix) {
  const limits = {};
  for (const [key] of LIMITS) {
    const value = form.querySelector(`#${prefix}-${key}`).value.trim();
    if (value !== "") limits[key] = Number(value);
  }
  return limits;
}

function badge(status) {
  return el("span", { class: `badge ${status}` }, status);
}

function table(headers, rows, empty) {
  if (rows.length === 0) return el("p", { class: "muted" }, empty);
  return el(
    "div",
    { class: "table-wrap" },
    el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => (Array.isArray(h) ? el("th", { scope: "col", class: h[1] }, h[0]) : el("th", { scope: "col" }, h))))), el("tbody", {}, rows)),
  );
}

// -- #/ : tenants ---------------------------------------------------------------------------------

function listView() {
  document.body.dataset.state = "tenants";
  document.title = "Tenants · orgcast console";
  const rows = el("tbody");
  const more = el("button", { type: "button", class: "secondary", hidden: true }, "More");
  const status = el("select", { id: "status-filter" }, el("option", { value: "" }, "All"), el("option", { value: "active" }, "Active"), el("option", { value: "suspended" }, "Suspended"));
  let cursor = null;
  let stopped = false;
  leaveView = () => {
    stopped = true;
  };

  async function load(reset) {
    if (reset) {
      cursor = null;
      fill(rows);
    }
    const query = new URLSearchParams({ limit: "50" });
    if (cursor) query.set("cursor", cursor);
    if (status.value) query.set("status", status.value);
    const page = await attempt(() => api("GET", `/api/v1/tenants?${query}`));
    if (!page || stopped) return;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    for (const tenant of page.tenants) {
      const live = el("td", { class: "muted" }, "…");
      const liveRooms = el("td", { class: "muted hide-narrow" }, "…");
      rows.append(
        el(
          "tr",
          { dataset: { slug: tenant.slug } },
          el("td", {}, el("a", { href: `#/t/${encodeURIComponent(tenant.slug)}` }, tenant.slug)),
          el("td", {}, tenant.name),
          el("td", {}, badge(tenant.status)),
          live,
          liveRooms,
          el("td", { class: "hide-narrow" }, when(tenant.created_at)),
        ),
      );
      // Live counts come with each tenant's detail.
      api("GET", tenantPath(tenant.slug)).then(
        (detail) => {
          fill(live, String(detail.connections));
          fill(liveRooms, String(detail.rooms));
        },
        () => fill(live, "?"),
      );
    }
    if (rows.children.length === 0) rows.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, status.value ? `No ${status.value} tenants.` : "No tenants yet.")));
  }

  status.addEventListener("change", () => load(true));
  more.addEventListener("click", () => load(false));

  const form = el(
    "form",
    { class: "panel", id: "create-form" },
    el("h2", {}, "New tenant"),
    el(
      "div",
      { class: "row" },
      el("div", {}, field("new-slug", "Slug", { required: true, pattern: "[a-z][a-z0-9\\-]{1,38}[a-z0-9]" }, "3–40 of a-z 0-9 -, starting with a letter; the Socket.IO namespace.")),
      el("div", {}, field("new-name", "Name", { required: true, maxlength: "200" })),
    ),
    field("new-ephemeral", "Ephemeral events", { placeholder: "typing" }, "Custom events relayed without being stored, comma-separated (typing enables the chat's indicator)."),
    field("new-origins", "Allowed origins", { multiline: true, placeholder: "https://app.example.com" }, "One per line; empty = any origin."),
    limitFields("new"),
    el("div", { class: "actions" }, el("button", { type: "submit" }, "Create tenant")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const spec = {
      slug: $("#new-slug").value.trim(),
      name: $("#new-name").value.trim(),
      ephemeral_events: list($("#new-ephemeral").value),
      allowed_origins: list($("#new-origins").value),
      limits: readLimits(form, "new"),
    };
    const created = await attempt(() => api("POST", "/api/v1/tenants", spec), { ok: `Tenant ${spec.slug} created.` });
    if (!created) return;
    showSecret(`Secrets of ${created.slug}`, [
      [`Signing key ${created.signing_key.kid}`, created.signing_key.secret],
      [`API key ${created.api_key.prefix}…`, created.api_key.key],
    ]);
    location.hash = `#/t/${encodeURIComponent(created.slug)}`;
  });

  fill(
    $("#view"),
    el(
      "section",
      { class: "panel" },
      el("div", { class: "title" }, el("h2", {}, "Tenants"), el("label", { for: "status-filter", class: "visually-hidden" }, "Status"), status, el("button", { type: "button", class: "secondary", onclick: () => load(true) }, "Refresh")),
      el(
        "div",
        { class: "table-wrap" },
        el(
          "table",
          {},
          el("thead", {}, el("tr", {}, ["Slug", "Name", "Status", "Connections"].map((h) => el("th", { scope: "col" }, h)), el("th", { scope: "col", class: "hide-narrow" }, "Rooms"), el("th", { scope: "col", class: "hide-narrow" }, "Created"))),
          rows,
        ),
      ),
      el("div", { class: "actions" }, more),
    ),
    form,
  );
  load(true);
}

// -- #/t/<slug> : one tenant ----------------------------------------------------------------------

function tenantView(slug) {
  document.body.dataset.state = "tenant";
  document.title = `${slug} · orgcast console`;
  const path = tenantPath(slug);
  let timer = null;
  let tail = null;
  let stopped = false;
  leaveView = () => {
    stopped = true;
    clearInterval(timer);
    tail?.stop();
  };

  const view = $("#view");
  fill(view, el("p", { class: "muted" }, "Loading…"));

  async function load() {
    const tenant = await attempt(() => api("GET", path));
    if (stopped) return;
    if (!tenant) {
      fill(view, el("p", {}, el("a", { href: "#/" }, "Back to the tenants")));
      return;
    }
    render(tenant);
    refreshRooms();
    loadWebhooks();
    timer = setInterval(refreshCounts, REFRESH_MS);
  }

  async function refreshCounts() {
    try {
      const tenant = await api("GET", path);
      if (stopped) return;
      fill($("#stat-connections"), String(tenant.connections));
      fill($("#stat-rooms"), String(tenant.rooms));
      fill($("#tenant-status"), tenant.status);
      $("#tenant-status").className = `badge ${tenant.status}`;
    } catch {
      // shown at the next action; the counts are a courtesy
    }
  }

  async function reload(message) {
    clearInterval(timer);
    const tenant = await attempt(() => api("GET", path));
    if (!tenant || stopped) return;
    render(tenant);
    refreshRooms();
    loadWebhooks();
    timer = setInterval(refreshCounts, REFRESH_MS);
    if (message) flash(message, "ok");
  }

  function render(tenant) {
    const active = tenant.status === "active";
    fill(
      view,
      el(
        "section",
        { class: "panel" },
        el("div", { class: "title" }, el("h2", { id: "tenant-name" }, tenant.name), el("span", { class: "mono" }, tenant.slug), el("span", { id: "tenant-status", class: `badge ${tenant.status}` }, tenant.status)),
        el(
          "div",
          { class: "stats" },
          el("div", {}, el("b", { id: "stat-connections" }, String(tenant.connections)), el("span", {}, "live connections")),
          el("div", {}, el("b", { id: "stat-rooms" }, String(tenant.rooms)), el("span", {}, "rooms with members")),
          el("div", {}, el("b", {}, tenant.ephemeral_events.join(", ") || "none"), el("span", {}, "ephemeral events")),
          el("div", {}, el("b", {}, tenant.allowed_origins.join(" ") || "any"), el("span", {}, "allowed origins")),
        ),
        el("p", { class: "hint" }, `Created ${when(tenant.created_at)} · updated ${when(tenant.updated_at)}`),
        el(
          "div",
          { class: "actions" },
          active
            ? el("button", { type: "button", class: "danger", onclick: () => setStatus("suspended") }, "Suspend")
            : el("button", { type: "button", onclick: () => setStatus("active") }, "Resume"),
          el("button", { type: "button", class: "danger", onclick: () => confirmDelete.hidden = !confirmDelete.hidden }, "Delete…"),
        ),
        confirmDeleteForm(),
      ),
      el("div", { class: "grid" }, settingsForm(tenant), keysPanel(tenant), tokenPanel(tenant)),
      roomsPanel(),
      webhooksPanel(),
    );
  }

  async function setStatus(status) {
    const done = await attempt(() => api("PATCH", path, { status }));
    if (done) reload(status === "suspended" ? `${slug} is suspended: its sockets were disconnected.` : `${slug} is active again.`);
  }

  let confirmDelete = null;
  function confirmDeleteForm() {
    const input = el("input", { id: "confirm-slug", autocomplete: "off", spellcheck: "false" });
    const button = el("button", { type: "submit", class: "danger", disabled: true }, "Delete tenant");
    input.addEventListener("input", () => (button.disabled = input.value !== slug));
    confirmDelete = el(
      "form",
      { hidden: true, class: "notice warn" },
      el("p", {}, "Deleting disconnects everyone and deletes the tenant, its keys and all of its messages. It cannot be undone."),
      el("label", { for: "confirm-slug" }, `Type ${slug} to confirm`),
      input,
      el("div", { class: "actions" }, button),
    );
    confirmDelete.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (input.value !== slug) return;
      const done = await attempt(() => api("DELETE", path), { ok: `Tenant ${slug} deleted.` });
      if (done !== undefined) location.hash = "#/";
    });
    return confirmDelete;
  }

  function settingsForm(tenant) {
    const form = el(
      "form",
      { class: "panel", id: "settings-form" },
      el("h2", {}, "Settings"),
      field("edit-name", "Name", { required: true, maxlength: "200", value: tenant.name }),
      field("edit-ephemeral", "Ephemeral events", { value: tenant.ephemeral_events.join(", ") }, "Comma-separated."),
      field("edit-origins", "Allowed origins", { multiline: true }, "One per line; empty = any origin."),
      limitFields("edit", tenant.limits, tenant.effective_limits),
      el("div", { class: "actions" }, el("button", { type: "submit" }, "Save settings")),
    );
    form.querySelector("#edit-origins").value = tenant.allowed_origins.join("\n");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const patch = {
        name: $("#edit-name").value.trim(),
        ephemeral_events: list($("#edit-ephemeral").value),
        allowed_origins: list($("#edit-origins").value),
        limits: readLimits(form, "edit"),
      };
      const done = await attempt(() => api("PATCH", path, patch));
      if (done) reload("Settings saved.");
    });
    return form;
  }

  function keysPanel(tenant) {
    const signing = tenant.signing_keys.map((key) =>
      el(
        "tr",
        { dataset: { kid: key.kid } },
        el("td", { class: "mono" }, key.kid),
        el("td", { class: "hide-narrow" }, when(key.created_at).slice(0, 10)),
        el("td", { title: key.revoked_at ? when(key.revoked_at) : null }, key.revoked_at ? "revoked" : "active"),
        el("td", {}, key.revoked_at ? "" : el("button", { type: "button", class: "danger", "aria-label": `Revoke signing key ${key.kid}`, onclick: () => revoke("keys", key.kid, `signing key ${key.kid}`) }, "Revoke")),
      ),
    );
    const apiKeys = tenant.api_keys.map((key) =>
      el(
        "tr",
        { dataset: { id: key.id } },
        el("td", { class: "mono" }, `${key.prefix}…`),
        el("td", { class: "hide-narrow" }, when(key.created_at).slice(0, 10)),
        el("td", { title: key.revoked_at ? when(key.revoked_at) : null }, key.revoked_at ? "revoked" : "active"),
        el("td", {}, key.revoked_at ? "" : el("button", { type: "button", class: "danger", "aria-label": `Revoke API key ${key.prefix}`, onclick: () => revoke("api-keys", key.id, `API key ${key.prefix}…`) }, "Revoke")),
      ),
    );
    return el(
      "section",
      { class: "panel", id: "keys" },
      el("h2", {}, "Signing keys"),
      el("p", { class: "hint" }, "Tokens are signed with the newest key; older ones verify until revoked."),
      table(["Key id", ["Created", "hide-narrow"], "State", ""], signing, "No signing keys."),
      el("div", { class: "actions" }, el("button", { type: "button", onclick: rotate }, "Rotate signing key")),
      el("h3", {}, "API keys"),
      table(["Key", ["Created", "hide-narrow"], "State", ""], apiKeys, "No API keys."),
      el("div", { class: "actions" }, el("button", { type: "button", onclick: addApiKey }, "Add API key")),
    );
  }

  async function rotate() {
    const key = await attempt(() => api("POST", `${path}/keys`));
    if (!key) return;
    showSecret(`New signing key of ${slug}`, [[`Signing key ${key.kid}`, key.secret]]);
    reload(`Signing key ${key.kid} added; new tokens use it.`);
  }

  async function addApiKey() {
    const key = await attempt(() => api("POST", `${path}/api-keys`));
    if (!key) return;
    showSecret(`New API key of ${slug}`, [[`API key ${key.prefix}…`, key.key]]);
    reload("API key added.");
  }

  async function revoke(kind, id, what) {
    if (!window.confirm(`Revoke ${what}? This cannot be undone.`)) return;
    const done = await attempt(() => api("DELETE", `${path}/${kind}/${encodeURIComponent(id)}`));
    if (done !== undefined) reload(`Revoked ${what}.`);
  }

  function tokenPanel() {
    const result = el("div", { id: "minted" });
    const form = el(
      "form",
      { class: "panel", id: "token-form" },
      el("h2", {}, "Client token"),
      el("div", { class: "row" }, el("div", {}, field("mint-sub", "User id", { required: true, maxlength: "128", value: "alice" })), el("div", {}, field("mint-name", "Display name", { maxlength: "200", value: "Alice" }))),
      el("div", { class: "row" }, el("div", {}, field("mint-rooms", "Allowed rooms", { placeholder: "any" }, "Glob patterns, comma-separated; blank = any room.")), el("div", {}, field("mint-ttl", "Valid for (seconds)", { type: "number", min: "1", value: "3600" }))),
      field("mint-room", "Chat room to open", { value: "lobby", pattern: "[A-Za-z0-9_.:@\\-]{1,128}" }),
      el("div", { class: "actions" }, el("button", { type: "submit" }, "Mint token")),
      result,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const sub = $("#mint-sub").value.trim();
      const spec = { sub, ttl_seconds: Number($("#mint-ttl").value || 3600) };
      const name = $("#mint-name").value.trim();
      if (name) spec.name = name;
      const rooms = list($("#mint-rooms").value);
      if (rooms.length) spec.rooms = rooms;
      const minted = await attempt(() => api("POST", `${path}/tokens`, spec));
      if (!minted) return;
      const query = new URLSearchParams({ tenant: slug, token: minted.token, room: $("#mint-room").value.trim() || "lobby" });
      fill(
        result,
        el("p", { class: "hint" }, `Signed with ${minted.kid}, expires ${when(minted.expires_at * 1000)}.`),
        el("code", { class: "secret", id: "minted-token" }, minted.token),
        el("p", {}, el("a", { href: `/chat/?${query}`, target: "_blank", rel: "noopener noreferrer", id: "open-chat" }, `Open chat as ${name || sub}`)),
      );
    });
    return form;
  }

  // -- rooms and the live tail --------------------------------------------------------------------

  function roomsPanel() {
    const watchForm = el(
      "form",
      { class: "row", id: "watch-form" },
      el("div", {}, field("watch-room", "Room to watch", { required: true, value: "lobby", pattern: "[A-Za-z0-9_.:@\\-]{1,128}" })),
      el("button", { type: "submit" }, "Watch"),
      el("button", { type: "button", class: "secondary", id: "stop-watch", hidden: true, onclick: () => tail?.stop() }, "Stop"),
    );
    watchForm.addEventListener("submit", (event) => {
      event.preventDefault();
      watch($("#watch-room").value.trim());
    });
    return el(
      "section",
      { class: "panel", id: "rooms" },
      el("div", { class: "title" }, el("h2", {}, "Rooms"), el("button", { type: "button", class: "secondary", onclick: refreshRooms }, "Refresh rooms")),
      el("div", { id: "rooms-table" }, el("p", { class: "muted" }, "Loading…")),
      el("h3", {}, "Live tail"),
      el("p", { class: "hint" }, "Joins the room over Socket.IO with a token minted for the user “console”, who is listed as present while watching."),
      watchForm,
      el("div", { id: "tail-status", class: "notice", hidden: true, role: "status" }),
      el("p", { id: "tail-members", class: "members-inline" }),
      el("ol", { id: "tail", class: "tail", "aria-label": "Live tail", "aria-live": "polite" }),
    );
  }

  async function refreshRooms() {
    const page = await attempt(() => api("GET", `${path}/rooms?limit=200`));
    if (!page || stopped) return;
    const rows = page.rooms.map((room) =>
      el(
        "tr",
        { dataset: { room: room.room } },
        el("td", { class: "mono" }, room.room),
        el("td", {}, String(room.last_seq)),
        el("td", { class: "hide-narrow" }, String(room.message_count)),
        el("td", {}, String(room.members)),
        el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": `Watch ${room.room}`, onclick: () => watch(room.room) }, "Watch")),
      ),
    );
    const wrap = $("#rooms-table");
    fill(wrap, table(["Room", "Last seq", ["Messages", "hide-narrow"], "Members", ""], rows, "No room has messages yet."));
    if (page.next_cursor) wrap.append(el("p", { class: "hint" }, "More rooms exist than are listed here."));
  }

  async function watch(room) {
    tail?.stop();
    $("#watch-room").value = room;
    const status = $("#tail-status");
    const say = (text, kind = "") => {
      if (stopped) return; // the view is gone
      status.className = `notice ${kind}`;
      fill(status, text);
      status.hidden = false;
    };
    const minted = await attempt(() => api("POST", `${path}/tokens`, { sub: "console", name: "Operator console", rooms: [room], ttl_seconds: 3600 }));
    if (!minted || stopped) return;
    const shown = new Map();
    const members = new Map();
    const items = $("#tail");
    fill(items);
    const socket = io(`/${slug}`, { auth: { token: minted.token }, reconnection: false });
    const current = {
      stop() {
        socket.disconnect();
        if (stopped) return;
        $("#stop-watch").hidden = true;
        if (tail === current) tail = null;
        say(`Stopped watching ${room}.`);
      },
    };
    tail = current;
    $("#stop-watch").hidden = false;
    say(`Connecting to ${room}…`);

    const showMembers = () => !stopped && fill($("#tail-members"), `Present: ${[...members.values()].sort().join(", ") || "nobody"}`);
    const show = (message) => {
      if (stopped || shown.has(message.seq)) return;
      const item = el(
        "li",
        { dataset: { seq: String(message.seq) } },
        el("div", { class: "meta" }, `#${message.seq} · ${when(message.ts)} · `, el("b", {}, message.sender?.name ?? message.sender?.id ?? "?")),
        el("div", { class: "text" }, bodyText(message.body)),
      );
      shown.set(message.seq, item);
      let after = items.lastElementChild;
      while (after && !(Number(after.dataset.seq) < message.seq)) after = after.previousElementSibling;
      if (after) after.after(item);
      else items.prepend(item);
      items.scrollTop = items.scrollHeight;
    };

    socket.on("connect", async () => {
      const joined = await socket.timeout(10000).emitWithAck("join", { room }).catch(() => null);
      if (stopped) return;
      if (!joined?.ok) {
        say(describe(joined?.error?.code ?? "unavailable", joined?.error?.message), "error");
        return;
      }
      for (const member of joined.members) members.set(member.id, member.name);
      showMembers();
      const history = await socket.timeout(10000).emitWithAck("history", { room, limit: 20 }).catch(() => null);
      if (stopped) return;
      for (const message of history?.messages ?? []) show(message);
      say(`Watching ${room}: new messages appear below.`, "ok");
    });
    socket.on("message", (message) => message?.room === room && show(message));
    socket.on("presence", (event) => {
      if (event?.room !== room) return;
      if (event.action === "join") members.set(event.member.id, event.member.name);
      else members.delete(event.member.id);
      showMembers();
    });
    socket.on("connect_error", (err) => {
      say(err?.data ? describe(err.data.code, err.data.message) : `Cannot reach the server (${err?.message}).`, "error");
      if (!stopped) $("#stop-watch").hidden = true;
    });
    socket.on("disconnect", (reason) => {
      if (reason !== "io client disconnect") {
        say(`The connection ended (${reason}); the tenant may have been suspended. Watch again to reconnect.`, "error");
      }
      if (!stopped) $("#stop-watch").hidden = true;
    });
  }

  // -- webhooks (DESIGN §9) ------------------------------------------------------------------------

  function webhooksPanel() {
    const form = el(
      "form",
      { id: "webhook-form", hidden: true },
      el("h3", {}, "Add an endpoint"),
      field("hook-url", "Endpoint URL", { type: "url", required: true, placeholder: "https://example.com/hooks/orgcast" }),
      field("hook-events", "Events", { value: "*" }, `Comma-separated: * or any of ${WEBHOOK_EVENTS}.`),
      field("hook-description", "Description", { maxlength: "200" }),
      el("div", { class: "actions" }, el("button", { type: "submit" }, "Add endpoint")),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const spec = { url: $("#hook-url").value.trim(), events: list($("#hook-events").value) };
      const description = $("#hook-description").value.trim();
      if (description) spec.description = description;
      const created = await attempt(() => api("POST", `${path}/webhooks`, spec));
      if (!created) return;
      showSecret(`Signing secret of endpoint ${created.id}`, [[created.url, created.secret]]);
      form.reset();
      flash("Endpoint added.", "ok");
      loadWebhooks();
    });
    return el(
      "section",
      { class: "panel", id: "webhooks" },
      el("h2", {}, "Webhooks"),
      el("div", { id: "webhooks-body" }, el("p", { class: "muted" }, "Loading…")),
      form,
      el("div", { id: "deliveries" }),
    );
  }

  async function loadWebhooks() {
    let data;
    try {
      data = await api("GET", `${path}/webhooks`);
    } catch (error) {
      if (stopped) return;
      const body = $("#webhooks-body");
      // A route this server does not have answers 404 not_found (a missing tenant would be
      // tenant_not_found): the webhooks feature is simply absent.
      if (error.status === 404 && error.code === "not_found") {
        fill(body, el("p", { class: "muted", id: "webhooks-unavailable" }, "Webhooks are not available on this server."));
      } else {
        fill(body, el("p", { class: "notice error" }, error.words ?? String(error)));
      }
      return;
    }
    if (stopped) return;
    const endpoints = data?.webhooks ?? data?.endpoints ?? data?.items ?? (Array.isArray(data) ? data : []);
    $("#webhook-form").hidden = false;
    const rows = endpoints.map((hook) =>
      el(
        "tr",
        { dataset: { id: hook.id } },
        el("td", { class: "mono" }, hook.url, hook.description ? el("div", { class: "hint" }, hook.description) : null),
        el("td", {}, (hook.events ?? []).join(", ")),
        el("td", {}, hook.enabled ? "enabled" : "disabled", hook.disabled_reason ? el("div", { class: "hint" }, `by the server: ${hook.disabled_reason}`) : null),
        el(
          "td",
          {},
          el(
            "div",
            { class: "actions" },
            el("button", { type: "button", class: "secondary", onclick: () => deliveries(hook) }, "Deliveries"),
            el("button", { type: "button", class: "secondary", onclick: () => hookAction("PATCH", hook, { enabled: !hook.enabled }, hook.enabled ? "Endpoint disabled." : "Endpoint enabled.") }, hook.enabled ? "Disable" : "Enable"),
            el("button", { type: "button", class: "secondary", onclick: () => rotateHook(hook) }, "Rotate secret"),
            el("button", { type: "button", class: "danger", onclick: () => window.confirm(`Delete the endpoint ${hook.url}?`) && hookAction("DELETE", hook, undefined, "Endpoint deleted.") }, "Delete"),
          ),
        ),
      ),
    );
    fill($("#webhooks-body"), table(["URL", "Events", "State", ""], rows, "No endpoints yet."));
  }

  async function hookAction(method, hook, body, message) {
    const done = await attempt(() => api(method, `${path}/webhooks/${encodeURIComponent(hook.id)}`, body));
    if (done === undefined) return;
    flash(message, "ok");
    loadWebhooks();
  }

  async function rotateHook(hook) {
    const rotated = await attempt(() => api("POST", `${path}/webhooks/${encodeURIComponent(hook.id)}/rotate-secret`));
    if (!rotated) return;
    if (rotated.secret) showSecret(`New signing secret of endpoint ${hook.id}`, [[hook.url, rotated.secret]]);
    flash("Secret rotated; the old one still signs during the overlap.", "ok");
  }

  async function deliveries(hook, cursor = null) {
    const query = new URLSearchParams({ limit: "20" });
    if (cursor) query.set("cursor", cursor);
    const hookPath = `${path}/webhooks/${encodeURIComponent(hook.id)}`;
    const page = await attempt(() => api("GET", `${hookPath}/deliveries?${query}`));
    if (!page) return;
    const rows = page.deliveries.map((d) =>
      el(
        "tr",
        { dataset: { id: d.id } },
        el("td", { class: "mono" }, d.id),
        el("td", {}, d.status),
        el("td", {}, String(d.attempt)),
        el("td", {}, d.http_status === null || d.http_status === undefined ? "" : String(d.http_status)),
        el("td", { class: "hide-narrow" }, d.latency_ms === null || d.latency_ms === undefined ? "" : `${d.latency_ms} ms`),
        el("td", { class: "hide-narrow" }, d.error ?? ""),
        el("td", { class: "hide-narrow" }, when(d.created_at)),
        el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": `Redeliver ${d.id}`, onclick: async () => {
          const done = await attempt(() => api("POST", `${hookPath}/deliveries/${encodeURIComponent(d.id)}/redeliver`), { ok: `Delivery ${d.id} queued again.` });
          if (done !== undefined) deliveries(hook);
        } }, "Redeliver")),
      ),
    );
    fill(
      $("#deliveries"),
      el("h3", {}, `Deliveries to ${hook.url}`),
      table(["Delivery", "Status", "Attempt", "HTTP", ["Latency", "hide-narrow"], ["Error", "hide-narrow"], ["Created", "hide-narrow"], ""], rows, "No deliveries yet."),
      page.next_cursor ? el("div", { class: "actions" }, el("button", { type: "button", class: "secondary", onclick: () => deliveries(hook, page.next_cursor) }, "Older deliveries")) : null,
    );
  }

  load();
}
