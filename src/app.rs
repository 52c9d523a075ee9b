//! Wiring, in the order it happens: data dir, API keys, clock, store (and its writer), HTTP
//! server; then one shutdown signal, and an ordered teardown (stop accepting, let requests
//! finish within the grace period, flush the store, exit). The only code that handles OS signals.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::sync::watch;

use crate::api::{self, ApiSettings, AppState};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::store::{Store, StoreOptions};
use crate::tokens::KeyRing;

/// File in the data dir holding the generated API key.
const KEY_FILE: &str = "api_key";
/// File in the data dir holding the domain id, for `gatehouse token` (which must not open the
/// store while a server holds it).
const DOMAIN_FILE: &str = "domain_id";

/// Runs the server: a single node, or (with `--store etcd`) a cluster node, which keeps a
/// replica of the store and answers reads from it (forwarding the rest to the leader) until
/// elected, then leads until it stops (see `cluster::node`).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let Some(cfg) = settings.etcd.clone() else {
        return run_with(settings, None).await;
    };
    let (mut node, listener) = crate::cluster::node::Node::join(&settings, cfg).await?;
    // One front for the node's whole life: it forwards while the node loads, answers reads
    // from the replica (forwarding the rest) while it follows, and answers everything itself,
    // on the same connections, once it leads.
    let limits = conn_limits(&settings);
    let front = api::Front::start(listener, api::Mode::Forward(node.forwarder()), limits, Arc::default(), None)?;
    // A fresh local store, rebuilt from what the cluster committed.
    create_data_dir(&settings.data_dir)?;
    let floor = node.load(&settings.data_dir).await?;
    run_with(settings, Some(Cluster { node, front, floor })).await
}

/// A cluster node on its way into [`run_with`]: its front (forwarding), and the snapshot its
/// data dir was loaded from.
struct Cluster {
    node: crate::cluster::node::Node,
    front: api::Front,
    floor: u64,
}

