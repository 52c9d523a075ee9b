// Real calls: room pages in headless Chromium with fake camera and microphone, publishing and
// receiving video through a real Janus behind Gatehouse. For each way a session is ended, the
// ended participant's page is made hostile first (it ignores its end and keeps sending), and
// an observer's page, made deaf to Janus's events for the measurement (it keeps its
// subscription open whatever Janus says), must stop receiving its media within 2 s: only the
// server side can stop it. The host's page, which listens, drops the tile.
// Env: BASE (server URL), KEY (API key), SHOTS (folder for screenshots). Prints one JSON line
// per measurement ("measure: {...}"). With ROUNDS=N (benches/janus.rs --media N) it measures
// instead: N REST ejections, and every fifth round a baseline (the guest's own page hanging
// up), sampling every SAMPLE_MS (default 100) ms.
import { chromium } from "playwright-core";
import { api, token, check } from "./lib.mjs";
import { mkdirSync, openSync } from "node:fs";
import { spawn } from "node:child_process";

const { BASE, SHOTS } = process.env;
const ROUNDS = Number(process.env.ROUNDS || 0);
const SAMPLE_MS = Number(process.env.SAMPLE_MS || 100);
mkdirSync(SHOTS, { recursive: true });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
  ],
});
const newPage = async () => {
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 800 }, permissions: ["camera", "microphone"] });
  const page = await ctx.newPage();
  // Failed loads are expected (a destroyed Janus session's poll, the favicon): not reported.
  page.on("console", (m) => { if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) console.log("page error:", m.text()); });
  return page;
};

// Bytes the host's page has received from `feed` so far (0 before it subscribed).
const received = async (page, feed) => (await page.evaluate((f) => Media.received(f), feed))[feed] || 0;

// Waits until `page` receives `feed`'s media and it keeps coming; the time it took.
async function flowing(page, feed, what) {
  const started = now();
  let first = null;
  while (now() - started < 20000) {
    const n = await received(page, feed);
    if (n > 0 && first === null) first = now();
    if (first !== null && n > 50000) return first - started;
    await sleep(100);
  }
  const seen = await page.evaluate(() => `${document.getElementById("media-status").textContent}; ${document.querySelectorAll("#tiles figure").length} tiles; ${document.getElementById("ended-text").textContent}`);
  throw new Error(`FAILED: ${what}: no media from ${feed} after 20 s (the page: ${seen})`);
}

// Waits (at most 10 s) until `cond` holds.
async function until(cond, what) {
  const started = now();
  while (!(await cond())) {
    if (now() - started > 10000) throw new Error(`FAILED: ${what} (after 10 s)`);
    await sleep(100);
  }
  check(true, `${what} (${Math.round(now() - started)} ms)`);
}

// Whether `feed`'s media is reaching `page` now (its bytes grow over 300 ms).
async function live(page, feed) {
  const before = await received(page, feed);
  await sleep(300);
  return (await received(page, feed)) > before;
}

// After a cut at `cut`: how long `page` went on receiving the feed. Sampled every SAMPLE_MS
// until it has not grown for 1.5 s (at most 6 s): the time of the last growth seen, or of the
// first sample if it never grew again (an upper bound either way: a sample is at most
// SAMPLE_MS late, plus a getStats call).
async function stopped(page, feed, cut) {
  let last = await received(page, feed);
  let grewAt = now();
  const first = grewAt - cut;
  let grew = false;
  while (now() - grewAt < 1500 && now() - cut < 6000) {
    await sleep(SAMPLE_MS);
    const n = await received(page, feed);
    if (n > last) {
      last = n;
      grewAt = now();
      grew = true;
    }
  }
  return grew ? grewAt - cut : first;
}

// A page that ignores the end of its session: its connections and camera go on.
const hostile = (page) => page.evaluate(() => { Media.stop = () => {}; });

// A page that stops hearing Janus's events (its long-poll answers are dropped), or hears them
// again: while deaf it keeps every subscription open, whatever Janus says.
const deaf = (page, on) => page.evaluate((on) => {
  if (!window.deafness) {
    const json = Response.prototype.json;
    Response.prototype.json = function () { return window.deafness.on ? Promise.resolve([]) : json.call(this); };
    window.deafness = { on: false };
  }
  window.deafness.on = on;
}, on);

