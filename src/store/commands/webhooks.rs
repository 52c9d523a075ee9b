//! Webhook configuration (each change logs an event) and delivery progress (cursor, counters
//! and failed attempts: no event, so their batches are not synced on their own — losing one in
//! a crash only means a redelivery).

use serde_json::json;

use crate::store::command::Command;
use crate::store::ctx::Ctx;
use crate::store::records::{AttemptRecord, WebhookRecord};
use crate::store::StoreError;

/// Failed attempts kept per webhook (older ones are dropped as new ones come).
pub const MAX_ATTEMPTS_KEPT: usize = 100;

/// A change to a webhook's configuration, from the API.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub hmac: Option<String>,
    pub basic_auth: Option<Option<String>>,
    pub retry_type: Option<String>,
    pub event_types: Option<Vec<String>>,
}

impl WebhookPatch {
    /// The configuration fields it sets (state and counters are the store's).
    pub fn apply(&self, w: &mut WebhookRecord) {
        if let Some(u) = &self.url {
            w.url = u.clone();
        }
        if let Some(h) = &self.hmac {
            w.hmac = h.clone();
        }
        if let Some(b) = &self.basic_auth {
            w.basic_auth = b.clone();
        }
        if let Some(r) = &self.retry_type {
            w.retry_type = r.clone();
        }
        if let Some(t) = &self.event_types {
            w.event_types = t.clone();
        }
    }
}

/// The `webhook.*` payload: never the secret, and the URL without what may hold one (its
/// user name and password, its query string and fragment). Other webhooks and event readers
/// receive these events; only the stored configuration keeps the whole URL, to deliver.
pub fn public_payload(w: &WebhookRecord) -> serde_json::Value {
    let url = public_url(&w.url);
    json!({"uuid": w.uuid, "url": url, "state": w.state, "eventTypes": w.event_types, "retryType": w.retry_type})
}

/// `url` without userinfo, query or fragment.
pub fn public_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        // Not a URL we could deliver to anyway: keep only what comes before anything secret.
        let start = url.split(['?', '#']).next().unwrap_or("");
        return match start.rsplit_once('@') {
            Some((_, host)) => host.to_string(),
            None => start.to_string(),
        };
    };
    // Both fail only for URLs that cannot have userinfo (no host), which have none to strip.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// A new webhook starts after its own `webhook.created` event: it receives what happens from now on.
#[derive(Debug)]
pub struct CreateWebhook(pub WebhookRecord);

impl Command for CreateWebhook {
    type Reply = WebhookRecord;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<WebhookRecord, StoreError> {
        let mut w = self.0;
        w.cursor = cx.next_seq();
        cx.put_webhook(&w, true)?;
        cx.event(crate::events::EventKind::WebhookCreated, public_payload(&w));
        Ok(w)
    }
}

/// Applies a patch and re-activates the webhook: it resumes from its cursor, losing nothing.
#[derive(Debug)]
pub struct UpdateWebhook {
    pub id: String,
    pub patch: WebhookPatch,
}

impl Command for UpdateWebhook {
    type Reply = Option<WebhookRecord>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let Some(mut w) = cx.webhook(&self.id)? else { return Ok(None) };
        self.patch.apply(&mut w);
        w.state = "ACTIVE".into();
        w.failed_count = 0;
        w.first_failure_ms = None;
        w.updated_ms = cx.now_ms();
        w.version += 1;
        cx.put_webhook(&w, true)?;
        cx.event(crate::events::EventKind::WebhookUpdated, public_payload(&w));
        Ok(Some(w))
    }
}

#[derive(Debug)]
pub struct DeleteWebhook {
    pub id: String,
}

impl Command for DeleteWebhook {
    type Reply = Option<WebhookRecord>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let Some(w) = cx.webhook(&self.id)? else { return Ok(None) };
        cx.del_webhook(&self.id)?;
        cx.event(crate::events::EventKind::WebhookDeleted, public_payload(&w));
        Ok(Some(w))
    }
}

