//! Bulk sweeps the per-item deadlines do not cover (cron jobs only purge; deadlines do the
//! rest), each a page at a time: revocations whose token could no longer be used anyway, issued-token records past
//! their `exp`, bans left behind by rooms that are gone (a room takes its bans with it since
//! issue 24; stores written before keep them until a sweep), and events past the retention
//! rules. Only the bans' removal logs events (`ban.removed`); the rest have none, so their
//! batches are not synced on their own: losing one in a crash only means the next run does it
//! again.

use std::collections::HashMap;

use serde_json::json;

use crate::store::command::Command;
use crate::store::ctx::Ctx;
use crate::store::StoreError;

/// A token record is kept this long after its `exp` (listing and late revocations still see it).
pub const TOKEN_GRACE_MS: i64 = 3600 * 1000;

/// Events one compaction command may drop (the writer stays responsive between chunks).
pub const COMPACT_CHUNK: u64 = 10_000;

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub revocations: u64,
    pub tokens: u64,
    pub events: u64,
    pub meetings: u64,
    /// Bans of rooms that no longer exist.
    pub bans: u64,
}

/// Event log retention: by age and size; the soft limits never pass an active webhook's
/// cursor, the hard size limit does (and marks the webhooks it passed).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age_ms: i64,
    pub max_bytes: u64,
    pub hard_max_bytes: u64,
}

/// What a housekeeping sweep goes through, a page at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweeping {
    /// Revocations whose token could no longer be used anyway.
    Revocations,
    /// Issued-token records [`TOKEN_GRACE_MS`] past their `exp`.
    Tokens,
    /// Bans of rooms that no longer exist (each removal logs `ban.removed`).
    Bans,
    /// Meetings (with their participants) that ended more than `max_age_ms` ago: meeting
    /// history is kept as long as events are. Keys are in start order (UUIDv7), so the sweep
    /// ends at the first meeting that started after the cutoff.
    Meetings { max_age_ms: i64 },
}

/// One page of a sweep: looks at no more than `page` records after the key `after` and
/// removes the dead ones. A sweep holds neither the writer nor memory in proportion to the
/// store: the scheduler submits pages until `next` is `None`.
#[derive(Debug)]
pub struct Sweep {
    pub what: Sweeping,
    pub after: Option<Vec<u8>>,
    pub page: usize,
}

/// What one page removed, and where the next starts (`None`: the sweep is done).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweptPage {
    pub removed: u64,
    pub next: Option<Vec<u8>>,
}

impl Command for Sweep {
    type Reply = SweptPage;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<SweptPage, StoreError> {
        let now = cx.now_ms();
        let (after, page) = (self.after.as_deref(), self.page.max(1));
        match self.what {
            Sweeping::Revocations => {
                let rows = cx.revocations_page(after, page)?;
                sweep_page(cx, rows, page, |cx, k, r| {
                    if !r.until_ms.is_some_and(|u| u <= now) {
                        return Ok(Verdict::Keep);
                    }
                    cx.del_revocation(k.to_vec());
                    Ok(Verdict::Removed)
                })
            }
            Sweeping::Tokens => {
                let rows = cx.tokens_page(after, page)?;
                sweep_page(cx, rows, page, |cx, _, t| {
                    if !t.exp.is_some_and(|e| e.saturating_mul(1000).saturating_add(TOKEN_GRACE_MS) <= now) {
                        return Ok(Verdict::Keep);
                    }
                    cx.del_token(&t);
                    Ok(Verdict::Removed)
                })
            }
            Sweeping::Bans => {
                let rows = cx.bans_page(after, page)?;
                let mut rooms: HashMap<String, bool> = HashMap::new();
                sweep_page(cx, rows, page, |cx, _, parsed| {
                    let Some((room, user)) = parsed else { return Ok(Verdict::Keep) };
                    let exists = match rooms.get(&room) {
                        Some(e) => *e,
                        None => {
                            let e = cx.room(&room)?.is_some();
                            rooms.insert(room.clone(), e);
                            e
                        }
                    };
                    if exists {
                        return Ok(Verdict::Keep);
                    }
                    cx.del_ban(&room, &user)?;
                    cx.event(
                        crate::events::EventKind::BanRemoved,
                        json!({"room": room, "user_id": user, "reason": "room_deleted"}),
                    );
                    Ok(Verdict::Removed)
                })
            }
            Sweeping::Meetings { max_age_ms } => {
                let before_ms = now.saturating_sub(max_age_ms);
                let rows = cx.meetings_page(after, page)?;
                sweep_page(cx, rows, page, |cx, _, m| {
                    if m.start_ms >= before_ms {
                        return Ok(Verdict::Stop); // every later one started later still
                    }
                    if !m.end_ms.is_some_and(|e| e < before_ms) {
                        return Ok(Verdict::Keep);
                    }
                    cx.del_meeting(&m)?;
                    Ok(Verdict::Removed)
                })
            }
        }
    }
}

/// What a sweep made of one record.
enum Verdict {
    Keep,
    Removed,
    /// This one and every later one are kept: the sweep is done.
    Stop,
}