async function joined(props, room = "call") {
  const t = await token(Object.assign({ room_name: room }, props));
  const page = await newPage();
  // The test can cut this page's session stream (window.cutStream()) as a lost network would,
  // leaving its media (UDP, to Janus) going.
  await page.addInitScript(() => {
    const abort = new AbortController();
    const fetch = window.fetch;
    window.fetch = (url, opts) => (String(url).endsWith("/stream") ? fetch(url, Object.assign({}, opts, { signal: abort.signal })) : fetch(url, opts));
    window.cutStream = () => abort.abort();
  });
  const opened = now();
  await page.goto(`${BASE}/${room}?t=${t}`);
  await page.waitForFunction(() => typeof Media !== "undefined" && Media.id(), null, { timeout: 10000 });
  return { page, opened, token: t, feed: await page.evaluate(() => Media.id()), sessionId: await page.evaluate(() => session.id) };
}

// A participant's page in the call, its media flowing to the host and the observer; hostile.
async function guest(host, observer, props, what, room = "call") {
  const g = await joined(props, room);
  await flowing(host, g.feed, what);
  g.firstBytes = now() - g.opened;
  await flowing(observer, g.feed, what);
  await hostile(g.page);
  return g;
}

// The benchmark: ROUNDS REST ejections of a hostile guest, and every fifth round the
// baseline: a guest that hangs up itself (its page closes its connections), measured the
// same way at the same (deaf) observer.
async function bench(host, observer) {
  for (let i = 0; i < ROUNDS + Math.floor(ROUNDS / 4); i++) {
    const baseline = i % 5 === 4;
    const g = await joined({ user_name: `Guest ${i}` });
    await flowing(host, g.feed, `round ${i}`);
    const firstBytes = now() - g.opened;
    await flowing(observer, g.feed, `round ${i}`);
    if (!baseline) await hostile(g.page);
    await deaf(observer, true);
    if (!(await live(observer, g.feed))) throw new Error(`FAILED: round ${i}: no media before the cut`);
    const at = now();
    if (baseline) await g.page.evaluate(() => Media.stop(""));
    else await api("POST", "/v1/rooms/call/eject", { ids: [g.sessionId] });
    const lasted = await stopped(observer, g.feed, at);
    await deaf(observer, false);
    console.log("measure:", JSON.stringify({ kind: baseline ? "baseline" : "eject", first_bytes_ms: Math.round(firstBytes), cut_ms: Math.round(lasted) }));
    await g.page.context().close();
  }
}

// kill -9 of Janus, and Janus started again as the test harness started it (JANUS_PID,
// JANUS_DIR); the new one is stopped when this script ends.
let janus = null;
async function crashJanus() {
  process.kill(Number(process.env.JANUS_PID), "SIGKILL");
  const dir = process.env.JANUS_DIR;
  const log = openSync(`${dir}/janus.log`, "a");
  await sleep(200);
  janus = spawn("janus", ["-F", dir, "-C", `${dir}/janus.jcfg`], { stdio: ["ignore", log, log] });
  for (let i = 0; i < 100; i++) {
    const r = await fetch(`${BASE}/janus/info`).catch(() => null);
    if (r && r.ok) return;
    await sleep(100);
  }
  throw new Error("FAILED: Janus did not come back");
}

// kill -9 of Gatehouse, and Gatehouse started again on the same data and port (GATEHOUSE_PID,
// GATEHOUSE_BIN, GATEHOUSE_DATA, GATEHOUSE_LISTEN, GATEHOUSE_ENV as JSON); the new one is
// stopped when this script ends. Resolves when it answers again.
let gatehouse = null;
function crashGatehouse() {
  process.kill(Number(process.env.GATEHOUSE_PID), "SIGKILL");
}
async function restartGatehouse() {
  const env = Object.assign({}, process.env, JSON.parse(process.env.GATEHOUSE_ENV));
  const log = openSync(`${process.env.GATEHOUSE_DATA}/../restarted.log`, "a");
  gatehouse = spawn(process.env.GATEHOUSE_BIN, ["serve", "--listen", process.env.GATEHOUSE_LISTEN, "--data-dir", process.env.GATEHOUSE_DATA], { env, stdio: ["ignore", log, log] });
  for (let i = 0; i < 300; i++) {
    const r = await fetch(`${BASE}/readyz`).catch(() => null);
    if (r && r.ok) return;
    await sleep(50);
  }
  throw new Error("FAILED: Gatehouse did not come back");
}