/// Moves the cursor back (replay) or to any position up to the head.
#[derive(Debug)]
pub struct ReplayWebhook {
    pub id: String,
    pub from_seq: u64,
}

impl Command for ReplayWebhook {
    type Reply = Option<WebhookRecord>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let Some(mut w) = cx.webhook(&self.id)? else { return Ok(None) };
        w.cursor = self.from_seq.saturating_sub(1).min(cx.next_seq() - 1);
        w.updated_ms = cx.now_ms();
        w.version += 1;
        cx.put_webhook(&w, true)?;
        let mut payload = public_payload(&w);
        payload["replay_from_seq"] = json!(self.from_seq);
        cx.event(crate::events::EventKind::WebhookUpdated, payload);
        Ok(Some(w))
    }
}

/// Delivery progress reported by a webhook worker.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Delivered (2xx) up to `seq`, or skipped non-matching events up to it.
    Delivered {
        seq: u64,
        pushed: bool,
    },
    Failed(AttemptRecord),
    /// The policy gave up (`FAILED`) or the receiver said 410 (`INACTIVE`).
    StateChange {
        state: &'static str,
        reason: String,
    },
}

/// A worker's report. `expect_version` (and `expect_cursor`) guard against a replay or an
/// update that happened while the attempt was in flight: then the report is dropped, even if
/// the replay put the cursor back where the worker last recorded it.
#[derive(Debug)]
pub struct WebhookProgress {
    pub id: String,
    pub expect_cursor: u64,
    pub expect_version: u64,
    pub delivery: Delivery,
}

#[derive(Debug)]
pub enum Progress {
    Applied(Box<WebhookRecord>),
    /// The cursor or state was changed by the API meanwhile: not applied.
    Stale(Box<WebhookRecord>),
    NoWebhook,
}

impl Command for WebhookProgress {
    type Reply = Progress;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Progress, StoreError> {
        let Some(mut w) = cx.webhook(&self.id)? else { return Ok(Progress::NoWebhook) };
        if w.cursor != self.expect_cursor || w.version != self.expect_version || w.state != "ACTIVE" {
            return Ok(Progress::Stale(Box::new(w)));
        }
        let now = cx.now_ms();
        let mut reload = false;
        match self.delivery {
            Delivery::Delivered { seq, pushed } => {
                w.cursor = seq;
                if pushed {
                    w.successes += 1;
                    w.last_pushed_ms = Some(now);
                    w.failed_count = 0;
                    w.first_failure_ms = None;
                }
            }
            Delivery::Failed(a) => {
                w.failures += 1;
                // 429 is backpressure, not breakage: it does not count toward the breaker.
                if a.status != 429 {
                    w.failed_count += 1;
                }
                w.first_failure_ms.get_or_insert(now);
                cx.add_attempt(&self.id, &a, MAX_ATTEMPTS_KEPT)?;
            }
            Delivery::StateChange { state, reason } => {
                w.state = state.to_string();
                let mut payload = public_payload(&w);
                payload["reason"] = json!(reason);
                payload["failedCount"] = json!(w.failed_count);
                cx.event(crate::events::EventKind::WebhookFailed, payload);
                reload = true;
            }
        }
        w.updated_ms = now;
        cx.put_webhook(&w, reload)?;
        Ok(Progress::Applied(Box::new(w)))
    }
}

#[cfg(test)]
mod tests {
    use super::public_url;

    #[test]
    fn public_urls_carry_no_credentials() {
        assert_eq!(
            public_url("https://user:pass@hooks.example.com:8443/in?token=x#frag"),
            "https://hooks.example.com:8443/in"
        );
        assert_eq!(public_url("http://user@10.0.0.1/x"), "http://10.0.0.1/x");
        assert_eq!(public_url("http://host/plain"), "http://host/plain");
        assert_eq!(public_url("not a url: user:pass@host?q"), "host");
    }
}
