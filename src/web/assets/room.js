// The room page: join (with ?t=<token> or a name), show who is there live, let owners eject,
// and show the end of the meeting. Untrusted text is only ever inserted with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const room = decodeURIComponent(location.pathname.replace(/^\/+/, "").split("/")[0] || "");
let token = null;
let session = null; // { id, secret, owner, user }
let ended = false;
let timer = null;

const REFUSALS = {
  "not-allowed": "You are not allowed to join this meeting.",
  "no-room": "This room does not exist.",
  "nbf-room": "This meeting has not started yet.",
  "exp-room": "This meeting has ended.",
  "nbf-token": "Your link is not valid yet.",
  "exp-token": "Your link has expired.",
  "meeting-full": "This meeting is full.",
  "ejected": "You were removed from this meeting and cannot rejoin.",
  "rate-limit-error": "Too many attempts. Wait a moment and try again.",
};

function show(id) {
  for (const s of ["prejoin", "refused", "waiting", "meeting", "ended"]) $(s).hidden = s !== id;
}

// Knock-to-join: what a join would get (daily-js preAuth): "lobby" means ask the owner.
async function preAuth() {
  try {
    const res = await fetch(`/v1/rooms/${encodeURIComponent(room)}/pre-auth`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    const data = await res.json().catch(() => ({}));
    if (res.ok && data.access && data.access.level === "lobby") $("join-button").textContent = "Ask to join";
  } catch (e) { /* the join will say */ }
}

function readToken() {
  const params = new URLSearchParams(location.search);
  token = params.get("t");
  if (token !== null) {
    params.delete("t");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
}

async function join(userName) {
  const body = {};
  if (token) body.token = token;
  if (userName) body.user_name = userName;
  let res;
  try {
    res = await fetch(`/v1/rooms/${encodeURIComponent(room)}/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (e) {
    return refuse("The server could not be reached.");
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) return refuse(REFUSALS[data.error] || "You cannot join this meeting.");
  session = { id: data.session_id, secret: data.session_secret, owner: !!data.owner, name: data.user_name, admin: isAdmin(data) };
  $("title").textContent = room;
  if (data.access && data.access.level === "lobby") {
    lastName = userName;
    show("waiting");
  } else {
    enterMeeting(data);
  }
  follow();
}

let lastName = null;

function isAdmin(p) {
  if (p.owner) return true;
  const a = p.permissions && p.permissions.canAdmin;
  return a === true || (Array.isArray(a) && a.includes("participants"));
}

function enterMeeting(data) {
  show("meeting");
  // With a media server, a join (or an admitted knock) carries the credential for the call.
  if (data.janus) {
    Media.allow(data.permissions);
    Media.start(data.janus, session.name);
  }
  if (data.will_eject_at) countdown(data.will_eject_at);
  if (session.admin && token) loadKnockers();
}

// Owners (and participant admins) see who knocks, and admit or deny.
const knockers = new Map(); // id -> name
function renderKnockers() {
  const ul = $("knockers");
  ul.replaceChildren();
  for (const [id, name] of knockers) {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = name || "Guest";
    li.append(who);
    for (const [label, grant] of [["Admit", true], ["Deny", false]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = grant ? "" : "danger";
      b.textContent = label;
      b.setAttribute("aria-label", `${label} ${name || "Guest"}`);
      b.addEventListener("click", () => decide({ [id]: { grantRequestedAccess: grant } }));
      li.append(b);
    }
    ul.append(li);
  }
  $("lobby").hidden = knockers.size === 0;
}

async function loadKnockers() {
  const res = await fetch(`/v1/rooms/${encodeURIComponent(room)}/waiting-participants`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (!res.ok) return;
  const data = await res.json();
  for (const w of data.data || []) knockers.set(w.id, w.name);
  renderKnockers();
}

async function decide(updates) {
  await fetch(`/v1/rooms/${encodeURIComponent(room)}/waiting-participants`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(updates),
  });
}
$("admit-all").addEventListener("click", () => decide({ "*": { grantRequestedAccess: true } }));

function refuse(text, again) {
  $("title").textContent = room || "Gatehouse";
  $("refused-text").textContent = text;
  $("ask-again").hidden = !again;
  show("refused");
}

const LOBBY_REFUSALS = {
  denied: "The host did not let you in.",
  meeting_full: "The meeting is full.",
  room_expired: "This meeting has ended.",
  timeout: "You waited too long without an answer.",
  left: "You stopped waiting.",
};

// Why the meeting ended for this page (a `participant.ejected` event's reason).
const EJECTIONS = {
  owner: "You were removed from the meeting",
  api: "You were removed from the meeting",
  banned: "You were removed from the meeting and cannot rejoin",
  token_revoked: "Your access to this meeting was revoked",
  token_expired: "Your time in this meeting is up: your link expired",
  elapsed: "Your time in this meeting is up",
  room_expired: "Meeting has ended",
  room_deleted: "Meeting has ended",
  duplicate_user_id: "You joined this meeting from another window or device",
};

function countdown(at) {
  const el = $("time-left");
  el.hidden = false;
  const tick = () => {
    const left = Math.max(0, Math.round(at - Date.now() / 1000));
    el.textContent = `Time left: ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
  };
  tick();
  timer = setInterval(tick, 1000);
}

const people = new Map(); // id -> { name, userId }
// A large room (the server's threshold) sends the count and the latest joiners and leavers,
// not everyone; an owner can page through everyone.
let large = false;
let count = 0;
let recentJoined = []; // newest first
let recentLeft = [];
const RECENT = 20;

function names(list, ul) {
  ul.replaceChildren();
  for (const p of list) {
    const li = document.createElement("li");
    li.textContent = (p.userName || "Guest") + (p.id === session.id ? " (you)" : "");
    ul.append(li);
  }
}

function renderLarge() {
  $("participants").hidden = true;
  $("large").hidden = false;
  $("people-title").textContent = "Participants (large meeting)";
  $("count").textContent = `${count} ${count === 1 ? "person is" : "people are"} here`;
  names(recentJoined, $("joined"));
  names(recentLeft, $("left"));
  $("everyone-box").hidden = !(session.owner && token);
}

let nextPage = null;
async function showEveryone(first) {
  const url = first ? `/v1/rooms/${encodeURIComponent(room)}/presence?limit=100` : nextPage;
  if (!url) return;
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) return;
  const data = await res.json();
  const ul = $("everyone");
  if (first) ul.replaceChildren();
  for (const p of data.data || []) {
    const li = document.createElement("li");
    li.textContent = p.userName || "Guest";
    ul.append(li);
  }
  const link = res.headers.get("link") || "";
  const m = link.match(/<([^>]+)>;\s*rel="next"/);
  nextPage = m ? m[1] : null;
  $("more").hidden = !nextPage;
}
$("show-everyone").addEventListener("click", () => showEveryone(true));
$("more").addEventListener("click", () => showEveryone(false));

function render() {
  if (large) return renderLarge();
  $("participants").hidden = false;
  $("large").hidden = true;
  $("people-title").textContent = "Participants";
  const ul = $("participants");
  ul.replaceChildren();
  for (const [id, p] of people) {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.className = "who" + (id === session.id ? " me" : "");
    who.textContent = (p.name || "Guest") + (id === session.id ? " (you)" : "");
    li.append(who);
    if (session.owner && id !== session.id && token) {
      // A ban keeps a user id out; someone without one (anonymous) can only be ejected.
      const actions = p.userId ? [["Eject", false], ["Eject and ban", true]] : [["Eject", false]];
      for (const [label, ban] of actions) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = ban ? "danger" : "secondary";
        b.textContent = label;
        b.setAttribute("aria-label", `${label} ${p.name || "Guest"}`);
        b.addEventListener("click", () => eject(id, ban));
        li.append(b);
      }
    }
    ul.append(li);
  }
}

async function eject(id, ban) {
  await fetch(`/v1/rooms/${encodeURIComponent(room)}/eject`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(ban ? { ids: [id], ban: true } : { ids: [id] }),
  });
}