/// Hands each row of a page (in key order) to `judge`, which removes it if it is dead; the
/// page's report, whose `next` is the last key looked at when the page was full (more may
/// follow) and the sweep did not stop.
fn sweep_page<T>(
    cx: &mut Ctx<'_>,
    rows: Vec<(Vec<u8>, T)>,
    page: usize,
    mut judge: impl FnMut(&mut Ctx<'_>, &[u8], T) -> Result<Verdict, StoreError>,
) -> Result<SweptPage, StoreError> {
    let mut full = rows.len() == page;
    let (mut removed, mut last) = (0, None);
    for (k, row) in rows {
        match judge(cx, &k, row)? {
            Verdict::Keep => {}
            Verdict::Removed => removed += 1,
            Verdict::Stop => {
                full = false;
                break;
            }
        }
        last = Some(k);
    }
    Ok(SweptPage { removed, next: if full { last } else { None } })
}

/// Drops at most [`COMPACT_CHUNK`] of the oldest events, as the retention allows. Never the head.
#[derive(Debug)]
pub struct Compact(pub Retention);

impl Command for Compact {
    type Reply = PurgeReport;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<PurgeReport, StoreError> {
        let r = self.0;
        let now = cx.now_ms();
        let log = cx.event_log();
        let head = log.head();
        let oldest = cx.events_oldest();
        if head < oldest {
            return Ok(PurgeReport::default());
        }
        let avg = log.mean_event_bytes();
        let count = head - oldest + 1;
        let over = |max: u64| count.saturating_sub(max / avg);
        // Soft cut: past the age limit or over the size limit, but not past an active cursor.
        let mut soft = oldest + over(r.max_bytes);
        let window = log.read(oldest - 1, usize::MAX, COMPACT_CHUNK as usize, &|_| true)?;
        for e in &window.events {
            if e.ts_ms > now.saturating_sub(r.max_age_ms) {
                break;
            }
            soft = soft.max(e.seq + 1);
        }
        let webhooks = cx.webhooks()?;
        let protect = webhooks.iter().filter(|w| w.state == "ACTIVE").map(|w| w.cursor + 1).min().unwrap_or(u64::MAX);
        let hard = oldest + over(r.hard_max_bytes);
        let cut = soft.min(protect).max(hard).min(head).min(oldest + COMPACT_CHUNK);
        if cut <= oldest {
            return Ok(PurgeReport::default());
        }
        for mut w in webhooks.into_iter().filter(|w| w.cursor + 1 < cut) {
            w.lost_before = Some(cut);
            w.cursor = cut - 1;
            w.version += 1;
            tracing::warn!(webhook = %w.uuid, before = cut, "the event log was compacted past this webhook's cursor");
            cx.put_webhook(&w, false)?;
        }
        cx.set_events_oldest(cut);
        Ok(PurgeReport { events: cut - oldest, ..Default::default() })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::records::BanRecord;
    use crate::store::{CreateRoom, Eject, Store, StoreOptions, SyncMode};

    /// What a store written before rooms took their bans with them may hold: a ban of a room
    /// that is gone.
    struct OrphanBan;

    impl Command for OrphanBan {
        type Reply = ();

        fn apply(self, cx: &mut Ctx<'_>) -> Result<(), StoreError> {
            let ban = BanRecord { until_ms: None, created_ms: 0, by: "api:test".into() };
            cx.put_ban("gone", "u1", &ban)?;
            cx.put_ban("gone", "u2", &ban)
        }
    }

    /// Issue 24, item 5: bans left behind by a room that is gone are swept, each with
    /// `ban.removed`; a live room's are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bans_of_rooms_that_are_gone_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::clock::ManualClock::new(1_000_000_000));
        let opts = StoreOptions {
            sync: SyncMode::Flush,
            background_flush_ms: None,
            ..StoreOptions::at(tmp.path().join("store"))
        };
        let store = Store::open(opts, clock).unwrap();
        let room = CreateRoom {
            name: Some("here".into()),
            privacy: crate::rooms::Privacy::Public,
            config: Default::default(),
        };
        store.submit(room).await.unwrap().unwrap();
        let ban = Eject {
            room: "here".into(),
            ids: vec![],
            user_ids: vec!["u1".into()],
            ban: true,
            ban_until_s: None,
            by: "api:test".into(),
            by_token: false,
            max_bans: 10,
        };
        assert_eq!(store.submit(ban).await.unwrap(), Ok(vec![]));
        store.submit(OrphanBan).await.unwrap();
        let sweep = |after: Option<Vec<u8>>, page: usize| Sweep { what: Sweeping::Bans, after, page };
        // Keys in order: "gone"/"u1", "gone"/"u2", "here"/"u1"; a page of one looks at one.
        let first = store.submit(sweep(None, 1)).await.unwrap();
        assert_eq!(first.removed, 1, "a page looks at no more than its size");
        let second = store.submit(sweep(first.next.clone(), 1)).await.unwrap();
        assert_eq!(second.removed, 1);
        let third = store.submit(sweep(second.next.clone(), 1)).await.unwrap();
        assert_eq!(third.removed, 0, "a live room's ban stays");
        let fourth = store.submit(sweep(third.next.clone(), 1)).await.unwrap();
        assert_eq!(fourth, SweptPage { removed: 0, next: None }, "the sweep ends");
        assert!(store.bans("gone", 0).unwrap().is_empty());
        assert_eq!(store.bans("here", 0).unwrap().len(), 1);
        let removed =
            store.events(0, 100, Some(&[crate::events::EventKind::BanRemoved.as_str().to_string()])).unwrap().events;
        assert_eq!(removed.len(), 2);
        assert!(removed.iter().all(|e| e.envelope.contains(r#""room":"gone""#) && e.envelope.contains("room_deleted")));
        assert_eq!(store.submit(sweep(None, 10)).await.unwrap(), SweptPage::default(), "safe to repeat");
        store.close().await;
    }
}
