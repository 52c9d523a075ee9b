//! Gatehouse in front of a Janus media server (`--janus-url`): Gatehouse is the source of truth
//! for which calls exist, and this module keeps Janus in step. One VideoRoom room per live
//! Gatehouse room (the same name, `string_ids`), `publishers` = the room's `max_participants`,
//! private, with a per-room secret derived from `<data dir>/janus_secret` and an empty
//! `allowed` token list: nobody joins it without a credential Gatehouse hands out. Rooms are
//! described `gatehouse:<name>`; others in the same Janus are left alone.
//!
//! Admission: a participant admitted by a join gets a Janus credential: the room, and a token
//! derived from its session id (HMAC under the same secret), added to the room's `allowed` list;
//! it joins the VideoRoom with its Gatehouse session id as its participant id. Cutting: when a
//! session ends, however it ends (every way emits `participant.left`, which this module follows
//! in the event log), its token is removed, its participant kicked, and with the Admin API
//! every Janus session holding a handle of that participant is destroyed (its subscriptions go
//! with it, which a kick alone leaves open). Publishing: a session whose `canSend` (its
//! permissions, changed by `update-permissions`: `participant.updated`) holds audio or video
//! back has those streams muted by the moderator (VideoRoom `moderate`, per stream `mid`, found
//! through the Admin API's `handle_info`): Janus stops relaying them; allowed again, unmuted.
//!
//! The reconciler makes Janus match the store: at start, whenever a room is created, updated or
//! deleted, and every 10 s (a restarted Janus has forgotten its rooms: they come back within
//! that; a restarted Gatehouse finds whoever left meanwhile): rooms, each room's `allowed`
//! tokens (exactly those of its live sessions), and its participants (one whose id is no live
//! session of the room is kicked). What it did and what failed go to the log and `/metrics`
//! (`gatehouse_janus_*`).
//!
//! Must not: decide anything about rooms (the store does), or log a secret.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::JanusSettings;
use crate::store::{RoomCursor, Store};

/// Rooms this server made are described so.
const PREFIX: &str = "gatehouse:";
/// A full pass at least this often.
const EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    #[error("Janus at {url} is unreachable: {why}")]
    Unreachable { url: String, why: String },
    #[error("Janus refused {what}: {why}")]
    Refused { what: String, why: String },
    #[error("Janus answered {what} with something unexpected: {body}")]
    Unexpected { what: String, body: String },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// What `/metrics` reports of Janus.
#[derive(Debug, Default)]
pub struct JanusStats {
    pub up: AtomicBool,
    /// Gatehouse rooms in Janus after the last pass.
    pub rooms: AtomicU64,
    pub created: AtomicU64,
    pub destroyed: AtomicU64,
    pub updated: AtomicU64,
    pub failures: AtomicU64,
    pub passes: AtomicU64,
    /// Participants cut (their session ended) or kicked (no live session).
    pub cut: AtomicU64,
}

/// What a client needs to connect to Janus: its URL, the room, the participant id to join
/// as, and the token.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Credential {
    /// Janus's API as browsers reach it.
    pub server: String,
    pub room: String,
    /// The VideoRoom join's `id`: derived from the session (not its public id, so that another
    /// participant cannot take it before its owner joins).
    pub id: String,
    /// The VideoRoom join's `token`.
    pub token: String,
}

/// Janus's HTTP API (the "janus" transport), as Gatehouse uses it.
#[derive(Clone)]
pub struct Janus {
    http: reqwest::Client,
    url: String,
    admin_key: Option<String>,
    admin: Option<(String, String)>,
    public_url: String,
    /// The relay's client: a browser's long-poll waits up to 30 s on Janus (its `session_timeout`
    /// aside), so no 5 s limit here.
    relay: reqwest::Client,
}

/// The most of Janus's answer the relay reads (a long-poll's events, an SDP: a few KB).
const RELAY_LIMIT: usize = 1024 * 1024;
/// How long the relay waits on Janus: a long-poll lasts at most 30 s there.
const RELAY_TIMEOUT: Duration = Duration::from_secs(40);

fn transaction() -> String {
    crate::tokens::random_hex(8)
}

/// Whether permissions allow sending a Janus stream of this type ("audio", "video"): Daily's
/// `canSend` (absent or `true`: everything; `false`: nothing; a list: the kinds it names).
/// Other streams (data) are not media `canSend` speaks of.
pub fn may_send(permissions: Option<&Value>, kind: &str) -> bool {
    if kind != "audio" && kind != "video" {
        return true;
    }
    match permissions.and_then(|p| p.get("canSend")) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Array(kinds)) => kinds.iter().any(|k| k.as_str() == Some(kind)),
        _ => true,
    }
}

/// Whether permissions hold back any audio or video.
fn holds_back(permissions: Option<&Value>) -> bool {
    !may_send(permissions, "audio") || !may_send(permissions, "video")
}

