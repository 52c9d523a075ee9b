//! Bulk sweeps the per-item deadlines do not cover (cron jobs only purge; per-item deadlines do the rest): revocations
//! whose token could no longer be used anyway, and issued-token records past their `exp`.
//! Purges are soft writes (no event, no journal record): losing one in a crash only means the
//! next run purges it again. Safe to repeat.

use super::keys;
use super::records::{self, RevocationRecord, TokenRecord};
use super::writer::{Outcome, WriteSet, Writer};
use super::{StoreError, Tree};

/// A token record is kept this long after its `exp` (listing and late revocations still see it).
pub const TOKEN_GRACE_MS: i64 = 3600 * 1000;

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub revocations: u64,
    pub tokens: u64,
    pub events: u64,
}

/// Event log retention: by age and size; the soft limits never pass an active webhook's
/// cursor, the hard size limit does (and marks the webhooks it passed).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age_ms: i64,
    pub max_bytes: u64,
    pub hard_max_bytes: u64,
}

/// Events deleted per compaction command (the writer stays responsive between chunks).
pub const COMPACT_CHUNK: u64 = 10_000;

impl Writer {
    /// Removes at most `limit` dead records of each kind.
    pub(super) fn purge(&mut self, limit: usize) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let now = self.now_ms();
        let mut ws = WriteSet::default();
        let mut report = PurgeReport::default();
        for item in self.s.trees.get(Tree::Revocations).iter() {
            if report.revocations as usize >= limit {
                break;
            }
            let (k, v) = item?;
            let r: RevocationRecord = records::decode("revocations", &k, records::REVOCATION_V1, &v)?;
            if r.until_ms.is_some_and(|u| u <= now) {
                ws.del(Tree::Revocations, k.to_vec());
                report.revocations += 1;
            }
        }
        for item in self.s.trees.get(Tree::Tokens).iter() {
            if report.tokens as usize >= limit {
                break;
            }
            let (k, v) = item?;
            let t: TokenRecord = records::decode("tokens", &k, records::TOKEN_V1, &v)?;
            if t.exp.is_some_and(|e| e.saturating_mul(1000) + TOKEN_GRACE_MS <= now) {
                ws.del(Tree::Tokens, k.to_vec());
                ws.del(Tree::TokensByRoom, keys::token_room(t.room.as_deref(), &t.jti));
                report.tokens += 1;
            }
        }
        Ok(((!ws.is_empty()).then_some(ws), Outcome::Purged(report)))
    }

    /// Deletes at most [`COMPACT_CHUNK`] of the oldest events, as `r` allows. Never the head.
    pub(super) fn compact(&mut self, r: &Retention) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let now = self.now_ms();
        let events = self.s.trees.get(Tree::Events);
        let head = self.s.next_seq - 1;
        let Some(oldest) = events.first()?.and_then(|(k, _)| keys::u64_of(&k)) else {
            return Ok((None, Outcome::Purged(PurgeReport::default())));
        };
        // Average envelope size from the oldest events, to estimate the log's size.
        let sample: Vec<usize> = events.iter().values().take(1000).filter_map(|v| v.ok().map(|v| v.len())).collect();
        let avg = (sample.iter().sum::<usize>() / sample.len().max(1)).max(1) as u64;
        let count = head.saturating_sub(oldest) + 1;
        let over = |max: u64| count.saturating_sub(max / avg);
        // Soft cut: past the age limit or over the size limit, but not past an active cursor.
        let mut soft = oldest + over(r.max_bytes);
        for item in events.range(keys::seq(oldest)..keys::seq(oldest + COMPACT_CHUNK)) {
            let (k, v) = item?;
            let rec: records::EventRecord = records::decode("events", &k, records::EVENT_V1, &v)?;
            if rec.ts_ms > now - r.max_age_ms {
                break;
            }
            soft = soft.max(keys::u64_of(&k).unwrap_or(0) + 1);
        }
        let webhooks: Vec<records::WebhookRecord> = self
            .s
            .trees
            .get(Tree::Webhooks)
            .iter()
            .values()
            .map(|v| {
                v.map_err(StoreError::from).and_then(|v| records::decode("webhooks", b"", records::WEBHOOK_V1, &v))
            })
            .collect::<Result<_, _>>()?;
        let protect = webhooks.iter().filter(|w| w.state == "ACTIVE").map(|w| w.cursor + 1).min().unwrap_or(u64::MAX);
        let hard = oldest + over(r.hard_max_bytes);
        let cut = soft.min(protect).max(hard).min(head).min(oldest + COMPACT_CHUNK);
        let mut ws = WriteSet::default();
        let mut report = PurgeReport::default();
        for seq in oldest..cut {
            ws.del(Tree::Events, keys::seq(seq).to_vec());
            report.events += 1;
        }
        for mut w in webhooks.into_iter().filter(|w| w.cursor + 1 < cut) {
            w.lost_before = Some(cut);
            w.cursor = cut - 1;
            tracing::warn!(webhook = %w.uuid, before = cut, "the event log was compacted past this webhook's cursor");
            ws.put(Tree::Webhooks, w.uuid.as_bytes(), records::encode(records::WEBHOOK_V1, &w)?);
        }
        Ok(((!ws.is_empty()).then_some(ws), Outcome::Purged(report)))
    }
}