/// The server on this data dir; `cluster`: a cluster node, whose store opens as a replica and
/// which leads once elected.
async fn run_with(settings: Settings, cluster: Option<Cluster>) -> anyhow::Result<()> {
    let (hooks, front, mut node) = match cluster {
        Some(c) => (Some(c.node.replica_hooks(c.floor)), Some(c.front), Some(c.node)),
        None => (None, None, None),
    };
    create_data_dir(&settings.data_dir)?;
    let keys = load_keys(&settings)?;

    #[cfg(feature = "test-clock")]
    let test_clock = Arc::new(crate::clock::OffsetClock::default());
    #[cfg(feature = "test-clock")]
    let clock: SharedClock = test_clock.clone();
    #[cfg(not(feature = "test-clock"))]
    let clock: SharedClock = Arc::new(crate::clock::SystemClock);

    let bound = match front {
        Some(f) => Err(f),
        None => Ok(tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?),
    };
    let addr = match &bound {
        Ok(listener) => listener.local_addr()?,
        Err(front) => front.local_addr(),
    };
    let acme_certs = settings.acme.as_ref().map(|_| Arc::new(crate::api::AcmeCerts::default()));
    let tls = match (&settings.tls, &acme_certs) {
        (Some((cert, key)), _) => {
            Some(Arc::new(crate::api::Tls::load(cert.clone(), key.clone()).map_err(|e| anyhow::anyhow!(e))?))
        }
        (None, Some(certs)) => Some(Arc::new(crate::api::Tls::acme(certs.clone()).map_err(|e| anyhow::anyhow!(e))?)),
        (None, None) => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    // With --acme-domain the rooms' links name the domain (the CA reached it on port 443).
    let public_url = settings.public_url.clone().unwrap_or_else(|| match &settings.acme {
        Some(a) => format!("https://{}", a.domains[0]),
        None => format!("{scheme}://{addr}"),
    });

    let opts = StoreOptions {
        path: settings.data_dir.join("store"),
        cache_bytes: settings.cache_bytes,
        background_flush_ms: settings.sled_flush_every_ms,
        sync: settings.sync,
        public_url: public_url.clone(),
        lease_ms: settings.lease_ms,
        queue: settings.writer_queue,
        shed_after: settings.shed_after,
        stall_after: settings.stall_after,
        large_room: settings.large_room,
        segment_bytes: settings.event_segment_bytes,
    };
    let opened = std::time::Instant::now();
    let store = tokio::task::spawn_blocking({
        let clock = clock.clone();
        move || Store::open_with(opts, clock, hooks)
    })
    .await?
    .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?;
    tracing::info!(millis = opened.elapsed().as_millis() as u64, head_seq = store.durable_seq(), "store open");
    let domain = store.domain_id().to_string();
    if std::fs::read_to_string(settings.data_dir.join(DOMAIN_FILE)).ok().as_deref() != Some(domain.as_str()) {
        crate::disk::write_atomic(&settings.data_dir.join(DOMAIN_FILE), domain.as_bytes())
            .context("writing the domain id file")?;
    }

    let api_settings = ApiSettings {
        public_url,
        domain_name: settings.domain_name.clone(),
        body_limit: settings.body_limit,
        token_leeway_secs: settings.token_leeway_secs,
        lease_ms: settings.lease_ms,
        join_rate: settings.join_rate,
        join_burst: settings.join_burst,
        trusted_proxies: settings.trusted_proxies.clone(),
        node_secret: settings.etcd.as_ref().and(settings.api_keys.first()).map(|k| crate::cluster::node_secret(k)),
        metrics_public: settings.metrics_public,
        data_dir: settings.data_dir.clone(),
        conn: conn_limits(&settings),
        max_event_streams_per_key: settings.max_event_streams_per_key,
        max_streams_per_session: settings.max_streams_per_session,
        max_bans_per_room: settings.max_bans_per_room,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let outbound = crate::webhooks::Outbound::new(settings.webhook_deny_private, settings.webhook_timeout)
        .map_err(|e| anyhow::anyhow!("webhook client: {e}"))?;
    let mut state = AppState::new(
        store.clone(),
        keys,
        clock,
        api_settings,
        shutdown_rx.clone(),
        outbound.clone(),
        #[cfg(feature = "test-clock")]
        test_clock,
    );
    if let Err(front) = &bound {
        state.conn_metrics = front.metrics();
    }
    // With --janus-url: Janus's VideoRoom rooms follow the store's rooms, and admissions hand
    // out its credentials.
    let mirror = match &settings.janus {
        Some(j) => {
            let secret = crate::janus::room_secret_key(&settings.data_dir)
                .with_context(|| format!("the Janus room secret in {}", settings.data_dir.display()))?;
            // Browsers reach Janus through this server (`/janus`, the same origin and
            // certificate) unless --janus-public-url names another way.
            let relayed_at = format!("{}/janus", state.settings.public_url);
            let mirror = Arc::new(crate::janus::Mirror::new(
                crate::janus::Janus::new(j, &relayed_at).map_err(|e| anyhow::anyhow!(e))?,
                store.clone(),
                state.clock.clone(),
                secret,
            ));
            state.metrics.set_janus(mirror.stats.clone());
            state.janus = Some(mirror.clone());
            Some(mirror)
        }
        None => None,
    };
    let state = Arc::new(state);
    // Serving from here (a cluster follower answers reads from its replica): systemd's start
    // is over, and its watchdog watches the store from now on.
    let systemd = SdNotify::from_env();
    systemd.send("READY=1");
    let watchdog = tokio::spawn(watch_store(store.clone(), systemd.clone(), shutdown_rx.clone()));
    // A cluster node: reads from the replica while it follows; then leads.
    let mut stopped_following = false;
    if let (Some(n), Err(front)) = (node.as_mut(), &bound) {
        let replica = n.replicate_into(store.clone());
        front.replica(state.clone(), n.forwarder(), replica);
        match n.follow().await {
            Some(fence) => state.metrics.set_cluster(n.take_over(&settings.data_dir, fence, &store).await?),
            None => stopped_following = true,
        }
    }
    if stopped_following {
        // Stopped by a signal while following.
        systemd.send("STOPPING=1");
        let _ = shutdown_tx.send(true);
        let _ = watchdog.await;
        if let Err(front) = bound {
            front.close(settings.shutdown_grace).await;
        }
        if let Some(n) = &node {
            n.stop_following();
        }
        store.close().await;
        if let Some(n) = node {
            n.step_down().await;
        }
        return Ok(());
    }
    if let Some((cert, _)) = &settings.tls {
        note_certificate(cert, &state.metrics.certificate_not_after);
    }
    // With --acme-domain: the stored certificate is served at once; the task obtains the first
    // one, and renews.
    let acme = match (&settings.acme, acme_certs) {
        (Some(acme_settings), Some(certs)) => {
            let acme = crate::acme::Acme::new(
                acme_settings.clone(),
                store.clone(),
                certs,
                state.clock.clone(),
                state.metrics.certificate_not_after.clone(),
                settings.data_dir.clone(),
            );
            match acme.load() {
                Ok(Some(names)) => tracing::info!(domains = %names.join(","), "acme: serving the stored certificate"),
                Ok(None) => tracing::warn!(
                    domains = %acme_settings.domains.join(","),
                    "acme: no certificate yet; obtaining one (HTTPS clients are refused until then)"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "acme: the stored certificate cannot be served; obtaining a new one")
                }
            }
            let renew = acme.renew_now.clone();
            Some((tokio::spawn(acme.run(shutdown_rx.clone())), renew))
        }
        _ => None,
    };
    // The deadlines are the writer's: from here overdue state is enforced by check-on-read,
    // and the writer fires what is due right away.
    let deliveries =
        tokio::spawn(crate::webhooks::run(store.clone(), outbound, state.clock.clone(), shutdown_rx.clone()));
    let session_streams = tokio::spawn(api::session_stream::run_background(state.clone()));
    let mut housekeeping = crate::scheduler::start_housekeeping(
        &settings.housekeeping_cron,
        store.clone(),
        settings.retention,
        state.housekeeping.clone(),
    )
    .await
    .with_context(|| format!("--housekeeping-cron '{}' (six fields, seconds first)", settings.housekeeping_cron))?;

    state.ready.store(true, Ordering::SeqCst);
    // Tests and scripts read this line to find the port when listening on :0. Whoever reads
    // stdout may be gone (a closed pipe): that is no reason to stop serving.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "gatehouse listening on {scheme}://{addr}");
        let _ = out.flush();
    }

    let front = match bound {
        Ok(listener) => api::Front::start(
            listener,
            api::Mode::Serve(state.clone()),
            state.settings.conn.clone(),
            state.conn_metrics.clone(),
            tls.clone(),
        )?,
        Err(front) => {
            front.serve(state.clone());
            front
        }
    };
    let janus = mirror.map(|m| tokio::spawn(m.run(shutdown_rx.clone())));
    let renew = acme.as_ref().map(|(_, renew)| renew.clone());
    wait_for_signal(tls, renew, &state.metrics.certificate_not_after, settings.tls.as_ref().map(|(c, _)| c.clone()))
        .await?;
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    state.ready.store(false, Ordering::SeqCst);
    systemd.send("STOPPING=1");
    let _ = shutdown_tx.send(true);
    let _ = watchdog.await;
    front.close(settings.shutdown_grace).await;
    if let Some((task, _)) = acme {
        task.abort(); // an order in flight is given up; the stored certificate stays
    }
    if let Some(task) = janus {
        let _ = task.await;
    }
    let _ = deliveries.await;
    let _ = session_streams.await;
    let _ = housekeeping.shutdown().await;
    store.close().await;
    if let Some(node) = node {
        node.step_down().await;
    }
    tracing::info!("store flushed; bye");
    Ok(())
}