impl Janus {
    /// `relayed_at`: the URL of this server's relay (`<public URL>/janus`), what browsers are
    /// handed unless `--janus-public-url` says otherwise.
    pub fn new(s: &JanusSettings, relayed_at: &str) -> Result<Janus, JanusError> {
        // reqwest is built without a TLS provider of its own (an https Janus URL uses ring's).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = |timeout: Duration| {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .map_err(|e| JanusError::Unreachable { url: s.url.clone(), why: e.to_string() })
        };
        Ok(Janus {
            http: client(Duration::from_secs(5))?,
            relay: client(RELAY_TIMEOUT)?,
            url: s.url.trim_end_matches('/').to_string(),
            admin_key: s.admin_key.clone(),
            admin: s.admin_url.clone().zip(s.admin_secret.clone()),
            public_url: s.public_url.clone().unwrap_or_else(|| relayed_at.trim_end_matches('/').to_string()),
        })
    }

    /// Relays a browser's request to Janus's API: `tail` is what follows `/janus` in its path
    /// ("", "/info", "/<session>", "/<session>/<handle>", checked by the caller) with its query.
    /// Janus's status and at most [`RELAY_LIMIT`] bytes of its answer.
    pub async fn relay(&self, post: Option<bytes::Bytes>, tail: &str) -> Result<(u16, bytes::Bytes), JanusError> {
        let url = format!("{}{tail}", self.url);
        let req = match post {
            Some(b) => self.relay.post(&url).header("content-type", "application/json").body(b),
            None => self.relay.get(&url),
        };
        let unreachable = |e: reqwest::Error| JanusError::Unreachable { url: self.url.clone(), why: e.to_string() };
        let mut res = req.send().await.map_err(unreachable)?;
        let status = res.status().as_u16();
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = res.chunk().await.map_err(unreachable)? {
            if out.len() + chunk.len() > RELAY_LIMIT {
                return Err(JanusError::Unexpected {
                    what: "a relayed request".into(),
                    body: format!("an answer of over {RELAY_LIMIT} bytes"),
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok((status, out.freeze()))
    }

    async fn call(&self, url: &str, what: &str, body: Option<Value>) -> Result<Value, JanusError> {
        let req = match body {
            Some(b) => self.http.post(url).header("content-type", "application/json").body(b.to_string()),
            None => self.http.get(url),
        };
        let unreachable = |e: reqwest::Error| JanusError::Unreachable { url: self.url.clone(), why: e.to_string() };
        let bytes = req.send().await.map_err(unreachable)?.bytes().await.map_err(unreachable)?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| JanusError::Unexpected {
            what: what.to_string(),
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        })?;
        match v["janus"].as_str() {
            Some("error") => Err(JanusError::Refused {
                what: what.to_string(),
                why: v["error"]["reason"].as_str().unwrap_or("no reason given").to_string(),
            }),
            Some(_) => Ok(v),
            None => Err(JanusError::Unexpected { what: what.to_string(), body: v.to_string() }),
        }
    }

    /// Janus's version (`GET /info`).
    pub async fn version(&self) -> Result<String, JanusError> {
        let v = self.call(&format!("{}/info", self.url), "info", None).await?;
        Ok(v["version_string"].as_str().unwrap_or("?").to_string())
    }

    /// Whether the Admin API answers with the admin secret.
    pub async fn admin_ping(&self) -> Option<Result<(), JanusError>> {
        let (url, secret) = self.admin.as_ref()?;
        let body = json!({"janus": "ping", "transaction": transaction(), "admin_secret": secret});
        Some(self.call(url, "an Admin API ping", Some(body)).await.map(|_| ()))
    }

    /// An Admin API request (`path` after the admin URL: "", "/<session>", "/<session>/<handle>").
    async fn admin(&self, path: &str, what: &str, mut body: Value) -> Result<Option<Value>, JanusError> {
        let Some((url, secret)) = &self.admin else { return Ok(None) };
        if let Some(o) = body.as_object_mut() {
            o.insert("transaction".into(), Value::from(transaction()));
            o.insert("admin_secret".into(), Value::from(secret.as_str()));
        }
        self.call(&format!("{url}{path}"), what, Some(body)).await.map(Some)
    }

    /// The VideoRoom handles in `room`: (Janus session, what the handle's `plugin_specific`
    /// info says: its participant `id`, the `streams` it publishes, ...). One walk of every
    /// Janus session's handles through the Admin API.
    async fn handles_in(&self, room: &str) -> Result<Vec<(u64, Value)>, JanusError> {
        let Some(list) = self.admin("", "listing sessions", json!({"janus": "list_sessions"})).await? else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for session in list["sessions"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
            let Some(handles) = self
                .admin(&format!("/{session}"), "listing handles", json!({"janus": "list_handles"}))
                .await
                .ok()
                .flatten()
            else {
                continue;
            };
            for handle in handles["handles"].as_array().into_iter().flatten().filter_map(Value::as_u64) {
                let info = self
                    .admin(&format!("/{session}/{handle}"), "a handle's info", json!({"janus": "handle_info"}))
                    .await;
                let Ok(Some(mut info)) = info else { continue };
                let p = info["info"]["plugin_specific"].take();
                if p["room"].as_str() == Some(room) {
                    found.push((session, p));
                }
            }
        }
        Ok(found)
    }

    /// The Janus sessions holding a VideoRoom handle of participant `id` in `room` (looked up
    /// before the participant is kicked: a kicked handle no longer names its room).
    async fn sessions_of(&self, room: &str, id: &str) -> Result<Vec<u64>, JanusError> {
        let mut sessions: Vec<u64> = self
            .handles_in(room)
            .await?
            .into_iter()
            .filter(|(_, p)| p["id"].as_str() == Some(id))
            .map(|(s, _)| s)
            .collect();
        sessions.dedup();
        Ok(sessions)
    }

    /// Destroys these Janus sessions (and every handle in them).
    async fn destroy_sessions(&self, sessions: &[u64]) {
        for s in sessions {
            let _ = self.admin(&format!("/{s}"), "destroying a session", json!({"janus": "destroy_session"})).await;
        }
    }

    /// A session with a VideoRoom handle (destroyed by [`Janus::close`]).
    async fn open(&self) -> Result<(u64, u64), JanusError> {
        let s = self
            .call(&self.url, "a new session", Some(json!({"janus": "create", "transaction": transaction()})))
            .await?;
        let session = s["data"]["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Unexpected { what: "a new session".into(), body: s.to_string() })?;
        let body = json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": transaction()});
        let h = self.call(&format!("{}/{session}", self.url), "attaching VideoRoom", Some(body)).await?;
        let handle = h["data"]["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Unexpected { what: "attaching VideoRoom".into(), body: h.to_string() })?;
        Ok((session, handle))
    }

    async fn close(&self, session: u64) {
        let body = json!({"janus": "destroy", "transaction": transaction()});
        let _ = self.call(&format!("{}/{session}", self.url), "closing the session", Some(body)).await;
    }

    /// A synchronous VideoRoom request; its `plugindata.data`.
    async fn videoroom(&self, (session, handle): (u64, u64), what: &str, mut body: Value) -> Result<Value, JanusError> {
        if let (Some(k), Some(o)) = (&self.admin_key, body.as_object_mut()) {
            o.insert("admin_key".into(), Value::from(k.as_str()));
        }
        let msg = json!({"janus": "message", "transaction": transaction(), "body": body});
        let v = self.call(&format!("{}/{session}/{handle}", self.url), what, Some(msg)).await?;
        let data = v["plugindata"]["data"].clone();
        if let Some(e) = data.get("error") {
            return Err(JanusError::Refused { what: what.to_string(), why: e.as_str().unwrap_or("?").to_string() });
        }
        Ok(data)
    }
}

/// `config check`'s lines about Janus; `Err` when it does not answer.
pub async fn check(s: &JanusSettings) -> Result<String, JanusError> {
    let janus = Janus::new(s, "")?;
    let version = janus.version().await?;
    let mut out = format!("janus: {} answers, version {version}\n", s.url);
    match janus.admin_ping().await {
        Some(Ok(())) => out.push_str("janus: the Admin API answers with the admin secret\n"),
        Some(Err(e)) => return Err(e),
        None => out.push_str("janus: no --janus-admin-url: sessions cannot be ended from here\n"),
    }
    Ok(out)
}

/// The secret Janus rooms are made with: 256 random bits kept in `<data dir>/janus_secret`.
pub fn room_secret_key(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("janus_secret");
    match std::fs::read_to_string(&path) {
        // Made anew only when there is none: another key would lose every room made with this one.
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {
            return Err(std::io::Error::other(format!("{} is empty; delete it to make a new one", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key = crate::tokens::random_hex(32);
    crate::disk::write_atomic(&path, key.as_bytes())?;
    Ok(key)
}

/// Keeps Janus's VideoRoom rooms in step with the store's rooms.
pub struct Mirror {
    janus: Janus,
    store: Store,
    clock: crate::clock::SharedClock,
    secret: String,
    pub stats: Arc<JanusStats>,
    /// Cuts under way at once (a room deleted with thousands present must not open thousands
    /// of scans of Janus's sessions together).
    cutting: Arc<tokio::sync::Semaphore>,
    /// What Janus's event handler told of the live sessions' media.
    media: std::sync::Mutex<MediaState>,
}

/// The publishing handles Janus's event handler named, and whether each session's media is
/// connected. Entries go with their handle, their Janus session, or the Gatehouse session's
/// end; at most [`MAX_HANDLES`] handles are followed.
#[derive(Debug, Default)]
struct MediaState {
    /// Janus handle → (Janus session, room, Gatehouse session): a VideoRoom publisher's.
    handles: std::collections::HashMap<u64, (u64, String, String)>,
    /// Gatehouse session → whether its media (its publisher's PeerConnection) is up.
    connected: std::collections::HashMap<String, bool>,
}

impl MediaState {
    /// Handle `handle` is gone (detached, or its Janus session ended): its session's media is
    /// down. The change, if its media was up.
    fn drop_handle(&mut self, handle: u64) -> Option<MediaChange> {
        let (_, room, session) = self.handles.remove(&handle)?;
        (self.connected.insert(session.clone(), false) == Some(true)).then_some(MediaChange {
            room,
            session,
            connected: false,
        })
    }
}

/// Most publishing handles followed at once (far beyond the participants one Janus serves).
const MAX_HANDLES: usize = 100_000;

/// A session's media went up or down, as Janus's event handler told it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaChange {
    pub room: String,
    pub session: String,
    pub connected: bool,
}

impl Mirror {
    pub fn new(janus: Janus, store: Store, clock: crate::clock::SharedClock, secret: String) -> Mirror {
        Mirror {
            janus,
            store,
            clock,
            secret,
            stats: Arc::default(),
            cutting: Arc::new(tokio::sync::Semaphore::new(8)),
            media: Default::default(),
        }
    }

    /// What Janus told of the media (a poisoned lock still holds usable maps).
    fn media(&self) -> std::sync::MutexGuard<'_, MediaState> {
        self.media.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Session `session`'s media as Janus last told it: `Some("connected")`,
    /// `Some("disconnected")`, or `None` when Janus has said nothing of it (since this start).
    pub fn media_of(&self, session: &str) -> Option<&'static str> {
        let m = self.media();
        m.connected.get(session).map(|c| if *c { "connected" } else { "disconnected" })
    }

    /// Learns from a batch of Janus's event handler's events (`janus.eventhandler.sampleevh`):
    /// which handle publishes for which Gatehouse session (VideoRoom's `joined`), and when
    /// each one's PeerConnection goes up or down (WebRTC `webrtcup`, `hangup`; the handle
    /// detached, the Janus session gone). A participant joining a Gatehouse room under an id no
    /// live session has is kicked at once. Answers what changed.
    pub fn learn(self: &Arc<Self>, events: &[Value]) -> Vec<MediaChange> {
        let mut changes = Vec::new();
        for e in events {
            let (Some(kind), janus_session) = (e["type"].as_u64(), e["session_id"].as_u64()) else { continue };
            let handle = e["handle_id"].as_u64();
            let body = &e["event"];
            match kind {
                // A plugin's event: VideoRoom's `joined` names the room and the participant id.
                64 if body["plugin"] == "janus.plugin.videoroom" && body["data"]["event"] == "joined" => {
                    let data = &body["data"];
                    let (Some(room), Some(id), Some(handle), Some(js)) =
                        (data["room"].as_str(), data["id"].as_str(), handle, janus_session)
                    else {
                        continue;
                    };
                    match self.session_of(room, id) {
                        Some(session) => {
                            let mut m = self.media();
                            if m.handles.len() < MAX_HANDLES {
                                m.handles.insert(handle, (js, room.to_string(), session));
                            }
                        }
                        None if self.store.room(room).ok().flatten().is_some() => {
                            tracing::warn!(room = %room, participant = %id, "janus: a participant joined with no live Gatehouse session; kicking it");
                            let (me, room, id) = (self.clone(), room.to_string(), id.to_string());
                            tokio::spawn(async move {
                                if let Ok(h) = me.janus.open().await {
                                    me.kick_stranger(h, &room, &id).await;
                                    me.janus.close(h.0).await;
                                }
                            });
                        }
                        None => {}
                    }
                }
                // WebRTC state, subtype 6: the PeerConnection is up, or hung up.
                16 if e["subtype"].as_u64() == Some(6) => {
                    let up = match body["connection"].as_str() {
                        Some("webrtcup") => true,
                        Some("hangup") => false,
                        _ => continue,
                    };
                    let Some(handle) = handle else { continue };
                    let mut m = self.media();
                    let Some((_, room, session)) = m.handles.get(&handle).cloned() else { continue };
                    if m.connected.insert(session.clone(), up) != Some(up) {
                        changes.push(MediaChange { room, session, connected: up });
                    }
                }
                // The handle detached, or the Janus session ended: its media is down.
                2 if body["name"] == "detached" => {
                    let Some(handle) = handle else { continue };
                    changes.extend(self.media().drop_handle(handle));
                }
                1 if matches!(body["name"].as_str(), Some("destroyed" | "timeout")) => {
                    let Some(js) = janus_session else { continue };
                    let mut m = self.media();
                    let gone: Vec<u64> = m.handles.iter().filter(|(_, v)| v.0 == js).map(|(h, _)| *h).collect();
                    for h in gone {
                        changes.extend(m.drop_handle(h));
                    }
                }
                _ => {}
            }
        }
        changes
    }

    /// The live session of `room` whose VideoRoom id is `id`.
    fn session_of(&self, room: &str, id: &str) -> Option<String> {
        let live = self.store.live();
        let now = self.clock.now_ms();
        live.present_in(room)
            .iter()
            .filter(|e| !e.session.is_over(now))
            .map(|e| e.session.id.clone())
            .find(|s| self.media_id(s) == id)
    }

    /// A session ended: what was known of its media goes.
    fn forget(&self, session: &str) {
        let mut m = self.media();
        m.connected.remove(session);
        m.handles.retain(|_, v| v.2 != session);
    }

    /// The Janus client (the relay uses it).
    pub fn janus(&self) -> &Janus {
        &self.janus
    }

    /// The secret of room `name` (Janus needs it to edit or destroy the room).
    fn secret_of(&self, name: &str) -> String {
        crate::tokens::hmac_hex(self.secret.as_bytes(), name.as_bytes())
    }

    /// The token of Gatehouse session `session` (what Janus's `allowed` list holds for it).
    fn token_of(&self, session: &str) -> String {
        self.secret_of(&format!("token:{session}"))
    }

    /// The VideoRoom participant id of Gatehouse session `session`.
    fn media_id(&self, session: &str) -> String {
        let mut id = self.secret_of(&format!("id:{session}"));
        id.truncate(32);
        id
    }

    /// Makes Gatehouse room `name` in Janus: private, sized, closed to anyone without a token.
    async fn create_room(&self, h: (u64, u64), name: &str, publishers: u64) -> Result<Value, JanusError> {
        let body = json!({
            "request": "create", "room": name, "description": format!("{PREFIX}{name}"),
            "publishers": publishers, "is_private": true, "secret": self.secret_of(name),
            "allowed": [], "permanent": false,
        });
        self.janus.videoroom(h, &format!("creating room '{name}'"), body).await
    }

    /// Creates room `name` in Janus now if it is live in Gatehouse and missing there (a join
    /// right after the room was made need not wait for the next pass).
    async fn ensure_room(&self, h: (u64, u64), name: &str) -> Result<(), JanusError> {
        let now = self.clock.now_secs();
        let Some(room) = self.store.room(name)?.filter(|r| !r.is_expired(now)) else { return Ok(()) };
        match self.create_room(h, name, room.max_participants()).await {
            // Made meanwhile by a pass: as good.
            Ok(_) | Err(JanusError::Refused { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Lets session `session` of `room` into the room's VideoRoom room: its credential. `None`
    /// when the session ended meanwhile (then its token is taken back).
    pub async fn admit(self: &Arc<Self>, room: &str, session: &str) -> Result<Option<Credential>, JanusError> {
        let token = self.token_of(session);
        let h = self.janus.open().await?;
        let add = || json!({"request": "allowed", "room": room, "secret": self.secret_of(room), "action": "add", "allowed": [token]});
        let what = format!("admitting a participant to '{room}'");
        let mut added = self.janus.videoroom(h, &what, add()).await;
        if matches!(added, Err(JanusError::Refused { .. })) {
            // No such room yet: make it, and try again.
            let ensured = self.ensure_room(h, room).await;
            added = match ensured {
                Ok(()) => self.janus.videoroom(h, &what, add()).await,
                Err(e) => Err(e),
            };
        }
        self.janus.close(h.0).await;
        added?;
        // Cut before the token was added (an eject racing the join): take it back.
        if self.store.session(session).is_none_or(|e| e.waiting) {
            self.cut(room, session).await?;
            return Ok(None);
        }
        // Admitted with canSend holding something back: muted as soon as it publishes.
        let permissions = self.store.session(session).and_then(|e| e.session.permissions.clone());
        if holds_back(permissions.as_ref()) {
            self.hold_back_when_publishing(room, session, permissions);
        }
        let id = self.media_id(session);
        Ok(Some(Credential { server: self.janus.public_url.clone(), room: room.to_string(), id, token }))
    }

    /// A participant admitted with `canSend` holding something back publishes a moment after
    /// its join: its streams are moderated as soon as Janus lists them (looked for every 250
    /// ms for 15 s; one that publishes later is muted by the next pass, within 10 s).
    fn hold_back_when_publishing(self: &Arc<Self>, room: &str, session: &str, permissions: Option<Value>) {
        let (me, room) = (self.clone(), room.to_string());
        let sessions = vec![(session.to_string(), permissions)];
        tokio::spawn(async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if me.store.session(&sessions[0].0).is_none() {
                    return;
                }
                let Ok(_turn) = me.cutting.clone().acquire_owned().await else { return };
                match me.moderate(&room, &sessions).await {
                    Ok(0) => continue,
                    Ok(streams) => {
                        tracing::info!(room = %room, streams, "janus: publishing held to canSend from its start");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, room = %room, "janus: could not hold a new publisher to canSend (the next pass tries again)");
                        return;
                    }
                }
            }
        });
    }

    /// Ends session `session`'s media in `room`: its token removed first (it gets nothing back
    /// in, whatever fails after), its participant kicked, its Janus sessions destroyed (through
    /// the Admin API, best effort: the next pass kicks whatever is left).
    pub async fn cut(&self, room: &str, session: &str) -> Result<(), JanusError> {
        self.forget(session);
        let id = self.media_id(session);
        let secret = self.secret_of(room);
        let h = self.janus.open().await?;
        let body = json!({"request": "allowed", "room": room, "secret": secret, "action": "remove", "allowed": [self.token_of(session)]});
        let removed = self.janus.videoroom(h, &format!("revoking a token in '{room}'"), body).await;
        // Before the kick: a kicked handle no longer says which room it was in.
        let holding = match self.janus.sessions_of(room, &id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, room = %room, "janus: cannot find the participant's Janus sessions; kicking only");
                Vec::new()
            }
        };
        // Not there (it never connected, or the room is gone): nothing to kick.
        let kick = json!({"request": "kick", "room": room, "secret": secret, "id": id});
        let _ = self.janus.videoroom(h, &format!("kicking from '{room}'"), kick).await;
        self.janus.close(h.0).await;
        self.janus.destroy_sessions(&holding).await;
        self.stats.cut.fetch_add(1, Ordering::Relaxed);
        tracing::info!(room = %room, session = %session, janus_sessions = holding.len(), "janus: media cut (the session ended)");
        match removed {
            Err(JanusError::Refused { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Holds these sessions' publishing in `room` to what their permissions' `canSend` allows:
    /// each audio or video stream they publish is muted by the moderator (Janus stops relaying
    /// it) unless allowed, and unmuted if allowed. One walk of Janus's handles for them all.
    /// How many streams it moderated.
    pub async fn moderate(&self, room: &str, sessions: &[(String, Option<Value>)]) -> Result<usize, JanusError> {
        let handles = self.janus.handles_in(room).await?;
        let secret = self.secret_of(room);
        let mut opened = None;
        let (mut done, mut result) = (0, Ok(()));
        for (session, permissions) in sessions {
            let id = self.media_id(session);
            let streams = handles
                .iter()
                .filter(|(_, p)| p["id"].as_str() == Some(id.as_str()))
                .flat_map(|(_, p)| p["streams"].as_array().cloned().unwrap_or_default());
            for stream in streams {
                let (Some(mid), Some(kind)) = (stream["mid"].as_str(), stream["type"].as_str()) else { continue };
                let h = match opened {
                    Some(h) => h,
                    None => *opened.insert(self.janus.open().await?),
                };
                let mute = !may_send(permissions.as_ref(), kind);
                let body =
                    json!({"request": "moderate", "room": room, "secret": secret, "id": id, "mid": mid, "mute": mute});
                match self.janus.videoroom(h, &format!("moderating a participant in '{room}'"), body).await {
                    Ok(_) => done += 1,
                    Err(e) => result = Err(e),
                }
            }
        }
        if let Some(h) = opened {
            self.janus.close(h.0).await;
        }
        result.map(|()| done)
    }

    /// Kicks participant `id` (no live session has it) and destroys its Janus sessions.
    async fn kick_stranger(&self, h: (u64, u64), room: &str, id: &str) {
        let holding = self.janus.sessions_of(room, id).await.unwrap_or_default();
        let kick = json!({"request": "kick", "room": room, "secret": self.secret_of(room), "id": id});
        let _ = self.janus.videoroom(h, &format!("kicking from '{room}'"), kick).await;
        self.janus.destroy_sessions(&holding).await;
        self.stats.cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes room `name`'s allowed tokens those of its live sessions, and kicks (and cuts) any
    /// participant that is no live session of it.
    async fn sync_room(&self, h: (u64, u64), name: &str) -> Result<(), JanusError> {
        let secret = self.secret_of(name);
        let read = json!({"request": "allowed", "room": name, "secret": secret, "action": "add", "allowed": []});
        let current = self.janus.videoroom(h, &format!("reading the tokens of '{name}'"), read).await?;
        // Who is live is read after what Janus holds: a token a join added since is then live.
        let live = self.store.live();
        let now = self.clock.now_ms();
        let sessions: std::collections::BTreeSet<String> =
            live.present_in(name).iter().filter(|e| !e.session.is_over(now)).map(|e| e.session.id.clone()).collect();
        let held: std::collections::BTreeSet<String> =
            current["allowed"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(String::from)).collect();
        let wanted: std::collections::BTreeSet<String> = sessions.iter().map(|s| self.token_of(s)).collect();
        let extra: Vec<&String> = held.difference(&wanted).collect();
        let missing: Vec<&String> = wanted.difference(&held).collect();
        if !extra.is_empty() {
            let body =
                json!({"request": "allowed", "room": name, "secret": secret, "action": "remove", "allowed": extra});
            self.janus.videoroom(h, &format!("revoking tokens in '{name}'"), body).await?;
        }
        if !missing.is_empty() {
            let body =
                json!({"request": "allowed", "room": name, "secret": secret, "action": "add", "allowed": missing});
            self.janus.videoroom(h, &format!("restoring tokens in '{name}'"), body).await?;
        }
        let ids: BTreeMap<String, &String> = sessions.iter().map(|s| (self.media_id(s), s)).collect();
        let list = json!({"request": "listparticipants", "room": name, "secret": secret});
        let present = self.janus.videoroom(h, &format!("listing the participants of '{name}'"), list).await?;
        let mut held_back = Vec::new();
        for p in present["participants"].as_array().into_iter().flatten() {
            let Some(id) = p["id"].as_str() else { continue };
            let Some(session) = ids.get(id) else {
                tracing::warn!(room = %name, participant = %id, "janus: a participant with no live Gatehouse session; kicking it");
                self.kick_stranger(h, name, id).await;
                continue;
            };
            // A publisher whose canSend holds something back (it may have published since the
            // last update, or Janus restarted): muted again.
            let permissions = live.get(session.as_str()).and_then(|e| e.session.permissions.clone());
            if p["publisher"].as_bool() == Some(true) && holds_back(permissions.as_ref()) {
                held_back.push(((*session).clone(), permissions));
            }
        }
        if !held_back.is_empty() {
            self.moderate(name, &held_back).await?;
        }
        Ok(())
    }

    /// The live rooms and the publishers each allows.
    fn wanted(&self) -> Result<BTreeMap<String, u64>, JanusError> {
        let now = self.clock.now_secs();
        let mut out = BTreeMap::new();
        let mut cursor = RoomCursor::First;
        loop {
            let page = self.store.list_rooms(1000, &cursor)?.unwrap_or_default();
            let Some(last) = page.last() else { break };
            cursor = RoomCursor::After(last.id);
            for r in page.iter().filter(|r| !r.is_expired(now)) {
                out.insert(r.name.clone(), r.max_participants());
            }
            if page.len() < 1000 {
                break;
            }
        }
        Ok(out)
    }

    /// One pass: creates what is missing, destroys what should not be there, fixes the size.
    async fn reconcile(&self) -> Result<(), JanusError> {
        let wanted = self.wanted()?;
        let h = self.janus.open().await?;
        let result = self.reconcile_with(h, &wanted).await;
        self.janus.close(h.0).await;
        result
    }

    async fn reconcile_with(&self, h: (u64, u64), wanted: &BTreeMap<String, u64>) -> Result<(), JanusError> {
        let list = self.janus.videoroom(h, "listing rooms", json!({"request": "list"})).await?;
        let mut have: BTreeMap<String, u64> = BTreeMap::new();
        for r in list["list"].as_array().into_iter().flatten() {
            let (Some(name), Some(desc)) = (r["room"].as_str(), r["description"].as_str()) else { continue };
            if desc.starts_with(PREFIX) {
                have.insert(name.to_string(), r["max_publishers"].as_u64().unwrap_or(0));
            }
        }
        for (name, publishers) in wanted {
            match have.get(name) {
                None => {
                    self.create_room(h, name, *publishers).await?;
                    self.stats.created.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(room = %name, publishers, "janus: room created");
                }
                Some(p) if p != publishers => {
                    let body = json!({"request": "edit", "room": name, "secret": self.secret_of(name), "new_publishers": publishers});
                    self.janus.videoroom(h, &format!("resizing room '{name}'"), body).await?;
                    self.stats.updated.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(room = %name, publishers, "janus: room resized");
                }
                Some(_) => {}
            }
        }
        // One room's trouble (a Janus error, a timeout) does not keep the others out of step.
        let mut first_error = None;
        for name in wanted.keys() {
            if let Err(e) = self.sync_room(h, name).await {
                tracing::warn!(error = %e, room = %name, "janus: could not bring a room's tokens and participants in step");
                first_error.get_or_insert(e);
            }
        }
        for name in have.keys().filter(|n| !wanted.contains_key(*n)) {
            // Its participants' Janus sessions first: once the room is gone, their handles no
            // longer say which room they were in, and their subscriptions would stay open.
            let list = json!({"request": "listparticipants", "room": name, "secret": self.secret_of(name)});
            if let Ok(present) = self.janus.videoroom(h, &format!("listing the participants of '{name}'"), list).await {
                for id in present["participants"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_str()) {
                    let holding = self.janus.sessions_of(name, id).await.unwrap_or_default();
                    self.janus.destroy_sessions(&holding).await;
                }
            }
            let body = json!({"request": "destroy", "room": name, "secret": self.secret_of(name)});
            self.janus.videoroom(h, &format!("destroying room '{name}'"), body).await?;
            self.stats.destroyed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(room = %name, "janus: room destroyed (no such live room in Gatehouse)");
        }
        self.stats.rooms.store(wanted.len() as u64, Ordering::Relaxed);
        first_error.map_or(Ok(()), Err)
    }

    /// Reconciles until `shutdown`: at start, after each room change, every [`EVERY`].
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut durable = self.store.watch_durable();
        let mut seen = self.store.durable_seq();
        let kinds = [
            "room.created".to_string(),
            "room.updated".to_string(),
            "room.deleted".to_string(),
            "participant.left".to_string(),
            "participant.updated".to_string(),
        ];
        let mut was_up = None;
        loop {
            self.stats.passes.fetch_add(1, Ordering::Relaxed);
            match self.reconcile().await {
                Ok(()) => {
                    if was_up != Some(true) {
                        tracing::info!(
                            rooms = self.stats.rooms.load(Ordering::Relaxed),
                            "janus: in step with Gatehouse's rooms"
                        );
                    }
                    was_up = Some(true);
                    self.stats.up.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    self.stats.up.store(false, Ordering::Relaxed);
                    if was_up != Some(false) {
                        tracing::error!(error = %e, "janus: cannot keep its rooms in step (retrying every 10 s, and at each room change)");
                    }
                    was_up = Some(false);
                }
            }
            // Until a room changes (or the periodic pass is due).
            let deadline = tokio::time::Instant::now() + EVERY;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = shutdown.changed() => return,
                    changed = durable.changed() => if changed.is_err() { return },
                }
                let page = match self.store.events(seen, 1000, Some(&kinds[..])) {
                    Ok(p) => p,
                    Err(_) => {
                        seen = self.store.durable_seq(); // compacted past: a full pass covers it
                        break;
                    }
                };
                seen = page.next_after;
                let mut rooms_changed = false;
                // Permission changes, by room: one walk of Janus's handles per room.
                let mut updated: BTreeMap<String, Vec<(String, Option<Value>)>> = BTreeMap::new();
                for e in &page.events {
                    let left = &*e.kind == "participant.left";
                    if !left && &*e.kind != "participant.updated" {
                        rooms_changed = true;
                        continue;
                    }
                    let v: Value = serde_json::from_str(&e.envelope).unwrap_or(Value::Null);
                    let (Some(room), Some(session)) =
                        (v["payload"]["room"].as_str(), v["payload"]["session_id"].as_str())
                    else {
                        continue;
                    };
                    if !left {
                        let permissions = v["payload"].get("permissions").cloned();
                        updated.entry(room.to_string()).or_default().push((session.to_string(), permissions));
                        continue;
                    }
                    // Cut at once, each on its own: one slow cut does not hold up the next.
                    let (me, room, session) = (self.clone(), room.to_string(), session.to_string());
                    let cutting = self.cutting.clone();
                    tokio::spawn(async move {
                        let Ok(_turn) = cutting.acquire_owned().await else { return };
                        if let Err(e) = me.cut(&room, &session).await {
                            me.stats.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, room = %room, "janus: could not cut a participant's media (the next pass tries again)");
                        }
                    });
                }
                for (room, sessions) in updated {
                    let (me, cutting) = (self.clone(), self.cutting.clone());
                    tokio::spawn(async move {
                        let Ok(_turn) = cutting.acquire_owned().await else { return };
                        match me.moderate(&room, &sessions).await {
                            Ok(streams) => {
                                tracing::info!(room = %room, sessions = sessions.len(), streams, "janus: publishing held to canSend")
                            }
                            Err(e) => {
                                me.stats.failures.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(error = %e, room = %room, "janus: could not hold publishing to canSend (the next pass tries again)");
                            }
                        }
                    });
                }
                if rooms_changed {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{holds_back, may_send};
    use serde_json::json;

    #[test]
    fn can_send_as_daily_words_it() {
        assert!(may_send(None, "audio") && may_send(Some(&json!({})), "video"), "absent: everything");
        assert!(may_send(Some(&json!({"canSend": true})), "video"));
        assert!(!may_send(Some(&json!({"canSend": false})), "audio"));
        let audio_only = json!({"canSend": ["audio", "screenVideo"]});
        assert!(may_send(Some(&audio_only), "audio") && !may_send(Some(&audio_only), "video"));
        assert!(may_send(Some(&json!({"canSend": false})), "data"), "data is no media canSend speaks of");
        assert!(holds_back(Some(&audio_only)) && !holds_back(Some(&json!({"canSend": ["video", "audio"]}))));
    }
}
