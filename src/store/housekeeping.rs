//! Bulk sweeps the per-item deadlines do not cover (DESIGN: cron jobs only purge): revocations
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
}

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
}
