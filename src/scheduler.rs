//! Housekeeping: the cron job (tokio-cron-scheduler, six-field cron, re-registered at every
//! start) that purges dead revocations, token records and bans of rooms that are gone, and
//! compacts the event log. Deadlines
//! are not here: the writer fires them itself, between batches (ARCHITECTURE.md, invariant 4).
//!
//! Must not: change state itself; it only submits housekeeping commands.

use crate::store::{Compact, Purge, Store};

/// Housekeeping totals, for logs and metrics.
#[derive(Debug, Default)]
pub struct HousekeepingStats {
    pub runs: std::sync::atomic::AtomicU64,
    pub revocations_purged: std::sync::atomic::AtomicU64,
    pub tokens_purged: std::sync::atomic::AtomicU64,
    pub events_compacted: std::sync::atomic::AtomicU64,
}

/// Most records of each kind one sweep removes (the writer is busy for that long).
const PURGE_LIMIT: usize = 10_000;

/// One housekeeping sweep: what the cron job runs, callable directly (tests do). Safe to repeat.
pub async fn housekeep_once(
    store: &Store,
    retention: &crate::store::Retention,
    stats: &HousekeepingStats,
) -> Result<crate::store::PurgeReport, crate::store::StoreError> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut total = crate::store::PurgeReport::default();
    loop {
        let report = store.submit_wait(Purge { limit: PURGE_LIMIT }).await?;
        total.revocations += report.revocations;
        total.tokens += report.tokens;
        total.bans += report.bans;
        if [report.revocations, report.tokens, report.bans].iter().all(|n| *n < PURGE_LIMIT as u64) {
            break;
        }
    }
    loop {
        let report = store.submit_wait(Compact(*retention)).await?;
        total.events += report.events;
        if report.events < crate::store::COMPACT_CHUNK {
            break;
        }
    }
    // Meeting history is kept as long as events are.
    loop {
        let removed = store
            .submit_wait(crate::store::PurgeMeetings { max_age_ms: retention.max_age_ms, limit: PURGE_LIMIT })
            .await?;
        total.meetings += removed;
        if removed < PURGE_LIMIT as u64 {
            break;
        }
    }
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
