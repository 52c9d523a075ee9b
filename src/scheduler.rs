//! The deadline task (ARCHITECTURE.md, invariant 4): one task sleeps until the earliest row of the
//! timers tree (or until the writer says timers changed), then submits what is due to the
//! writer in deadline order, in batches that share a journal sync. Firing re-checks state in
//! the writer, so firing twice is harmless; deadlines are unix time, so overdue rows after a
//! restart or a clock jump fire at the next pass.
//!
//! Must not: change state itself; it only submits `FireTimer` commands.

use std::time::Duration;

use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::store::{Command, Store};

/// Most timers submitted in one pass.
const BATCH: usize = 2048;
/// Longest sleep without re-reading the earliest timer: bounds the lateness a wall-clock jump
/// can cause.
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub async fn run_deadlines(store: Store, clock: SharedClock, mut shutdown: watch::Receiver<bool>) {
    let changed = store.timers_changed();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = clock.now_ms();
        let due = match store.due_timers(now, BATCH) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read timers");
                Vec::new()
            }
        };
        if !due.is_empty() {
            let n = due.len();
            let cmds =
                due.into_iter().map(|(deadline_ms, kind, id)| Command::FireTimer { deadline_ms, kind, id }).collect();
            for r in store.submit_all(cmds).await {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "a deadline could not fire; it stays and is retried");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tracing::debug!(fired = n, "deadlines fired");
            continue;
        }
        let wait = match store.first_timer() {
            Ok(Some((deadline, _, _))) => {
                Duration::from_millis(u64::try_from(deadline - now).unwrap_or(0)).min(MAX_SLEEP)
            }
            _ => MAX_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

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
        let report = match store.submit_wait(Command::Purge { limit: PURGE_LIMIT }).await? {
            crate::store::Outcome::Purged(r) => r,
            _ => break,
        };
        total.revocations += report.revocations;
        total.tokens += report.tokens;
        if report.revocations < PURGE_LIMIT as u64 && report.tokens < PURGE_LIMIT as u64 {
            break;
        }
    }
    loop {
        let report = match store.submit_wait(Command::Compact(*retention)).await? {
            crate::store::Outcome::Purged(r) => r,
            _ => break,
        };
        total.events += report.events;
        if report.events < crate::store::COMPACT_CHUNK {
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
