// The dashboard: manage rooms, tokens, presence and webhooks with an API key kept in this
// tab's session storage. Every untrusted string is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem("gatehouse-key");
let lastRoomId = null;

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.info || `HTTP ${res.status}`);
  return data;
}

function say(text) { $("status").textContent = text; }

function el(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function button(label, onClick, cls = "secondary") {
  const b = el("button", label, { type: "button", class: cls });
  b.addEventListener("click", onClick);
  return b;
}

async function loadRooms(append) {
  const q = append && lastRoomId ? `?limit=20&starting_after=${encodeURIComponent(lastRoomId)}` : "?limit=20";
  const [list, presence] = await Promise.all([api("GET", "/v1/rooms" + q), api("GET", "/v1/presence")]);
  const tbody = $("rooms");
  if (!append) tbody.replaceChildren();
  for (const r of list.data) {
    const tr = el("tr");
    const link = el("a", r.name, { href: "/" + encodeURIComponent(r.name) });
    const td = el("td");
    td.append(link);
    tr.append(td, el("td", r.privacy), el("td", r.created_at), el("td", String((presence[r.name] || []).length)));
    const actions = el("td");
    actions.append(button("Delete", async () => {
      if (!confirm(`Delete room ${r.name}? Everyone in it is ejected.`)) return;
      await api("DELETE", `/v1/rooms/${encodeURIComponent(r.name)}`);
      say(`Deleted ${r.name}`);
      refresh();
    }, "danger"));
    tr.append(actions);
    tbody.append(tr);
  }
  lastRoomId = list.data.length ? list.data[list.data.length - 1].id : lastRoomId;
  $("more-rooms").hidden = list.data.length < 20;
  const ul = $("presence");
  ul.replaceChildren();
  for (const [room, people] of Object.entries(presence)) {
    for (const p of people) {
      const li = el("li");
      li.append(el("span", `${room}: ${p.userName || "Guest"}`, { class: "who" }));
      li.append(button("Eject", async () => {
        await api("POST", `/v1/rooms/${encodeURIComponent(room)}/eject`, { ids: [p.id] });
        say(`Ejected ${p.userName || "Guest"}`);
        refresh();
      }, "danger"));
      ul.append(li);
    }
  }
}

async function loadWebhooks() {
  const hooks = await api("GET", "/v1/webhooks");
  const ul = $("webhooks");
  ul.replaceChildren();
  for (const w of hooks) {
    const li = el("li");
    li.append(el("span", `${w.url} — ${w.state} (${w.failedCount} failures, cursor ${w.cursor})`, { class: "who" }));
    if (w.state !== "ACTIVE") {
      li.append(button("Re-activate", async () => {
        await api("POST", `/v1/webhooks/${encodeURIComponent(w.uuid)}`, {});
        say("Webhook re-activated; it resumes from its cursor");
        refresh();
      }));
    }
    ul.append(li);
  }
}

async function loadEvents() {
  const head = await api("GET", "/v1/events?limit=1");
  const after = Math.max(0, head.head_seq - 20);
  const page = await api("GET", `/v1/events?after=${after}&limit=20`);
  const ul = $("events");
  ul.replaceChildren();
  for (const e of page.data.reverse()) {
    const p = e.payload || {};
    ul.append(el("li", `#${e.seq} ${e.type} ${p.room || ""} ${p.user_name || ""} ${p.reason || ""}`.trim()));
  }
}

function minutes(secs) {
  const m = Math.floor(secs / 60);
  return m ? `${m} min ${secs % 60} s` : `${secs} s`;
}

async function loadMeetings() {
  const list = await api("GET", "/v1/meetings?limit=10");
  const ul = $("meetings");
  ul.replaceChildren();
  for (const m of list.data) {
    const li = el("li");
    const when = new Date(m.start_time * 1000).toLocaleString();
    const head = el("span", `${m.room} — ${when}, ${minutes(m.duration)}${m.ongoing ? " (ongoing)" : ""}, up to ${m.max_participants} at once`, { class: "who" });
    const people = el("ul", undefined, { class: "muted" });
    for (const p of m.participants || []) {
      people.append(el("li", `${p.user_name || "Guest"}: ${minutes(p.duration)}`));
    }
    li.append(head, people);
    ul.append(li);
  }
  if (!list.data.length) ul.append(el("li", "No meetings yet.", { class: "muted" }));
}

async function refresh() {
  try {
    await Promise.all([loadRooms(false), loadWebhooks(), loadEvents(), loadMeetings()]);
  } catch (e) {
    say(e.message);
  }
}

function num(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

$("key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  key = $("key").value.trim();
  try {
    await api("GET", "/v1/");
  } catch (err) {
    return alert("That key was not accepted: " + err.message);
  }
  sessionStorage.setItem("gatehouse-key", key);
  open();
});

$("room-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const properties = {};
  const exp = num("room-exp");
  if (exp) properties.exp = Math.floor(Date.now() / 1000) + exp * 60;
  if (num("room-max")) properties.max_participants = num("room-max");
  if (num("room-elapsed")) properties.eject_after_elapsed = num("room-elapsed");
  if ($("room-eject-exp").checked) properties.eject_at_room_exp = true;
  if ($("room-knock").checked) properties.enable_knocking = true;
  const body = { privacy: $("room-privacy").value, properties };
  const name = $("room-name").value.trim();
  if (name) body.name = name;
  try {
    const room = await api("POST", "/v1/rooms", body);
    say(`Created room ${room.name}`);
    $("token-room").value = room.name;
    refresh();
  } catch (err) {
    say(err.message);
  }
});

$("token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const room = $("token-room").value.trim();
  const properties = { room_name: room };
  if ($("token-user").value.trim()) properties.user_name = $("token-user").value.trim();
  if ($("token-owner").checked) properties.is_owner = true;
  if (num("token-elapsed")) properties.eject_after_elapsed = num("token-elapsed");
  try {
    const { token } = await api("POST", "/v1/meeting-tokens", { properties });
    const link = `${location.origin}/${encodeURIComponent(room)}?t=${encodeURIComponent(token)}`;
    $("join-link").textContent = link;
    $("join-link").href = link;
    $("join-link").hidden = false;
    $("copy-link").hidden = false;
    say(`Token created for ${room}`);
  } catch (err) {
    say(err.message);
  }
});

$("copy-link").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("join-link").href));
$("more-rooms").addEventListener("click", () => loadRooms(true));

function open() {
  $("login").hidden = true;
  $("main").hidden = false;
  refresh();
}

if (key) open();
