// The call's audio and video, when the server runs with Janus (a join's answer carries `janus`):
// a small client of Janus's HTTP API, reached through this server's own relay (`/janus`, the
// page's origin: the Content-Security-Policy stays `connect-src 'self'`). It publishes the
// camera and microphone into the room's VideoRoom with the credential Gatehouse handed out,
// and subscribes to everyone else's. Gatehouse decides; Janus carries the media: when the
// session ends, Gatehouse cuts it in Janus, and this page stops its own and says why.
// Untrusted text (names) is only ever inserted with textContent.
"use strict";

const Media = (() => {
  const API = "/janus";
  const $ = (id) => document.getElementById(id);
  let cred = null;
  let session = null;
  let publisher = null; // handle id
  let pc = null; // the publisher's connection
  let local = null; // MediaStream
  let over = false;
  let keepalive = null;
  let name = null;
  // Each connection to Janus is a generation: a poll of an older one stops.
  let generation = 0;
  let onEnd = null;
  const feeds = new Map(); // feed (publisher id) -> { handle, pc, tile, bytes }
  const handles = new Map(); // handle id -> feed (subscribers)
  const seen = new Map(); // feed -> bytes received from it (kept after it went)

  const tx = () => Math.random().toString(36).slice(2, 12);

  async function send(path, body) {
    const res = await fetch(API + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(Object.assign({ transaction: tx() }, body)),
    });
    if (!res.ok) throw new Error(`the media server answered ${res.status}`);
    const data = await res.json();
    if (data.janus === "error") throw new Error((data.error && data.error.reason) || "the media server refused");
    return data;
  }

  const message = (handle, body, jsep) =>
    send(`/${session}/${handle}`, jsep ? { janus: "message", body, jsep } : { janus: "message", body });

  // Waits for the connection's ICE candidates (at most 3 s): the offer or answer then carries
  // them all, and no trickling is needed.
  function gathered(conn) {
    if (conn.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (conn.iceGatheringState === "complete") resolve(); };
      conn.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, 3000);
    });
  }

  async function description(conn) {
    await gathered(conn);
    const d = conn.localDescription;
    return { type: d.type, sdp: d.sdp, trickle: false };
  }

  function tile(id, name, stream, mine) {
    const fig = document.createElement("figure");
    fig.className = "tile" + (mine ? " mine" : "");
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.muted = !!mine; // never play one's own microphone back
    video.srcObject = stream;
    const cap = document.createElement("figcaption");
    cap.textContent = (name || "Guest") + (mine ? " (you)" : "");
    fig.append(video, cap);
    fig.dataset.feed = id;
    $("tiles").append(fig);
    return fig;
  }

  async function publish() {
    try {
      if (!local) local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    } catch (e) {
      status("No camera or microphone: you can see and hear the others, they cannot see or hear you.");
      return;
    }
    if (over) return stopTracks();
    apply();
    tile(cred.id, "", local, true);
    pc = new RTCPeerConnection();
    for (const t of local.getTracks()) pc.addTrack(t, local);
    await pc.setLocalDescription(await pc.createOffer());
    await message(publisher, { request: "configure", audio: true, video: true }, await description(pc));
    $("mute").hidden = false;
    $("camera").hidden = false;
  }

  async function subscribe(p) {
    if (over || feeds.has(p.id) || p.id === cred.id) return;
    const f = { handle: null, pc: null, tile: null, bytes: 0, name: p.display };
    feeds.set(p.id, f);
    const h = await send(`/${session}`, { janus: "attach", plugin: "janus.plugin.videoroom" });
    f.handle = h.data.id;
    handles.set(f.handle, p.id);
    await message(f.handle, { request: "join", ptype: "subscriber", room: cred.room, streams: [{ feed: p.id }], token: cred.token });
  }

  async function offered(feed, jsep) {
    const f = feeds.get(feed);
    if (!f || over) return;
    f.pc = new RTCPeerConnection();
    const stream = new MediaStream();
    f.pc.addEventListener("track", (e) => {
      stream.addTrack(e.track);
      if (!f.tile) f.tile = tile(feed, f.name, stream, false);
    });
    await f.pc.setRemoteDescription(jsep);
    await f.pc.setLocalDescription(await f.pc.createAnswer());
    await message(f.handle, { request: "start" }, await description(f.pc));
  }

  function gone(feed) {
    const f = feeds.get(feed);
    if (!f) return;
    feeds.delete(feed);
    handles.delete(f.handle);
    if (f.pc) f.pc.close();
    if (f.tile) f.tile.remove();
    if (f.handle && !over) send(`/${session}/${f.handle}`, { janus: "detach" }).catch(() => {});
  }

  function onPluginEvent(sender, data, jsep) {
    const v = data.videoroom;
    if (sender === publisher) {
      if (v === "joined") {
        for (const p of data.publishers || []) subscribe(p).catch(() => {});
        publish().catch((e) => status(`Your camera could not be sent: ${e.message}`));
        return;
      }
      if (jsep && jsep.type === "answer" && pc) pc.setRemoteDescription(jsep).catch(() => {});
      for (const p of data.publishers || []) subscribe(p).catch(() => {});
      for (const k of ["leaving", "unpublished", "kicked"]) if (data[k] && data[k] !== "ok") gone(data[k]);
      if (data.leaving === "ok" || data.error) lost(generation);
      return;
    }
    const feed = handles.get(sender);
    if (feed === undefined) return;
    if (v === "attached" && jsep) offered(feed, jsep).catch(() => gone(feed));
    else if (data.error) gone(feed);
  }

  // Janus's events arrive on the session's long-poll.
  async function poll(gen) {
    while (!over && gen === generation) {
      let res;
      try {
        res = await fetch(`${API}/${session}?maxev=10&rid=${Date.now()}`);
      } catch (e) {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (gen !== generation) return;
      if (!res.ok) return lost(gen);
      const data = await res.json().catch(() => null);
      for (const ev of Array.isArray(data) ? data : data ? [data] : []) {
        if (ev.janus === "event" && ev.plugindata) onPluginEvent(ev.sender, ev.plugindata.data || {}, ev.jsep);
        else if (ev.janus === "hangup" || ev.janus === "detached") {
          if (ev.sender === publisher) lost(gen);
          else if (handles.has(ev.sender)) gone(handles.get(ev.sender));
        }
      }
    }
  }

  // A session with Janus: publish into the room, and subscribe to the others.
  async function connect() {
    const gen = ++generation;
    try {
      const s = (await send("", { janus: "create" })).data.id;
      if (over || gen !== generation) return;
      session = s;
      publisher = (await send(`/${session}`, { janus: "attach", plugin: "janus.plugin.videoroom" })).data.id;
      poll(gen);
      await message(publisher, { request: "join", ptype: "publisher", room: cred.room, id: cred.id, token: cred.token, display: name || "Guest" });
    } catch (e) {
      lost(gen);
    }
  }

  // Janus lost this page's session (it restarted, or refused or ended it): what the page held
  // goes, and it joins again in 2 s with the same credential. A restarted Janus gets its rooms
  // and the live sessions' tokens back from Gatehouse within seconds; a session that ended is
  // ended on the page by its own stream (which stops this for good).
  function lost(gen) {
    if (over || gen !== generation) return;
    generation++;
    if (pc) pc.close();
    pc = null;
    for (const f of feeds.values()) if (f.pc) f.pc.close();
    feeds.clear();
    handles.clear();
    session = null;
    $("tiles").replaceChildren();
    status("Reconnecting to the media server…");
    setTimeout(() => { if (!over) connect(); }, 2000);
  }

  function status(text) {
    const el = $("media-status");
    el.textContent = text;
    el.hidden = !text;
  }

  function stopTracks() {
    if (local) for (const t of local.getTracks()) t.stop();
  }

  // What this page may send (Daily's canSend for its session; the server mutes the rest in
  // Janus as well), and what its user turned off.
  const allowed = { audio: true, video: true };
  const off = { audio: false, video: false };
  function apply() {
    $("mute").disabled = !allowed.audio;
    $("camera").disabled = !allowed.video;
    const held = ["audio", "video"].filter((k) => !allowed[k]).map((k) => (k === "audio" ? "microphone" : "camera"));
    status(held.length ? `The host turned off your ${held.join(" and ")}.` : "");
    if (local) for (const t of local.getTracks()) t.enabled = allowed[t.kind] && !off[t.kind];
  }
  function toggle(kind, button, onLabel, offLabel) {
    off[kind] = !off[kind];
    button.textContent = off[kind] ? onLabel : offLabel;
    button.setAttribute("aria-pressed", String(off[kind]));
    apply();
  }
  $("mute").addEventListener("click", (e) => toggle("audio", e.target, "Unmute", "Mute"));
  $("camera").addEventListener("click", (e) => toggle("video", e.target, "Turn camera on", "Turn camera off"));

  return {
    // Joins the call's media with the credential of a join (or an admitted knock).
    async start(credential, userName) {
      if (cred || over) return;
      cred = credential;
      name = userName;
      $("media").hidden = false;
      keepalive = setInterval(() => { if (session) send(`/${session}`, { janus: "keepalive" }).catch(() => {}); }, 25000);
      await connect();
    },

    // This session's permissions changed (or were given at the join): Daily's canSend.
    allow(permissions) {
      const can = permissions ? permissions.canSend : undefined;
      for (const k of ["audio", "video"]) allowed[k] = can === undefined || can === true || (Array.isArray(can) && can.includes(k));
      apply();
    },

    // Ends the media on this page (the meeting ended for us, or the media server ended it).
    stop(why) {
      if (over) return;
      over = true;
      if (keepalive) clearInterval(keepalive);
      stopTracks();
      if (pc) pc.close();
      for (const f of feeds.values()) if (f.pc) f.pc.close();
      $("tiles").replaceChildren();
      $("mute").hidden = true;
      $("camera").hidden = true;
      if (session) send(`/${session}`, { janus: "destroy" }).catch(() => {});
      if (why) status(why);
      if (onEnd) onEnd(why);
    },

    // For tests and diagnostics: this page's VideoRoom id, and the bytes received so far from
    // each feed it subscribed to (kept after a feed's connection closed; `only`: one feed's
    // figure brought up to date, the others as last seen).
    id: () => cred && cred.id,
    async received(only) {
      for (const [id, f] of feeds) {
        if (!f.pc || (only !== undefined && id !== only)) continue;
        let n = 0;
        try {
          (await f.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp") n += s.bytesReceived || 0; });
          seen.set(id, Math.max(seen.get(id) || 0, n));
        } catch (e) { /* closed meanwhile */ }
      }
      return Object.fromEntries(seen);
    },
  };
})();