// A Janus request through the relay (the answer's JSON).
const relay = async (path, body) =>
  (await fetch(`${BASE}/janus${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(Object.assign({ transaction: "t" }, body)) })).json();

try {
  await api("POST", "/v1/rooms", { name: "call" });
  const host = await newPage();
  await host.goto(`${BASE}/call?t=${await token({ room_name: "call", is_owner: true, user_name: "Host" })}`);
  await host.waitForFunction(() => typeof Media !== "undefined" && Media.id(), null, { timeout: 10000 });
  await host.locator("#tiles video").first().waitFor({ timeout: 10000 });
  check(true, "the host's page shows its own camera");
  const observer = (await joined({ user_name: "Observer" })).page;
  await hostile(observer);

  if (ROUNDS > 0) await bench(host, observer);
  else await walk(host, observer);
} finally {
  await browser.close();
  if (janus) janus.kill("SIGKILL");
  if (gatehouse) gatehouse.kill("SIGKILL");
}

// Every way a session ends, in turn.
async function walk(host, observer) {
  const paths = [
    ["the REST API's eject", async (g) => api("POST", "/v1/rooms/call/eject", { ids: [g.sessionId] }), "You were removed from the meeting"],
    ["the owner's Eject button", async () => host.getByRole("button", { name: "Eject Guest button", exact: true }).click(), "You were removed from the meeting"],
    ["the owner's Eject and ban button", async () => host.getByRole("button", { name: "Eject and ban Guest ban", exact: true }).click(), "cannot rejoin"],
    ["token revocation", async (g) => api("POST", "/v1/meeting-tokens/revoke", { token: g.token }), "revoked"],
    ["the token's expiry (eject_at_token_exp)", null, "link expired"],
    ["eject_after_elapsed", null, "Your time in this meeting is up"],
    ["a replacement (enforce_unique_user_ids)", async (g) => {
      await api("POST", "/v1/rooms/call", { properties: { enforce_unique_user_ids: true } });
      const t = await token({ room_name: "call", user_id: g.userId });
      const r = await fetch(`${BASE}/v1/rooms/call/join`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: t }) });
      if (!r.ok) throw new Error(`the second join: ${r.status}`);
    }, "from another window or device"],
    ["a lease that ran out (the page's stream gone, its media not)", async (g) => g.page.evaluate(() => window.cutStream()), "Meeting has ended"],
  ];
  for (const [what, cut, says] of paths) {
    const name = what === "the owner's Eject button" ? "button" : what.includes("ban") ? "ban" : what.replace(/\W+/g, "-");
    const props = { user_name: `Guest ${name}`, user_id: `guest-${name}` };
    // The deadlines: measured from when they fall due.
    let due = null;
    if (what.includes("eject_at_token_exp")) {
      Object.assign(props, { exp: Math.floor(Date.now() / 1000) + 12, eject_at_token_exp: true });
      due = props.exp * 1000;
    } else if (what === "eject_after_elapsed") {
      Object.assign(props, { eject_after_elapsed: 10 });
    }
    const g = await guest(host, observer, props, what);
    g.userId = props.user_id;
    if (what === "eject_after_elapsed") {
      const j = (await api("GET", "/v1/events?types=participant.joined&limit=1000")).data.find((e) => e.payload.session_id === g.sessionId);
      due = j.payload.will_eject_at * 1000;
    }
    if (what.startsWith("a lease")) due = "lease";
    const tile = host.locator(`#tiles figure[data-feed="${g.feed}"] video`);
    await tile.waitFor({ timeout: 5000 });
    check(true, `${what}: the host sees and hears the guest (first bytes ${Math.round(g.firstBytes)} ms after the page opened)`);
    await deaf(observer, true);
    check(await live(observer, g.feed), `${what}: the guest's media reaches the (deaf) observer just before the cut`);
    let at;
    if (due === "lease") {
      // Without its stream the page renews nothing; the lease runs out (6 s here) and the sweep
      // ends the session: measured from the sweep's event.
      await cut(g);
      const gone = async () => (await api("GET", `/v1/events?types=participant.left&limit=1000`)).data
        .find((e) => e.payload.session_id === g.sessionId);
      const waited = now();
      while (!(await gone())) {
        if (now() - waited > 30000) throw new Error("FAILED: the lease never ran out");
        await sleep(50);
      }
      at = now();
    } else if (cut) {
      at = now();
      await cut(g);
    } else {
      await sleep(Math.max(0, due - Date.now()));
      at = now();
    }
    const lasted = await stopped(observer, g.feed, at);
    await deaf(observer, false);
    const m = { path: what, first_bytes_ms: Math.round(g.firstBytes), media_received_after_cut_ms: Math.round(lasted) };
    console.log("measure:", JSON.stringify(m));
    check(lasted <= 2000, `${what}: the (deaf) observer stopped receiving the (hostile) guest's media ${Math.round(lasted)} ms after the cut`);
    await g.page.getByText(says).waitFor({ timeout: 5000 });
    if (what.startsWith("a replacement")) await api("POST", "/v1/rooms/call", { properties: { enforce_unique_user_ids: false } });
    await g.page.screenshot({ path: `${SHOTS}/media-cut-${name}.png` });
    check(true, `${what}: the guest's page says "${says}"`);
    await tile.waitFor({ state: "detached", timeout: 2000 });
    check(true, `${what}: the guest's tile is gone from the host's page`);
    await g.page.context().close();
  }
  await host.screenshot({ path: `${SHOTS}/media-host.png` });

  // Janus's event handler: a guest's media state in presence and in the event log, up when its
  // media flows, down when its page hangs up (it stays in the meeting).
  {
    const g = await joined({ user_name: "Shown", user_id: "shown" });
    await flowing(host, g.feed, "media state");
    const media = async () => ((await api("GET", "/v1/rooms/call/presence")).data.find((p) => p.id === g.sessionId) || {}).media;
    const events = async () => (await api("GET", "/v1/events?types=participant.media&limit=1000")).data
      .filter((e) => e.payload.session_id === g.sessionId).map((e) => e.payload.media);
    await until(async () => (await media()) === "connected", "media state: presence says the guest's media is connected");
    await g.page.evaluate(() => Media.stop(""));
    await until(async () => (await media()) === "disconnected", "media state: presence says disconnected once its page hung up");
    const seen = await events();
    check(seen.join() === "connected,disconnected", `media state: the event log has participant.media connected, then disconnected (${seen})`);
    await g.page.context().close();
  }

  // canSend: false stops the guest's media at the (deaf) observer: Janus mutes its streams (its
  // page also turns its tracks off, but a disabled track still sends black frames and silence,
  // so the bytes stop only if Janus stops relaying). true lets it through again.
  {
    const c = await guest(host, observer, { user_name: "Quiet", user_id: "quiet" }, "canSend");
    await deaf(observer, true);
    check(await live(observer, c.feed), "canSend: the guest's media reaches the observer");
    const at = now();
    const perms = (canSend) => ({ data: { [c.sessionId]: { canSend } } });
    await api("POST", "/v1/rooms/call/update-permissions", perms(false));
    const held = await stopped(observer, c.feed, at);
    console.log("measure:", JSON.stringify({ path: "update-permissions canSend: false", media_received_after_cut_ms: Math.round(held) }));
    check(held <= 2000, `canSend: false: the observer stopped receiving the guest's media ${Math.round(held)} ms after`);
    await c.page.getByText("The host turned off your microphone and camera.").waitFor({ timeout: 5000 });
    check(await c.page.locator("#mute").isDisabled(), "canSend: false: the guest's page says so and disables its Mute button");
    await api("POST", "/v1/rooms/call/update-permissions", perms(["audio"]));
    await c.page.getByText("The host turned off your camera.").waitFor({ timeout: 5000 });
    let again = false;
    for (let i = 0; i < 30 && !again; i++) again = await live(observer, c.feed);
    check(again, "canSend: [\"audio\"]: the guest's audio reaches the observer again");
    await api("POST", "/v1/rooms/call/update-permissions", perms(true));
    await deaf(observer, false);
    await c.page.locator("#media-status").waitFor({ state: "hidden", timeout: 5000 });
    check(!(await c.page.locator("#mute").isDisabled()), "canSend: true: the guest may send again");
    await c.page.context().close();
  }

  // kill -9 of Janus: it comes back empty; Gatehouse puts the rooms and the live sessions'
  // tokens back, the pages join again by themselves, a new guest's media reaches the host,
  // and the credential of a session ejected before the crash gets nobody in.
  if (process.env.JANUS_PID) {
    const old = await (await fetch(`${BASE}/v1/rooms/call/join`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" })).json();
    await api("POST", "/v1/rooms/call/eject", { ids: [old.session_id] });
    const crashed = now();
    await crashJanus();
    await host.getByText("Reconnecting to the media server").waitFor({ timeout: 5000 }).catch(() => {});
    const g = await joined({ user_name: "After the crash" });
    await flowing(host, g.feed, "after Janus's crash");
    const back = now() - crashed;
    await host.locator("#tiles figure.mine video").waitFor({ timeout: 10000 });
    check(true, `kill -9 of Janus: the host's page joined again and a new guest's media reaches it ${Math.round(back)} ms after the crash`);
    const s = (await relay("", { janus: "create" })).data.id;
    const h = (await relay(`/${s}`, { janus: "attach", plugin: "janus.plugin.videoroom" })).data.id;
    await relay(`/${s}/${h}`, { janus: "message", body: { request: "join", ptype: "publisher", room: "call", id: old.janus.id, token: old.janus.token } });
    const ev = await (await fetch(`${BASE}/janus/${s}?maxev=1`)).json();
    const answer = (Array.isArray(ev) ? ev[0] : ev).plugindata.data;
    check(typeof answer.error_code === "number", `kill -9 of Janus: an ejected session's credential is refused after the restart (${answer.error})`);
    await g.page.context().close();
  }

  // Mute: the host's own microphone track is disabled, and enabled again.
  await host.getByRole("button", { name: "Mute" }).click();
  check(await host.evaluate(() => document.querySelector("#mute").getAttribute("aria-pressed")) === "true", "mute");
  await host.getByRole("button", { name: "Unmute" }).click();

  // The room deleted: everyone's media ends (the observer, hostile and deaf, included).
  const g = await guest(host, observer, { user_name: "Last", user_id: "last" }, "the room's deletion");
  await deaf(observer, true);
  check(await live(observer, g.feed), "the room's deletion: the guest's media reaches the (deaf) observer just before");
  const at = now();
  await api("DELETE", "/v1/rooms/call");
  const lasted = await stopped(observer, g.feed, at);
  await host.getByText("Meeting has ended").waitFor({ timeout: 5000 });
  await g.page.getByText("Meeting has ended").waitFor({ timeout: 5000 });
  check(await host.locator("#tiles video").count() === 0, "the room's deletion: the host's page stopped its media");
  const m = { path: "the room's deletion", first_bytes_ms: Math.round(g.firstBytes), media_received_after_cut_ms: Math.round(lasted) };
  console.log("measure:", JSON.stringify(m));
  check(lasted <= 2000, `the room's deletion: the (deaf, hostile) observer stopped receiving ${Math.round(lasted)} ms after`);
  // Pages done with close (two cores run every page's camera and encoder).
  for (const p of [g.page, observer, host]) await p.context().close();

  // The room's exp with eject_at_room_exp, in a room of its own: everyone's session ends at
  // the second it names; the guest and the observer are hostile, the observer deaf.
  {
    const exp = Math.floor(Date.now() / 1000) + 15;
    await api("POST", "/v1/rooms", { name: "brief", properties: { exp, eject_at_room_exp: true } });
    const watcher = (await joined({ user_name: "Watcher" }, "brief")).page;
    await hostile(watcher);
    const g = await guest(watcher, watcher, { user_name: "Guest brief" }, "the room's exp", "brief");
    await deaf(watcher, true);
    check(await live(watcher, g.feed), "the room's exp: the guest's media reaches the (deaf) watcher before");
    await sleep(Math.max(0, exp * 1000 - Date.now()));
    const lasted = await stopped(watcher, g.feed, now());
    await g.page.getByText("Meeting has ended").waitFor({ timeout: 5000 });
    const m = { path: "the room's exp (eject_at_room_exp)", first_bytes_ms: Math.round(g.firstBytes), media_received_after_cut_ms: Math.round(lasted) };
    console.log("measure:", JSON.stringify(m));
    check(lasted <= 2000, `the room's exp: the (deaf, hostile) watcher stopped receiving ${Math.round(lasted)} ms after`);
    for (const p of [g.page, watcher]) await p.context().close();
  }

  // kill -9 of Gatehouse mid-call, a guest's token deadline passing while it is down: after the
  // restart its session is ended (the overdue deadline) and its media cut, while the watcher,
  // whose session lives on, keeps receiving the others.
  if (process.env.GATEHOUSE_PID) {
    await api("POST", "/v1/rooms", { name: "late" });
    const watcher = (await joined({ user_name: "Watcher" }, "late")).page;
    await hostile(watcher);
    const stays = await guest(watcher, watcher, { user_name: "Stays" }, "Gatehouse's crash", "late");
    const exp = Math.floor(Date.now() / 1000) + 12;
    const g = await guest(watcher, watcher, { user_name: "Overdue", exp, eject_at_token_exp: true }, "Gatehouse's crash", "late");
    await deaf(watcher, true);
    crashGatehouse();
    await sleep(Math.max(0, exp * 1000 - Date.now()) + 500);
    check(await live(watcher, g.feed), "Gatehouse down: the overdue guest's media still flows (nobody to cut it)");
    await restartGatehouse();
    const lasted = await stopped(watcher, g.feed, now());
    const m = { path: "a token deadline passed while Gatehouse was down (after its restart)", media_received_after_cut_ms: Math.round(lasted) };
    console.log("measure:", JSON.stringify(m));
    check(lasted <= 2000, `Gatehouse restarted: the overdue guest's media stopped ${Math.round(lasted)} ms after it was ready`);
    check(await live(watcher, stays.feed), "Gatehouse restarted: a guest still live keeps its media");
  }
}
