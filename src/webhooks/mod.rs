//! Webhook delivery (ARCHITECTURE.md, invariant 9): one worker per webhook, each with its own cursor,
//! one request in flight, in order, at least once. The cursor moves only after a 2xx (or past
//! events the webhook does not subscribe to); a `FAILED` webhook keeps its cursor, so
//! re-activating it resumes without loss. The only code that makes outbound HTTP calls.
//!
//! Must not: write state except through the store's writer commands.

mod client;
pub mod policy;
pub mod signing;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use client::{is_private, Outbound, OutboundError, TIMEOUT};

use crate::clock::SharedClock;
use crate::store::{AttemptRecord, Delivery, Event, Progress, Store, WebhookProgress, WebhookRecord};

/// Delivered-cursor updates are batched: written after this many events or this long.
const PERSIST_EVERY: u64 = 256;
const PERSIST_AFTER: Duration = Duration::from_millis(200);
/// Events read from the log at a time.
const PAGE: usize = 256;
/// A retry wait looks at the clock at least this often (the test clock can jump).
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// Why a webhook's URL failed its test POST.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("hmac is not base64")]
    BadSecret,
    #[error(transparent)]
    Request(#[from] OutboundError),
    #[error("the test POST got HTTP {0}")]
    Status(u16),
}

/// The test POST a webhook URL must answer with 2xx when created or updated (as Daily does).
pub async fn probe(
    out: &Outbound,
    url: &str,
    hmac: &str,
    basic_auth: Option<&str>,
    now_s: i64,
) -> Result<(), ProbeError> {
    let key = signing::secret_key(hmac).ok_or(ProbeError::BadSecret)?;
    let body = r#"{"test":"test"}"#.to_string();
    let id = format!("test_{}", uuid::Uuid::new_v4().simple());
    let headers = signing::headers(&key, &id, now_s, body.as_bytes());
    let r = out.post(url, basic_auth, &headers, body).await?;
    if (200..300).contains(&r.status) {
        Ok(())
    } else {
        Err(ProbeError::Status(r.status))
    }
}

