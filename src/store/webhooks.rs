//! The writer's webhook commands: configuration changes (journaled, each with an event so
//! recovery can place it), and delivery progress (cursor, successes, failed attempts: soft
//! writes, since losing one only means a redelivery).

use serde_json::json;

use super::records::{self, AttemptRecord, WebhookRecord};
use super::writer::{Outcome, WriteSet, Writer};
use super::{StoreError, Tree};

/// Failed attempts kept per webhook (older ones are dropped as new ones come).
pub const MAX_ATTEMPTS_KEPT: u64 = 100;

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
    /// The configuration fields it sets (state and counters are the writer's).
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

pub(super) fn read(tree: &sled::Tree, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
    match tree.get(id.as_bytes())? {
        Some(v) => Ok(Some(records::decode("webhooks", id.as_bytes(), records::WEBHOOK_V1, &v)?)),
        None => Ok(None),
    }
}

/// The `webhook.*` payload: never the secret, and the URL without its query string.
pub fn public_payload(w: &WebhookRecord) -> serde_json::Value {
    let url = w.url.split(['?', '#']).next().unwrap_or("");
    json!({"uuid": w.uuid, "url": url, "state": w.state, "eventTypes": w.event_types, "retryType": w.retry_type})
}

impl Writer {
    fn webhooks(&self) -> &sled::Tree {
        self.s.trees.get(Tree::Webhooks)
    }

    fn put_webhook(&self, ws: &mut WriteSet, w: &WebhookRecord) -> Result<(), StoreError> {
        ws.put(Tree::Webhooks, w.uuid.as_bytes(), records::encode(records::WEBHOOK_V1, w)?);
        ws.webhooks_touched = true;
        Ok(())
    }

    /// A new webhook starts after its own `webhook.created` event: it receives what happens from now on.
    pub(super) fn create_webhook(&mut self, w: &WebhookRecord) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let mut w = w.clone();
        w.cursor = self.s.next_seq;
        let mut ws = WriteSet::default();
        self.put_webhook(&mut ws, &w)?;
        ws.event(crate::events::WEBHOOK_CREATED, public_payload(&w));
        Ok((Some(ws), Outcome::Webhook(Box::new(w))))
    }

    /// Applies a patch and re-activates the webhook: it resumes from its cursor, losing nothing.
    pub(super) fn update_webhook(
        &mut self,
        id: &str,
        p: &WebhookPatch,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let Some(mut w) = read(self.webhooks(), id)? else {
            return Ok((None, Outcome::NoWebhook));
        };
        p.apply(&mut w);
        w.state = "ACTIVE".into();
        w.failed_count = 0;
        w.first_failure_ms = None;
        w.updated_ms = self.now_ms();
        let mut ws = WriteSet::default();
        self.put_webhook(&mut ws, &w)?;
        ws.event(crate::events::WEBHOOK_UPDATED, public_payload(&w));
        Ok((Some(ws), Outcome::Webhook(Box::new(w))))
    }

    pub(super) fn delete_webhook(&mut self, id: &str) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let Some(w) = read(self.webhooks(), id)? else {
            return Ok((None, Outcome::NoWebhook));
        };
        let mut ws = WriteSet::default();
        ws.del(Tree::Webhooks, id.as_bytes());
        for k in self.s.trees.get(Tree::Attempts).scan_prefix(super::keys::room_prefix(id)).keys() {
            ws.del(Tree::Attempts, k?.to_vec());
        }
        ws.webhooks_touched = true;
        ws.event(crate::events::WEBHOOK_DELETED, public_payload(&w));
        Ok((Some(ws), Outcome::Webhook(Box::new(w))))
    }

    /// Moves the cursor back (replay) or to any durable position.
    pub(super) fn replay_webhook(
        &mut self,
        id: &str,
        from_seq: u64,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let Some(mut w) = read(self.webhooks(), id)? else {
            return Ok((None, Outcome::NoWebhook));
        };
        w.cursor = from_seq.saturating_sub(1).min(self.s.next_seq - 1);
        w.updated_ms = self.now_ms();
        let mut ws = WriteSet::default();
        self.put_webhook(&mut ws, &w)?;
        let mut payload = public_payload(&w);
        payload["replay_from_seq"] = json!(from_seq);
        ws.event(crate::events::WEBHOOK_UPDATED, payload);
        Ok((Some(ws), Outcome::Webhook(Box::new(w))))
    }

    /// Progress from a delivery worker. `expect_cursor` guards against a replay or an update
    /// that happened while the attempt was in flight: then the report is dropped.
    pub(super) fn webhook_progress(
        &mut self,
        id: &str,
        expect_cursor: u64,
        d: &Delivery,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let Some(mut w) = read(self.webhooks(), id)? else {
            return Ok((None, Outcome::NoWebhook));
        };
        if w.cursor != expect_cursor || w.state != "ACTIVE" {
            return Ok((None, Outcome::StaleWebhookReport(Box::new(w))));
        }
        let now = self.now_ms();
        let mut ws = WriteSet::default();
        match d {
            Delivery::Delivered { seq, pushed } => {
                w.cursor = *seq;
                if *pushed {
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
                let n = self.s.trees.get(Tree::Attempts).scan_prefix(super::keys::room_prefix(id)).count() as u64;
                if n >= MAX_ATTEMPTS_KEPT {
                    if let Some(Ok(oldest)) =
                        self.s.trees.get(Tree::Attempts).scan_prefix(super::keys::room_prefix(id)).keys().next()
                    {
                        ws.del(Tree::Attempts, oldest.to_vec());
                    }
                }
                let key = [super::keys::room_prefix(id), a.at_ms.to_be_bytes().to_vec(), a.seq.to_be_bytes().to_vec()]
                    .concat();
                ws.put(Tree::Attempts, key, records::encode(records::ATTEMPT_V1, a)?);
            }
            Delivery::StateChange { state, reason } => {
                w.state = state.to_string();
                let mut payload = public_payload(&w);
                payload["reason"] = json!(reason);
                payload["failedCount"] = json!(w.failed_count);
                ws.event(crate::events::WEBHOOK_FAILED, payload);
                ws.webhooks_touched = true;
            }
        }
        w.updated_ms = now;
        ws.put(Tree::Webhooks, w.uuid.as_bytes(), records::encode(records::WEBHOOK_V1, &w)?);
        Ok((Some(ws), Outcome::Webhook(Box::new(w))))
    }
}