function end(text) {
  if (ended) return;
  ended = true;
  if (timer) clearInterval(timer);
  Media.stop("");
  $("ended-text").textContent = text;
  show("ended");
}

// App messages (`send-app-message`): shown as text, the latest few. A message's `data` is any
// JSON; an object with a `message` or `text` string shows that string.
const MESSAGES = 20;
function showMessage(data) {
  const d = data && data.data;
  const text = typeof d === "string" ? d
    : d && typeof d.message === "string" ? d.message
    : d && typeof d.text === "string" ? d.text
    : JSON.stringify(d);
  const li = document.createElement("li");
  li.textContent = text;
  const list = $("message-list");
  list.prepend(li);
  while (list.children.length > MESSAGES) list.lastChild.remove();
  $("messages").hidden = false;
}

function onEvent(kind, data) {
  if (kind === "app-message") return showMessage(data);
  if (kind === "access") {
    if (data.access && data.access.level === "full") enterMeeting(data);
    return;
  }
  if (kind === "waiting-participant.joined" || kind === "waiting-participant.left") {
    const p = (data && data.payload) || {};
    if (p.session_id === session.id) {
      if (kind === "waiting-participant.left") {
        ended = true;
        refuse(LOBBY_REFUSALS[p.reason] || "You were not let in.", true);
      }
      return;
    }
    if (kind === "waiting-participant.joined") knockers.set(p.session_id, p.user_name);
    else knockers.delete(p.session_id);
    renderKnockers();
    return;
  }
  if (kind === "presence") {
    people.clear();
    large = !!data.large;
    count = data.count || 0;
    if (large) recentJoined = (data.participants || []).slice(0, RECENT), recentLeft = [];
    else for (const p of data.participants || []) people.set(p.id, { name: p.userName, userId: p.userId });
    render();
    return;
  }
  if (kind === "presence-summary") {
    large = true;
    count = data.count || 0;
    recentJoined = (data.joined || []).concat(recentJoined).slice(0, RECENT);
    recentLeft = (data.left || []).concat(recentLeft).slice(0, RECENT);
    render();
    return;
  }
  const p = (data && data.payload) || {};
  const hidden = p.permissions && p.permissions.hasPresence === false && !session.admin;
  if (kind === "participant.joined" && knockers.delete(p.session_id)) renderKnockers();
  if (kind === "participant.joined" && !hidden) people.set(p.session_id, { name: p.user_name, userId: p.user_id });
  if (kind === "participant.updated" && p.session_id === session.id) {
    session.admin = isAdmin(p);
    Media.allow(p.permissions);
  }
  if (kind === "participant.updated" && p.session_id !== session.id) {
    if (hidden) people.delete(p.session_id);
    else people.set(p.session_id, { name: p.user_name, userId: p.user_id });
  }
  if (kind === "participant.left") people.delete(p.session_id);
  if (kind === "participant.ejected" && p.session_id === session.id) {
    end(EJECTIONS[p.reason] || "Meeting has ended");
    return;
  }
  if (kind === "participant.left" && p.session_id === session.id) end("Meeting has ended");
  if (kind === "room.deleted") end("Meeting has ended");
  render();
}