/// systemd's notify protocol (`sd_notify`): `READY=1` once serving, `WATCHDOG=1` while the
/// store makes progress, `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` it does nothing.
#[derive(Clone)]
struct SdNotify {
    socket: Option<Arc<(std::os::unix::net::UnixDatagram, std::os::unix::net::SocketAddr)>>,
    /// Half of `WATCHDOG_USEC`, when systemd asked for watchdog pings.
    ping_every: Option<std::time::Duration>,
}

impl SdNotify {
    fn from_env() -> SdNotify {
        let ping_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us > 0)
            .map(|us| std::time::Duration::from_micros(us / 2));
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
            Some(Arc::new((sock, addr)))
        });
        SdNotify { socket, ping_every }
    }

    fn send(&self, msg: &str) {
        if let Some(s) = &self.socket {
            if let Err(e) = s.0.send_to_addr(msg.as_bytes(), &s.1) {
                tracing::warn!(error = %e, "could not notify systemd");
            }
        }
    }
}

/// Watches the store: while no thread is stuck, feeds systemd's watchdog; when one is, stops
/// feeding it (systemd restarts the unit; the journal keeps every acknowledged write) and says
/// why in the status. `/readyz` and the log say so too (the store logs the error once).
async fn watch_store(store: Store, systemd: SdNotify, mut shutdown: watch::Receiver<bool>) {
    let every = systemd.ping_every.unwrap_or(std::time::Duration::from_secs(1)).min(std::time::Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    let mut was_stalled = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match store.stalled() {
            None => {
                if was_stalled {
                    tracing::info!("the store makes progress again");
                    systemd.send("STATUS=serving");
                    was_stalled = false;
                }
                if systemd.ping_every.is_some() {
                    systemd.send("WATCHDOG=1");
                }
            }
            Some(why) => {
                if !was_stalled {
                    systemd.send(&format!("STATUS=stuck: {why}"));
                    was_stalled = true;
                }
            }
        }
    }
}

