//! Operational endpoints: `/healthz`, `/readyz`, `GET /v1/` (the domain), and, in `test-clock`
//! builds only, `POST /v1/_test/clock`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::error::ApiError;
use super::responses as R;
use super::wire::{self, ok};
use super::{AppState, Body};

pub fn healthz() -> Response<Body> {
    ok(&R::Health { status: R::OkText::Is })
}

pub fn readyz(state: &AppState) -> Response<Body> {
    let ready = state.ready.load(Ordering::SeqCst);
    let writable = state.store.is_writable();
    let stalled = state.store.stalled();
    let ok = ready && writable && stalled.is_none();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let reason = if let Some(why) = stalled {
        Some(why.to_string())
    } else if let Some(why) = state.store.write_refused() {
        Some(format!("{why}; writes are refused until a restart (recovery replays the journal)"))
    } else if !writable {
        Some("the store cannot write (see the log)".to_string())
    } else if !ready {
        Some("starting up or shutting down".to_string())
    } else {
        None
    };
    wire::json_response(status, &R::Ready { ready: ok, store_writable: writable, reason })
}

/// `GET /metrics`: Prometheus text; needs an API key unless `--metrics-public`.
pub fn metrics(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    use crate::metrics::{header, label, single};
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(8192);
    state.metrics.render(&mut out);
    crate::metrics::render_heap(&mut out);
    let limited = state.limiter.limited.load(Relaxed) as f64;
    single(
        &mut out,
        "gatehouse_joins_rate_limited_total",
        "counter",
        "Join attempts refused by the per-address rate limit.",
        limited,
    );
    let c = &state.conn_metrics;
    single(&mut out, "gatehouse_connections_open", "gauge", "Connections open now.", c.open.load(Relaxed) as f64);
    if let Some(j) = state.metrics.janus() {
        let up = if j.up.load(Relaxed) { 1.0 } else { 0.0 };
        single(&mut out, "gatehouse_janus_up", "gauge", "1 when the last pass reached Janus and left it in step.", up);
        single(
            &mut out,
            "gatehouse_janus_rooms",
            "gauge",
            "Rooms kept in Janus after the last pass.",
            j.rooms.load(Relaxed) as f64,
        );
        for (name, help, v) in [
            (
                "gatehouse_janus_rooms_created_total",
                "Rooms created in Janus (again after a Janus restart).",
                &j.created,
            ),
            ("gatehouse_janus_rooms_destroyed_total", "Janus rooms destroyed (no such live room).", &j.destroyed),
            ("gatehouse_janus_rooms_resized_total", "Janus rooms resized to max_participants.", &j.updated),
            ("gatehouse_janus_failures_total", "Passes that could not reach Janus or were refused.", &j.failures),
            (
                "gatehouse_janus_participants_cut_total",
                "Participants whose media was cut (their session ended, or none was live).",
                &j.cut,
            ),
        ] {
            single(&mut out, name, "counter", help, v.load(Relaxed) as f64);
        }
    }
    let not_after = state.metrics.certificate_not_after.load(Relaxed);
    if not_after > 0 {
        single(
            &mut out,
            "gatehouse_tls_certificate_days_left",
            "gauge",
            "Days until the served TLS certificate expires (from --tls-cert or --acme-domain).",
            ((not_after - state.clock.now_secs()) as f64 / 86_400.0 * 100.0).round() / 100.0,
        );
    }
    single(
        &mut out,
        "gatehouse_connections_max",
        "gauge",
        "The connection cap.",
        state.settings.conn.max_connections as f64,
    );
    single(
        &mut out,
        "gatehouse_connections_accepted_total",
        "counter",
        "Connections accepted.",
        c.accepted.load(Relaxed) as f64,
    );
    single(
        &mut out,
        "gatehouse_connections_refused_per_address_total",
        "counter",
        "Connections closed at once: their address had too many unauthenticated connections open.",
        c.refused_per_address.load(Relaxed) as f64,
    );
    single(
        &mut out,
        "gatehouse_connection_limit_waits_total",
        "counter",
        "Times accepting paused because every connection slot was taken and no connection was idle.",
        c.waited_for_slot.load(Relaxed) as f64,
    );
    header(
        &mut out,
        "gatehouse_connections_closed_total",
        "counter",
        "Connections the server closed, by reason: a deadline, or idle at the cap to admit a new connection.",
    );
    for (reason, n) in [
        ("head_timeout", &c.head_timeouts),
        ("body_timeout", &c.body_timeouts),
        ("idle_timeout", &c.idle_timeouts),
        ("tls_handshake_timeout", &c.tls_handshake_timeouts),
        ("reclaimed_idle", &c.reclaimed_idle),
    ] {
        let _ = writeln!(out, "gatehouse_connections_closed_total{{reason=\"{reason}\"}} {}", n.load(Relaxed));
    }
    single(
        &mut out,
        "gatehouse_streams_open",
        "gauge",
        "Open event and session streams.",
        state.streams.total() as f64,
    );
    let (fan_rooms, _) = state.store.fanout_counts();
    single(
        &mut out,
        "gatehouse_stream_rooms",
        "gauge",
        "Rooms with a session stream open (their changes are encoded once for all of them).",
        fan_rooms as f64,
    );
    single(
        &mut out,
        "gatehouse_stream_sessions",
        "gauge",
        "Sessions with a stream open (their leases are renewed together).",
        state.session_streams.open_count() as f64,
    );
    let store = &state.store;
    single(
        &mut out,
        "gatehouse_requests_shed_total",
        "counter",
        "Mutations answered 503 because the writer's queue stayed full.",
        store.stats().shed.load(Relaxed) as f64,
    );
    single(&mut out, "gatehouse_sessions_live", "gauge", "Sessions present.", store.session_count() as f64);
    single(
        &mut out,
        "gatehouse_rooms",
        "gauge",
        "Rooms stored (expired ones count until removed).",
        store.room_count()? as f64,
    );
    single(
        &mut out,
        "gatehouse_timers_pending",
        "gauge",
        "Deadlines waiting in the timers tree.",
        store.timer_count() as f64,
    );
    let head = store.durable_seq();
    single(&mut out, "gatehouse_events_head_seq", "gauge", "Highest durable event seq.", head as f64);
    single(&mut out, "gatehouse_events_oldest_seq", "gauge", "Oldest retained event seq.", store.oldest_seq()? as f64);
    single(
        &mut out,
        "gatehouse_store_size_bytes",
        "gauge",
        "Store size on disk, as sled reports it.",
        store.size_on_disk() as f64,
    );
    if let Some(g) = state.metrics.cluster() {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        single(
            &mut out,
            "gatehouse_etcd_db_size_bytes",
            "gauge",
            "etcd's database size (cluster mode, on the leader).",
            get(&g.db_size),
        );
        single(
            &mut out,
            "gatehouse_etcd_records_since_snapshot",
            "gauge",
            "Batch records committed to etcd since the last snapshot (cluster mode).",
            get(&g.since_snapshot),
        );
        single(
            &mut out,
            "gatehouse_etcd_snapshot_lsn",
            "gauge",
            "Last batch the latest snapshot in etcd holds.",
            get(&g.snapshot_lsn),
        );
    }
    let stats = store.stats();
    header(
        &mut out,
        "gatehouse_journal_sync_seconds",
        "histogram",
        "One journal fdatasync (by the syncer, for every batch waiting).",
    );
    stats.sync_seconds.render(&mut out, "gatehouse_journal_sync_seconds", "");
    header(
        &mut out,
        "gatehouse_writer_batch_size",
        "histogram",
        "Commands in one writer batch (one journal record; one sync covers every batch waiting for it).",
    );
    stats.batch_size.render(&mut out, "gatehouse_writer_batch_size", "");
    header(
        &mut out,
        "gatehouse_deadline_lateness_seconds",
        "histogram",
        "Deadline firing time minus deadline (ejections, leases, expiries).",
    );
    stats.lateness_seconds.render(&mut out, "gatehouse_deadline_lateness_seconds", "");
    let hk = &state.housekeeping;
    single(
        &mut out,
        "gatehouse_housekeeping_runs_total",
        "counter",
        "Housekeeping sweeps run.",
        hk.runs.load(Relaxed) as f64,
    );
    single(
        &mut out,
        "gatehouse_revocations_purged_total",
        "counter",
        "Revocations purged by housekeeping.",
        hk.revocations_purged.load(Relaxed) as f64,
    );
    single(
        &mut out,
        "gatehouse_tokens_purged_total",
        "counter",
        "Issued-token records purged by housekeeping.",
        hk.tokens_purged.load(Relaxed) as f64,
    );
    single(
        &mut out,
        "gatehouse_events_compacted_total",
        "counter",
        "Events compacted away.",
        hk.events_compacted.load(Relaxed) as f64,
    );
    let hooks = store.webhooks()?;
    let per_hook =
        |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&crate::store::WebhookRecord) -> u64| {
            header(out, name, kind, help);
            for w in &hooks {
                let _ = writeln!(out, "{name}{{webhook=\"{}\"}} {}", label(&w.uuid), value(w));
            }
        };
    per_hook(&mut out, "gatehouse_webhook_deliveries_total", "counter", "Events delivered with a 2xx.", &|w| {
        w.successes
    });
    per_hook(&mut out, "gatehouse_webhook_failures_total", "counter", "Failed delivery attempts.", &|w| w.failures);
    per_hook(
        &mut out,
        "gatehouse_webhook_consecutive_failures",
        "gauge",
        "Failed attempts since the last success.",
        &|w| u64::from(w.failed_count),
    );
    per_hook(&mut out, "gatehouse_webhook_lag_events", "gauge", "Durable head minus the webhook's cursor.", &|w| {
        head.saturating_sub(w.cursor)
    });
    header(&mut out, "gatehouse_webhook_state", "gauge", "1 for the webhook's current state.");
    for w in &hooks {
        for s in ["ACTIVE", "FAILED", "INACTIVE"] {
            let _ = writeln!(
                out,
                "gatehouse_webhook_state{{webhook=\"{}\",state=\"{s}\"}} {}",
                label(&w.uuid),
                u8::from(w.state == s)
            );
        }
    }
    let mut r = Response::new(wire::full(bytes::Bytes::from(out)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

pub fn domain(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    Ok(ok(&domain_json(state, state.store.domain_config()?)))
}

/// The domain object: its id and name, and in `config` the settings made with `POST /v1/`
/// besides the server's own defaults.
fn domain_json(state: &AppState, settings: serde_json::Map<String, serde_json::Value>) -> R::Domain {
    let mut config = settings;
    config.insert("max_participants".into(), crate::rooms::DEFAULT_MAX_PARTICIPANTS.into());
    config.insert("token_leeway_seconds".into(), state.settings.token_leeway_secs.into());
    R::Domain { domain_id: state.domain_id(), domain_name: state.settings.domain_name.clone(), config }
}

/// `POST /v1/` `{"properties": {...}}`: changes the domain settings (a property set to `null`
/// is removed) and answers the domain object. Rooms created afterwards take the settings that
/// are room properties as their defaults.
pub async fn update_domain(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body: super::requests::DomainWrite = wire::read(state, req).await?;
    let patch = body.properties.unwrap_or_default();
    let patch = crate::rooms::validate_domain_patch(&patch).map_err(|e| ApiError::invalid(format!("domain {e}")))?;
    let config = state.store.submit(crate::store::SetDomain { patch }).await?;
    Ok(ok(&domain_json(state, config)))
}

/// Moves the server's clock: `{"advance_secs": n}` or `{"set_ms": t}`. Test builds only.
#[cfg(feature = "test-clock")]
pub async fn test_clock(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body = wire::read_object(state, req).await?;
    if let Some(secs) = body.get("advance_secs").and_then(serde_json::Value::as_f64) {
        state.test_clock.advance_ms((secs * 1000.0) as i64);
    } else if let Some(ms) = body.get("set_ms").and_then(serde_json::Value::as_i64) {
        state.test_clock.set_ms(ms);
    } else {
        return Err(ApiError::invalid("give 'advance_secs' or 'set_ms'"));
    }
    // Let the writer look at its deadlines again at once.
    state.store.tick().await;
    Ok(ok(&serde_json::json!({"now_ms": crate::clock::Clock::now_ms(state.test_clock.as_ref())})))
}

/// Injects a fault: `{"freeze_writer_ms": n}` stops the writer for n ms, `{"freeze_applier_ms":
/// n}` the applier (answers at once). Test builds only.
#[cfg(feature = "test-clock")]
pub async fn test_faults(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body = wire::read_object(state, req).await?;
    let (writer, ms) = match (body.get("freeze_writer_ms"), body.get("freeze_applier_ms")) {
        (Some(v), None) => (true, v.as_u64()),
        (None, Some(v)) => (false, v.as_u64()),
        _ => (true, None),
    };
    let ms = ms.ok_or_else(|| ApiError::invalid("give 'freeze_writer_ms' or 'freeze_applier_ms'"))?;
    let store = state.store.clone();
    tokio::spawn(async move { store.freeze(writer, ms).await });
    Ok(ok(&serde_json::json!({"frozen_ms": ms})))
}

/// `GET /v1/backup`: a consistent snapshot of the store (and the data dir's API key file).
/// The writer copies it into an unlinked temporary file in the data dir (busy for as long as a
/// local copy takes, never for as long as the client takes to read), then the file is streamed
/// from its own task: a client that reads slowly, or not at all, holds only its own connection,
/// and the file's space is freed when the response ends.
pub async fn backup(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let dir = &state.settings.data_dir;
    let file = anonymous_file(dir).map_err(|e| {
        tracing::error!(error = %e, "cannot create the backup's temporary file");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server-error", "cannot create a temporary file for the backup")
    })?;
    let sink_file = file.try_clone().map_err(|_| ApiError::internal("backup"))?;
    let sink = crate::store::BackupSink(Box::new(std::io::BufWriter::with_capacity(256 * 1024, sink_file)));
    let files = std::fs::read(dir.join("api_key")).map(|k| vec![("api_key", k)]).unwrap_or_default();
    let records = state.store.backup(sink, files).await?;
    let len = file.metadata().map(|m| m.len()).map_err(|_| ApiError::internal("backup"))?;
    tracing::info!(records, bytes = len, "backup taken; streaming it");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(stream_file(tokio::fs::File::from_std(file), tx));
    let mut r = super::participants::sse_response(rx);
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/octet-stream"));
    h.insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(len));
    Ok(r)
}

/// A new file in `dir`, already unlinked: only the open handle reaches it.
fn anonymous_file(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = [0u8; 8];
    rand::fill(&mut name);
    let path = dir.join(format!(".backup-{}.tmp", name.iter().map(|b| format!("{b:02x}")).collect::<String>()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// Sends the file from its start in 256 KiB chunks; stops when the client is gone.
async fn stream_file(mut file: tokio::fs::File, tx: tokio::sync::mpsc::Sender<bytes::Bytes>) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    if file.seek(std::io::SeekFrom::Start(0)).await.is_err() {
        return;
    }
    loop {
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.send(bytes::Bytes::from(buf)).await.is_err() {
                    return;
                }
            }
        }
    }
}