// The stream is read with fetch so the session secret travels in a header, never in a URL.
async function follow() {
  try {
    const res = await fetch(`/v1/sessions/${encodeURIComponent(session.id)}/stream`, {
      headers: { authorization: `Bearer ${session.secret}` },
    });
    if (!res.ok || !res.body) return end("Meeting has ended");
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let kind = "message", data = "";
        for (const line of chunk.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) {
          try { onEvent(kind, JSON.parse(data)); } catch (e) { /* ignore a malformed event */ }
        }
        if (ended) return reader.cancel();
      }
    }
  } catch (e) { /* the connection dropped */ }
  // The stream ended without our own end: the meeting is over for us. Never reconnect silently.
  end("Meeting has ended");
}

let left = false;
function leave() {
  if (!session || ended || left) return;
  left = true;
  fetch(`/v1/sessions/${encodeURIComponent(session.id)}/leave`, {
    method: "POST",
    keepalive: true,
    headers: { authorization: `Bearer ${session.secret}` },
  });
}

addEventListener("pagehide", leave);
$("leave").addEventListener("click", () => { leave(); end("You left the meeting"); });
$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  join($("name").value.trim());
});
$("ask-again").addEventListener("click", () => { ended = false; left = false; join(lastName); });
$("stop-waiting").addEventListener("click", () => { leave(); ended = true; refuse("You stopped waiting.", true); });

readToken();
$("title").textContent = room;
if (token) join(null);
else { show("prejoin"); $("name").focus(); preAuth(); }
