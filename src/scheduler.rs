//! Housekeeping: the cron job (tokio-cron-scheduler, six-field cron, re-registered at every
//! start) that purges dead revocations, token records and bans of rooms that are gone, and
//! compacts the event log. Deadlines
//! are not here: the writer fires them itself, between batches (ARCHITECTURE.md, invariant 4).
//!
//! Must not: change state itself; it only submits housekeeping commands.

use crate::store::{Compact, Store, Sweep, Sweeping};

/// Housekeeping totals, for logs and metrics.
#[derive(Debug, Default)]
pub struct HousekeepingStats {
    pub runs: std::sync::atomic::AtomicU64,
    pub revocations_purged: std::sync::atomic::AtomicU64,
    pub tokens_purged: std::sync::atomic::AtomicU64,
    pub events_compacted: std::sync::atomic::AtomicU64,
}

/// Records one sweep command looks at: the writer is busy for that long (a few ms), and the
/// page is all a sweep holds in memory, whatever the store's size.
const SWEEP_PAGE: usize = 4096;

/// One housekeeping sweep: what the cron job runs, callable directly (tests do). Safe to repeat.
pub async fn housekeep_once(
    store: &Store,
    retention: &crate::store::Retention,
    stats: &HousekeepingStats,
) -> Result<crate::store::PurgeReport, crate::store::StoreError> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut total = crate::store::PurgeReport {
        revocations: sweep(store, Sweeping::Revocations).await?,
        tokens: sweep(store, Sweeping::Tokens).await?,
        bans: sweep(store, Sweeping::Bans).await?,
        ..Default::default()
    };
    loop {
        let report = store.submit_wait(Compact(*retention)).await?;
        total.events += report.events;
        if report.events < crate::store::COMPACT_CHUNK {
            break;
        }
    }
    total.meetings = sweep(store, Sweeping::Meetings { max_age_ms: retention.max_age_ms }).await?;
    stats.runs.fetch_add(1, Relaxed);
    stats.revocations_purged.fetch_add(total.revocations, Relaxed);
    stats.tokens_purged.fetch_add(total.tokens, Relaxed);
    stats.events_compacted.fetch_add(total.events, Relaxed);
    if total != crate::store::PurgeReport::default() {
        tracing::info!(
            revocations = total.revocations,
            tokens = total.tokens,
            events = total.events,
            meetings = total.meetings,
            bans = total.bans,
            "housekeeping purged dead records"
        );
    }
    Ok(total)
}

/// Goes through one kind of record a page at a time; returns how many it removed.
async fn sweep(store: &Store, what: Sweeping) -> Result<u64, crate::store::StoreError> {
    let (mut removed, mut after) = (0, None);
    loop {
        let page = store.submit_wait(Sweep { what, after, page: SWEEP_PAGE }).await?;
        removed += page.removed;
        if page.removed > 0 {
            // A page's deletes wait in the writer's overlay until sled has them: going on only
            // once it does keeps a purge of 100,000 meetings from holding them all at once.
            store.applier_caught_up(std::time::Duration::from_secs(10)).await;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(removed),
        }
    }
}

/// Starts the housekeeping cron job (six-field cron, seconds first). Jobs are not persisted by
/// tokio-cron-scheduler, so this runs at every start-up.
pub async fn start_housekeeping(
    cron: &str,
    store: Store,
    retention: crate::store::Retention,
    stats: std::sync::Arc<HousekeepingStats>,
) -> Result<tokio_cron_scheduler::JobScheduler, tokio_cron_scheduler::JobSchedulerError> {
    let sched = tokio_cron_scheduler::JobScheduler::new().await?;
    let job = tokio_cron_scheduler::Job::new_async(cron, move |_id, _sched| {
        let (store, stats) = (store.clone(), stats.clone());
        Box::pin(async move {
            if let Err(e) = housekeep_once(&store, &retention, &stats).await {
                tracing::warn!(error = %e, "housekeeping failed; the next run tries again");
            }
        })
    })?;
    sched.add(job).await?;
    sched.start().await?;
    Ok(sched)
}