/// Records when the certificate in `file` expires, for `/metrics`.
fn note_certificate(file: &Path, not_after: &std::sync::atomic::AtomicI64) {
    if let Some((_, at)) = std::fs::read(file).ok().and_then(|pem| crate::api::validity(&pem)) {
        not_after.store(at, Ordering::Relaxed);
    }
}

/// Waits for SIGINT/SIGTERM; on SIGHUP re-reads the TLS certificate and key, or with ACME
/// renews the certificate now.
async fn wait_for_signal(
    tls: Option<Arc<crate::api::Tls>>,
    renew: Option<Arc<tokio::sync::Notify>>,
    not_after: &std::sync::atomic::AtomicI64,
    cert_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match (&tls, &renew) {
                (_, Some(renew)) => renew.notify_one(),
                (Some(t), None) => match t.reload() {
                    Ok(()) => {
                        if let Some(f) = &cert_file {
                            note_certificate(f, not_after);
                        }
                        tracing::info!("SIGHUP: TLS certificate and key re-read");
                    }
                    Err(e) => tracing::error!(error = %e, "SIGHUP: could not re-read the TLS files; keeping the old ones"),
                },
                (None, None) => tracing::info!("SIGHUP ignored (no TLS configured)"),
            },
        }
    }
}

/// Raises the soft limit on open files to the hard limit (connections are files) and returns
/// the limit in force.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!(from = before, to = lim.rlim_cur, "raised the open-file limit to its hard limit");
                return lim.rlim_cur;
            }
            tracing::warn!(soft = before, hard = lim.rlim_max, "could not raise the open-file limit");
        }
        before
    }
}