/// Keeps one worker per webhook, starting and stopping them as webhooks come and go.
pub async fn run(store: Store, out: Outbound, clock: SharedClock, mut shutdown: watch::Receiver<bool>) {
    let mut changed = store.watch_webhooks();
    let mut workers: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        match store.webhooks() {
            Ok(list) => {
                workers.retain(|id, h| {
                    let keep = list.iter().any(|w| &w.uuid == id) && !h.is_finished();
                    if !keep {
                        h.abort();
                    }
                    keep
                });
                for w in list {
                    workers.entry(w.uuid.clone()).or_insert_with(|| {
                        let worker =
                            Worker { store: store.clone(), out: out.clone(), clock: clock.clone(), id: w.uuid };
                        tokio::spawn(worker.run(shutdown.clone()))
                    });
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list webhooks"),
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    for (_, h) in workers {
        h.abort();
    }
}

struct Worker {
    store: Store,
    out: Outbound,
    clock: SharedClock,
    id: String,
}

/// What a worker knows between reloads of its webhook.
struct Position {
    w: WebhookRecord,
    /// Delivered up to here (in memory).
    cursor: u64,
    pushed_since: u64,
    persisted_at: Instant,
}

impl Worker {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut config = self.store.watch_webhooks();
        let mut durable = self.store.watch_durable();
        let Some(mut pos) = self.load() else { return };
        loop {
            if *shutdown.borrow() {
                let _ = self.persist(&mut pos).await;
                return;
            }
            if pos.w.state != "ACTIVE" {
                tokio::select! {
                    _ = config.changed() => {}
                    _ = shutdown.changed() => {}
                }
                match self.load() {
                    Some(p) => pos = p,
                    None => return,
                }
                continue;
            }
            let types = (!pos.w.event_types.is_empty()).then(|| pos.w.event_types.clone());
            let page = match self.store.events(pos.cursor, PAGE, types.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(webhook = %self.id, error = %e, "cannot read the event log");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if page.events.is_empty() {
                // Nothing to send: remember how far we looked, then wait for news.
                pos.cursor = pos.cursor.max(page.next_after);
                if !self.persist(&mut pos).await {
                    continue;
                }
                tokio::select! {
                    _ = durable.changed() => {}
                    _ = config.changed() => if let Some(p) = self.load() { pos = p } else { return },
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            for e in &page.events {
                match self.deliver(&mut pos, e, &mut config, &mut shutdown).await {
                    Step::Next => {}
                    Step::Reload => {
                        match self.load() {
                            Some(p) => pos = p,
                            None => return,
                        }
                        break;
                    }
                }
            }
            if pos.cursor.saturating_sub(pos.w.cursor) >= PERSIST_EVERY || pos.persisted_at.elapsed() >= PERSIST_AFTER {
                self.persist(&mut pos).await;
            }
        }
    }

    fn load(&self) -> Option<Position> {
        let w = self.store.webhook(&self.id).ok().flatten()?;
        Some(Position { cursor: w.cursor, w, pushed_since: 0, persisted_at: Instant::now() })
    }

    /// Writes the delivered cursor (no sync forced: losing it only means a redelivery).
    /// False when the API moved the cursor meanwhile (replay): `pos` now follows it.
    async fn persist(&self, pos: &mut Position) -> bool {
        if pos.cursor == pos.w.cursor {
            return true;
        }
        let d = Delivery::Delivered { seq: pos.cursor, pushed: pos.pushed_since > 0 };
        pos.pushed_since = 0;
        pos.persisted_at = Instant::now();
        self.report(pos, d).await
    }

    /// Sends a report to the writer; false if it was stale (and `pos` now follows the store).
    async fn report(&self, pos: &mut Position, delivery: Delivery) -> bool {
        let cmd = WebhookProgress {
            id: self.id.clone(),
            expect_cursor: pos.w.cursor,
            expect_version: pos.w.version,
            delivery,
        };
        match self.store.submit_wait(cmd).await {
            Ok(Progress::Applied(w)) => {
                let ahead = pos.cursor;
                pos.w = *w;
                pos.cursor = ahead.max(pos.w.cursor);
                true
            }
            Ok(Progress::Stale(w)) => {
                pos.cursor = w.cursor;
                pos.w = *w;
                false
            }
            Ok(Progress::NoWebhook) => false,
            Err(e) => {
                tracing::warn!(webhook = %self.id, error = %e, "cannot record delivery progress");
                false
            }
        }
    }

    /// Tries one event until it is delivered, the webhook gives up, or its config changes.
    async fn deliver(
        &self,
        pos: &mut Position,
        e: &Event,
        config: &mut watch::Receiver<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Step {
        let seq = e.seq;
        let env: &str = &e.envelope;
        let id = crate::events::event_id(&crate::events::domain8(&self.store.domain_id()), seq);
        loop {
            let Some(key) = signing::secret_key(&pos.w.hmac) else {
                return Step::Reload;
            };
            let started = Instant::now();
            let headers = signing::headers(&key, &id, self.clock.now_secs(), env.as_bytes());
            let result = self.out.post(&pos.w.url, pos.w.basic_auth.as_deref(), &headers, env.to_string()).await;
            let (status, retry_after, detail) = match result {
                Ok(r) if (200..300).contains(&r.status) => {
                    pos.cursor = seq;
                    pos.pushed_since += 1;
                    return Step::Next;
                }
                Ok(r) => (r.status, r.retry_after, r.snippet),
                Err(e) => (0, None, e.to_string()),
            };
            // Everything before this event is delivered: record that first.
            if !self.persist(pos).await {
                return Step::Reload;
            }
            let attempt = AttemptRecord {
                seq,
                at_ms: self.clock.now_ms(),
                status,
                duration_ms: started.elapsed().as_millis() as u64,
                detail,
            };
            if !self.report(pos, Delivery::Failed(attempt)).await {
                return Step::Reload;
            }
            if status == 410 {
                self.report(
                    pos,
                    Delivery::StateChange { state: "INACTIVE", reason: "the receiver answered 410 Gone".into() },
                )
                .await;
                return Step::Reload;
            }
            let failing_for = pos.w.first_failure_ms.map_or(0, |f| self.clock.now_ms() - f);
            // 429 is backpressure, not breakage: wait as asked without tripping the breaker.
            let failures = if status == 429 { pos.w.failed_count.max(1) } else { pos.w.failed_count };
            match policy::after_failure(&pos.w.retry_type, failures, failing_for, retry_after) {
                policy::Decision::GiveUp => {
                    let reason = format!("{} consecutive failed attempts", pos.w.failed_count);
                    self.report(pos, Delivery::StateChange { state: "FAILED", reason }).await;
                    tracing::warn!(webhook = %self.id, "webhook marked FAILED; update it to resume from its cursor");
                    return Step::Reload;
                }
                policy::Decision::RetryAfter(d) => {
                    let at_ms = self.clock.now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                    if !self.wait_to_retry(pos, at_ms, config, shutdown).await {
                        return Step::Reload;
                    }
                }
            }
        }
    }

    /// Waits until `at_ms` by the server's clock (so a test clock moves it too). False when
    /// this webhook was changed through the API meanwhile (an update, a replay, its deletion:
    /// its `version` moved), or at shutdown. Changes to other webhooks wake every worker but do
    /// not cut this wait short: each webhook keeps its own retry schedule.
    async fn wait_to_retry(
        &self,
        pos: &Position,
        at_ms: i64,
        config: &mut watch::Receiver<u64>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            let left_ms = at_ms.saturating_sub(self.clock.now_ms());
            if left_ms <= 0 {
                return true;
            }
            let nap = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)).min(CLOCK_CHECK);
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                changed = config.changed() => {
                    if changed.is_err() || self.changed_through_api(pos) {
                        return false;
                    }
                }
                _ = shutdown.changed() => return false,
            }
        }
    }

    /// The webhook is gone, or the API changed it since `pos` was loaded.
    fn changed_through_api(&self, pos: &Position) -> bool {
        match self.store.webhook(&self.id) {
            Ok(Some(w)) => w.version != pos.w.version,
            Ok(None) => true,
            // Cannot tell: reload, as before.
            Err(_) => true,
        }
    }
}

enum Step {
    Next,
    Reload,
}
