//! The housekeeping job's body, called directly: it purges what can no longer matter, keeps
//! what can, reports what it removed, and is safe to repeat.

use std::sync::Arc;

use gatehouse::clock::ManualClock;
use gatehouse::events::NewEvent;
use gatehouse::scheduler::{housekeep_once, HousekeepingStats};
use gatehouse::store::{
    CreateToken, PurgeReport, Revoke, Store, StoreOptions, Sweep, Sweeping, SweptPage, SyncMode, TokenRecord,
};
use serde_json::json;

/// Retention that keeps every event (this test is about revocations and tokens).
const KEEP_ALL: gatehouse::store::Retention =
    gatehouse::store::Retention { max_age_ms: i64::MAX, max_bytes: u64::MAX, hard_max_bytes: u64::MAX };

fn token(jti: &str, exp: Option<i64>) -> CreateToken {
    let record = TokenRecord {
        jti: jti.into(),
        kid: "k".into(),
        room: Some("r".into()),
        user_id: None,
        user_name: None,
        is_owner: false,
        nbf: None,
        exp,
        created_ms: 0,
    };
    CreateToken {
        record,
        event: NewEvent::new(gatehouse::events::EventKind::MeetingTokenCreated, &json!({"jti": jti}), None).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_dead_revocations_and_tokens_and_repeats_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let opts = StoreOptions {
        path: tmp.path().join("store"),
        cache_bytes: 8 << 20,
        background_flush_ms: None,
        sync: SyncMode::Flush,
        public_url: "http://x".into(),
        lease_ms: 30_000,
        queue: 4096,
        shed_after: std::time::Duration::from_secs(60),
        stall_after: std::time::Duration::from_secs(30),
        large_room: gatehouse::store::fanout::DEFAULT_LARGE_ROOM,
        segment_bytes: gatehouse::store::eventlog::SEGMENT_BYTES,
    };
    let store = Store::open(opts, clock.clone()).unwrap();
    let t0 = 1_000_000; // seconds
    store.submit(token("dies", Some(t0 + 10))).await.unwrap();
    store.submit(token("lives", Some(t0 + 100_000))).await.unwrap();
    store.submit(token("forever", None)).await.unwrap();
    for (id, exp) in [("r-dies", Some((t0 + 10) * 1000)), ("r-forever", None)] {
        store.submit(Revoke::Token { token_id: id.into(), exp_ms: exp, room: None, by: "t".into() }).await.unwrap();
    }
    let stats = HousekeepingStats::default();
    assert_eq!(housekeep_once(&store, &KEEP_ALL, &stats).await.unwrap(), PurgeReport::default(), "nothing is dead yet");

    clock.set_ms((t0 + 10) * 1000 + 3_600_000);
    let report = housekeep_once(&store, &KEEP_ALL, &stats).await.unwrap();
    assert_eq!(report, PurgeReport { revocations: 1, tokens: 1, events: 0, meetings: 0, bans: 0 });
    assert!(store.token("dies").unwrap().is_none());
    assert!(store.token("lives").unwrap().is_some());
    assert!(store.token("forever").unwrap().is_some());
    assert_eq!(store.list_tokens(Some("r"), 10, None).unwrap().len(), 2, "the room index follows");
    assert_eq!(housekeep_once(&store, &KEEP_ALL, &stats).await.unwrap(), PurgeReport::default(), "safe to repeat");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (stats.runs.load(Relaxed), stats.revocations_purged.load(Relaxed), stats.tokens_purged.load(Relaxed)),
        (3, 1, 1)
    );
    // Purges write no events.
    assert_eq!(store.events(0, 100, None).unwrap().events.len(), 5);
    // A sweep goes a page at a time, each page looking at no more than its size: two tokens
    // are left ("forever", "lives"), so a page of one ends once the second has been seen.
    clock.set_ms((t0 + 100_000) * 1000 + 3_600_000);
    let page = |after: Option<Vec<u8>>| Sweep { what: Sweeping::Tokens, after, page: 1 };
    let first = store.submit(page(None)).await.unwrap();
    assert_eq!(first, SweptPage { removed: 0, next: Some(b"forever".to_vec()) });
    let second = store.submit(page(first.next)).await.unwrap();
    assert_eq!(second, SweptPage { removed: 1, next: Some(b"lives".to_vec()) });
    assert_eq!(store.submit(page(second.next)).await.unwrap(), SweptPage::default(), "the sweep ends");
    assert!(store.token("lives").unwrap().is_none());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_history_is_kept_as_long_as_events() {
    use gatehouse::store::{CreateRoom, Join, Leave};
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let store = Store::open(
        StoreOptions { sync: SyncMode::Flush, background_flush_ms: None, ..StoreOptions::at(tmp.path().join("store")) },
        clock.clone(),
    )
    .unwrap();
    let room =
        CreateRoom { name: Some("old".into()), privacy: gatehouse::rooms::Privacy::Public, config: Default::default() };
    store.submit(room).await.unwrap().unwrap();
    let join = |id: &str| Join {
        room: "old".into(),
        token: gatehouse::sessions::TokenCheck::None,
        user_name: None,
        session_id: id.into(),
        secret_digest: [0; 32],
        leeway_s: 0,
    };
    store.submit(join("a")).await.unwrap();
    store.submit(Leave { session_id: "a".into() }).await.unwrap();
    clock.set_ms(1_000_000_000 + 50_000);
    store.submit(join("b")).await.unwrap(); // a second meeting, still going on
    assert_eq!(store.meetings(None).unwrap().len(), 2);
    let stats = HousekeepingStats::default();
    let retention = gatehouse::store::Retention { max_age_ms: 60_000, max_bytes: u64::MAX, hard_max_bytes: u64::MAX };
    // 59 s after the first ended: kept.
    clock.set_ms(1_000_000_000 + 59_000);
    assert_eq!(housekeep_once(&store, &retention, &stats).await.unwrap().meetings, 0);
    // Past the retention: the ended one goes, with its participants; the ongoing one stays.
    clock.set_ms(1_000_000_000 + 61_000);
    assert_eq!(housekeep_once(&store, &retention, &stats).await.unwrap().meetings, 1);
    let left = store.meetings(None).unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].end_ms.is_none());
    store.close().await;
}

#[test]
fn a_bad_cron_expression_stops_start_up_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("d"))
        .env("GATEHOUSE_API_KEY", "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9")
        .env("GATEHOUSE_HOUSEKEEPING_CRON", "every tuesday")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--housekeeping-cron 'every tuesday'"), "{err}");
}

#[test]
fn weak_api_keys_are_refused_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("d"))
        .env("GATEHOUSE_API_KEY", "password123")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("128"), "{err}");
    assert!(!err.contains("password123"), "the key is never echoed");
}