/// The default connection cap for an open-file limit: keep 512 descriptors for the store, the
/// journal and outbound webhooks; at least 16, at most 100,000.
/// The connection limits and deadlines every front (the API's, a cluster follower's) keeps;
/// raises the open-file limit first, which bounds the default connection cap.
pub(crate) fn conn_limits(settings: &Settings) -> crate::api::conn::Limits {
    let fd_limit = raise_fd_limit();
    let max_connections = settings.max_connections.unwrap_or_else(|| connections_for(fd_limit));
    tracing::info!(fd_limit, max_connections, "connection limit");
    crate::api::conn::Limits {
        head_timeout: settings.head_timeout,
        body_timeout: settings.body_timeout,
        idle_timeout: settings.idle_timeout,
        tls_handshake_timeout: settings.tls_handshake_timeout,
        max_connections,
        max_unauthenticated_per_address: settings.max_connections_per_address,
        trusted_proxies: settings.trusted_proxies.clone(),
    }
}

fn connections_for(fd_limit: u64) -> usize {
    usize::try_from(fd_limit.saturating_sub(512).clamp(16, 100_000)).unwrap_or(16)
}

/// Creates the data dir (0700, its name durable in its parent), or checks the one there: it
/// must belong to the user the server runs as (another user's is refused, as PostgreSQL
/// refuses it), and anything in it that others could read or enter is made private (0700
/// folders, 0600 files: webhook secrets and the API key live there), saying so in the log.
pub(crate) fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    crate::disk::create_dir_all(dir).with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let owner = std::fs::metadata(dir)?.uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if owner != me {
        bail!(
            "data dir {} belongs to uid {owner}, but the server runs as uid {me}; \
             run it as the dir's owner or `chown -R {me} {}`",
            dir.display(),
            dir.display()
        );
    }
    let changed = make_private(dir, 3)?;
    if changed > 0 {
        tracing::info!(dir = %dir.display(), changed, "made the data dir private (folders 0700, files 0600)");
    }
    Ok(())
}

/// Takes group and other permissions off `path` and, `depth` levels down, what it holds;
/// returns how many it changed.
fn make_private(path: &Path, depth: u32) -> anyhow::Result<usize> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut changed = 0;
    let mode = meta.permissions().mode() & 0o7777;
    let private = if meta.is_dir() { crate::disk::DIR_MODE } else { crate::disk::FILE_MODE };
    if !meta.file_type().is_symlink() && mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & private))
            .with_context(|| format!("making {} private", path.display()))?;
        changed += 1;
    }
    if meta.is_dir() && depth > 0 {
        for entry in std::fs::read_dir(path)? {
            changed += make_private(&entry?.path(), depth - 1)?;
        }
    }
    Ok(changed)
}

/// Keys from `GATEHOUSE_API_KEY`; else the data dir's key file; else a new key, written there
/// (mode 0600) and printed once.
fn load_keys(settings: &Settings) -> anyhow::Result<KeyRing> {
    if !settings.api_keys.is_empty() {
        return KeyRing::new(&settings.api_keys).map_err(|e| anyhow::anyhow!("GATEHOUSE_API_KEY: {e}"));
    }
    let path = settings.data_dir.join(KEY_FILE);
    if path.exists() {
        let key = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let key = key.trim().to_string();
        if key.is_empty() {
            bail!("{} is empty; delete it to generate a new key", path.display());
        }
        tracing::info!(file = %path.display(), "using the API key stored in the data dir");
        return KeyRing::new(&[key]).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let key = generate_key();
    // Whole or absent after a power cut, and durable before it is shown.
    crate::disk::write_atomic(&path, format!("{key}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "Generated a new API key. It is shown only this once and stored in {} (mode 0600):\n\n    {key}\n",
        path.display()
    );
    KeyRing::new(&[key]).map_err(|e| anyhow::anyhow!("{e}"))
}

/// 256 random bits from the OS-seeded CSPRNG, as 64 hex characters.
pub fn generate_key() -> String {
    crate::tokens::random_hex(32)
}

/// The keys a CLI command uses: `GATEHOUSE_API_KEY`, else the data dir's key file. Never empty.
fn configured_keys(api_key_env: Option<String>, data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let from_env = crate::config::split_keys(&api_key_env.unwrap_or_default());
    if !from_env.is_empty() {
        return Ok(from_env);
    }
    let path = data_dir.join(KEY_FILE);
    let key = std::fs::read_to_string(&path)
        .with_context(|| format!("no GATEHOUSE_API_KEY and no key file at {}", path.display()))?;
    anyhow::ensure!(!key.trim().is_empty(), "{} is empty", path.display());
    Ok(vec![key.trim().to_string()])
}

/// `gatehouse token`: a token signed with the configured key, with the claims the API gives
/// (`d` from the data dir when a server has run there; the `jti` is not recorded).
pub fn mint_token(args: &crate::config::TokenArgs, api_key_env: Option<String>) -> anyhow::Result<String> {
    let keys = configured_keys(api_key_env, &args.data_dir)?;
    let ring = KeyRing::new(&keys).map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let mut props = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        props.insert(k.to_string(), v);
    };
    if let Some(r) = &args.room {
        put("room_name", r.clone().into());
    }
    if args.owner {
        put("is_owner", true.into());
    }
    if let Some(e) = &args.exp {
        let secs = crate::config::parse_duration_secs(e)
            .ok_or_else(|| anyhow::anyhow!("--exp: give seconds or 90s/30m/1h/2d"))?;
        let exp = i64::try_from(secs).ok().and_then(|s| now.checked_add(s));
        put("exp", exp.ok_or_else(|| anyhow::anyhow!("--exp: too far in the future"))?.into());
    }
    if let Some(u) = &args.user_id {
        put("user_id", u.clone().into());
    }
    if let Some(u) = &args.user_name {
        put("user_name", u.clone().into());
    }
    if let Some(s) = args.eject_after_elapsed {
        put("eject_after_elapsed", s.into());
    }
    if args.eject_at_token_exp {
        put("eject_at_token_exp", true.into());
    }
    let props = crate::tokens::TokenProps::validate(&props).map_err(|e| anyhow::anyhow!("{e}"))?;
    let domain = std::fs::read_to_string(args.data_dir.join(DOMAIN_FILE)).ok().map(|d| d.trim().to_string());
    let jti = uuid::Uuid::now_v7().to_string();
    crate::tokens::sign_for(ring.primary(), &props, domain.as_deref(), now, &jti).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `gatehouse backup`: from a running server (`--server`), or straight from a stopped data dir.
pub async fn backup(args: &crate::config::BackupArgs, api_key_env: Option<String>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = args.file.with_extension("partial");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    match &args.server {
        Some(server) => {
            // The first configured key (the list is never empty): any active key may call the API.
            let key = configured_keys(api_key_env, &args.data_dir)?.remove(0);
            let client = crate::webhooks::Outbound::raw_client().map_err(|e| anyhow::anyhow!(e))?;
            let mut res = client
                .get(format!("{}/v1/backup", server.trim_end_matches('/')))
                .bearer_auth(key)
                .send()
                .await
                .with_context(|| format!("asking {server} for a backup"))?;
            anyhow::ensure!(res.status().is_success(), "the server answered {}", res.status());
            let progress = Progress::new("backup: receiving");
            let total = res.content_length();
            let mut done = 0u64;
            while let Some(chunk) = res.chunk().await? {
                out.write_all(&chunk)?;
                done += chunk.len() as u64;
                progress.bytes(done, total);
            }
            progress.done();
        }
        None => {
            let opts = StoreOptions {
                path: args.data_dir.join("store"),
                cache_bytes: 64 << 20,
                background_flush_ms: None,
                sync: crate::store::SyncMode::Fdatasync,
                public_url: String::new(),
                lease_ms: 30_000,
                queue: 4096,
                shed_after: std::time::Duration::from_secs(60),
                stall_after: std::time::Duration::from_secs(30),
                large_room: crate::store::fanout::DEFAULT_LARGE_ROOM,
                segment_bytes: crate::store::eventlog::SEGMENT_BYTES,
            };
            let store = Store::open(opts, Arc::new(crate::clock::SystemClock)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open {} ({e}); if a server is running on it, use --server http://127.0.0.1:7070",
                    args.data_dir.display()
                )
            })?;
            let files = std::fs::read(args.data_dir.join(KEY_FILE)).map(|k| vec![("api_key", k)]).unwrap_or_default();
            let counted = Counted {
                inner: std::io::BufWriter::new(out.try_clone()?),
                done: 0,
                progress: Progress::new("backup: writing"),
            };
            let sink = crate::store::BackupSink(Box::new(counted));
            let r = store.backup(sink, files).await;
            store.close().await;
            r?;
        }
    }
    out.sync_all()?;
    // A backup cut short has no valid checksum; check before keeping it.
    let check = tempfile_dir_for(&args.file)?;
    let progress = Progress::new("backup: verifying");
    crate::store::restore(&tmp, &check, &mut |done, total| progress.bytes(done, Some(total)))
        .map_err(|e| anyhow::anyhow!("the backup does not verify: {e}"))?;
    progress.done();
    let _ = std::fs::remove_dir_all(&check);
    std::fs::rename(&tmp, &args.file)?;
    crate::disk::sync_dir(crate::disk::parent_of(&args.file))?;
    println!("backup written to {}", args.file.display());
    Ok(())
}

fn tempfile_dir_for(file: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = file.with_extension(format!("verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(dir)
}

/// `gatehouse restore <file> --data-dir <dir>`.
pub fn restore(args: &crate::config::RestoreArgs) -> anyhow::Result<()> {
    if let Some(etcd) = crate::config::etcd_settings(&args.cluster)? {
        anyhow::ensure!(args.data_dir.is_none(), "--data-dir is for a restore into a data dir, not into etcd");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let r = rt.block_on(crate::cluster::node::restore_into(&etcd, &args.file))?;
        println!("restored {} records into etcd under '{}'; start the nodes (with the same API key)", r, etcd.prefix);
        return Ok(());
    }
    let data_dir = args.data_dir.as_ref().context("restore needs --data-dir (or --store etcd and its settings)")?;
    create_data_dir(data_dir)?;
    let progress = Progress::new("restore");
    let r = crate::store::restore(&args.file, data_dir, &mut |done, total| progress.bytes(done, Some(total)))?;
    progress.done();
    println!("restored {} records ({} file(s)) into {}", r.records, r.files, data_dir.display());
    Ok(())
}

/// Progress of long CLI work (backup, restore), rewritten in place on stderr at most five times
/// a second when stderr is a terminal; silent when it is not (pipes, files, journald).
struct Progress {
    what: &'static str,
    on: bool,
    last: std::cell::Cell<Option<std::time::Instant>>,
    shown: std::cell::Cell<bool>,
}

impl Progress {
    fn new(what: &'static str) -> Progress {
        use std::io::IsTerminal;
        Progress { what, on: std::io::stderr().is_terminal(), last: Default::default(), shown: Default::default() }
    }

    fn bytes(&self, done: u64, total: Option<u64>) {
        let due = self.last.get().is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(200));
        if !self.on || !due {
            return;
        }
        self.last.set(Some(std::time::Instant::now()));
        self.shown.set(true);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        match total.filter(|t| *t > 0) {
            Some(t) => eprint!(
                "\r{}: {:.1} of {:.1} MiB ({:.0}%)   ",
                self.what,
                mib(done),
                mib(t),
                done as f64 * 100.0 / t as f64
            ),
            None => eprint!("\r{}: {:.1} MiB   ", self.what, mib(done)),
        }
    }

    /// Ends the line (when anything was shown).
    fn done(&self) {
        if self.on && self.shown.get() {
            eprintln!(" done");
        }
    }
}

/// A writer that reports how much went through it.
struct Counted<W> {
    inner: W,
    done: u64,
    progress: Progress,
}

impl<W: std::io::Write> std::io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        self.progress.bytes(self.done, None);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
