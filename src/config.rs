//! Settings: parsed once from flags and `GATEHOUSE_*` environment variables (flags win), then
//! validated into [`Settings`], which is passed explicitly to whoever needs it (never global).
//!
//! Must not: open files or sockets; `app` does that with the validated settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::SyncMode;

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    about = "Self-hosted access control for video calls (Daily-compatible REST API)"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve`'s options, so that plain `gatehouse` serves.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default command).
    Serve(ServeArgs),
    /// API key tools.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Mint a meeting token offline with the configured API key (GATEHOUSE_API_KEY, else the
    /// data dir's key), with the same claims the API gives. Prints the token.
    Token(TokenArgs),
    /// Write a consistent backup of a data dir (stopped), or of a running server (--server).
    Backup(BackupArgs),
    /// Restore a backup into an empty data dir.
    Restore(RestoreArgs),
    /// Convert a stopped data dir written by an older Gatehouse to this version's format (the
    /// server also does this on its first start; this does it on its own, e.g. before an upgrade
    /// window ends).
    Migrate(MigrateArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate the configuration (file, environment, flags) and print the effective settings,
    /// secrets masked.
    Check(ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Where to write the backup (it holds the API key: keep it private).
    pub file: PathBuf,
    /// The data dir of a stopped server (and where its key file is).
    #[arg(long, env = "GATEHOUSE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// A running server to back up, e.g. http://127.0.0.1:7070 (uses GATEHOUSE_API_KEY or the data dir's key).
    #[arg(long)]
    pub server: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// The data dir of a stopped server.
    #[arg(long, env = "GATEHOUSE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    pub file: PathBuf,
    /// An empty (or missing) data dir to restore into (with the default --store sled).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// With --store etcd: restore into an etcd cluster's empty prefix instead (start the nodes
    /// afterwards, with the API key the backup was made under).
    #[command(flatten)]
    pub cluster: EtcdArgs,
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// Room the token is for (omit for any room).
    #[arg(long)]
    pub room: Option<String>,
    /// An owner token (may eject).
    #[arg(long)]
    pub owner: bool,
    /// Expires after this long: seconds, or with a unit (90s, 30m, 1h, 2d).
    #[arg(long)]
    pub exp: Option<String>,
    #[arg(long)]
    pub user_id: Option<String>,
    #[arg(long)]
    pub user_name: Option<String>,
    /// Eject the holder this many seconds after joining.
    #[arg(long)]
    pub eject_after_elapsed: Option<u64>,
    /// Eject the holder when the token expires.
    #[arg(long)]
    pub eject_at_token_exp: bool,
    /// Where the generated API key and the domain id are.
    #[arg(long, env = "GATEHOUSE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// `90`, `90s`, `30m`, `1h`, `2d` → seconds.
pub fn parse_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Print a new strong API key (256 random bits, hex).
    Generate,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncArg {
    /// sled flush, then fdatasync of the store file: acknowledged writes survive a power cut.
    Fdatasync,
    /// sled flush only (sync_file_range): acknowledged writes survive a process crash.
    Flush,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// A TOML file of settings (keys are the flag names with `_`, e.g. `data_dir = "/var/lib/gatehouse"`).
    /// Precedence: flags, then environment, then this file, then defaults.
    #[arg(long, env = "GATEHOUSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "GATEHOUSE_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Data directory (created mode 0700).
    #[arg(long, env = "GATEHOUSE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Public base URL for room URLs; defaults to http://<listen>.
    #[arg(long, env = "GATEHOUSE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Name shown by GET /v1/.
    #[arg(long, env = "GATEHOUSE_DOMAIN_NAME", default_value = "gatehouse")]
    pub domain_name: String,
    /// What an acknowledged write survives.
    #[arg(long, env = "GATEHOUSE_SYNC", value_enum, default_value = "fdatasync")]
    pub sync: SyncArg,
    /// sled page cache size in MiB.
    #[arg(long, env = "GATEHOUSE_CACHE_MB", default_value_t = 64)]
    pub cache_mb: u64,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "GATEHOUSE_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// Tolerance in seconds on token nbf/exp.
    #[arg(long, env = "GATEHOUSE_TOKEN_LEEWAY_SECS", default_value_t = 0)]
    pub token_leeway_secs: u64,
    /// Seconds in-flight requests get to finish at shutdown.
    #[arg(long, env = "GATEHOUSE_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Presence lease in seconds: a session not heard from for this long leaves (reason `timeout`).
    #[arg(long, env = "GATEHOUSE_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,
    /// Join attempts allowed per client address per second (sustained).
    #[arg(long, env = "GATEHOUSE_JOIN_RATE", default_value_t = 5.0)]
    pub join_rate: f64,
    /// Join attempts a client address may make in a burst.
    #[arg(long, env = "GATEHOUSE_JOIN_BURST", default_value_t = 50)]
    pub join_burst: u32,
    /// Proxy addresses whose X-Forwarded-For is trusted (comma-separated IPs).
    #[arg(long, env = "GATEHOUSE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Refuse webhook targets in private, loopback, link-local and shared address ranges
    /// (checked at connect time for every request). Off by default: on one VM the receiver is often local.
    #[arg(long, env = "GATEHOUSE_WEBHOOK_DENY_PRIVATE")]
    pub webhook_deny_private: bool,
    /// Events older than this are compacted away (unless an active webhook still needs them).
    #[arg(long, env = "GATEHOUSE_EVENTS_RETENTION_SECS", default_value_t = 30 * 24 * 3600)]
    pub events_retention_secs: u64,
    /// The event log is compacted above this size (unless an active webhook still needs the events).
    #[arg(long, env = "GATEHOUSE_EVENTS_MAX_MB", default_value_t = 1024)]
    pub events_max_mb: u64,
    /// Hard limit: compaction passes even active webhooks' cursors (and marks them) above this.
    #[arg(long, env = "GATEHOUSE_EVENTS_HARD_MAX_MB", default_value_t = 4096)]
    pub events_hard_max_mb: u64,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key); re-read on SIGHUP.
    #[arg(long, env = "GATEHOUSE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert; re-read on SIGHUP.
    #[arg(long, env = "GATEHOUSE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate for this domain from an ACME CA (Let's Encrypt by
    /// default), obtained, stored and renewed by the server (repeat it, or separate with commas,
    /// for several names). The CA checks the domain with tls-alpn-01 on this server's port,
    /// which must be port 443 as the CA reaches it.
    #[arg(long = "acme-domain", env = "GATEHOUSE_ACME_DOMAIN", value_delimiter = ',', conflicts_with = "tls_cert")]
    pub acme_domain: Vec<String>,
    /// Contact address given to the ACME CA (expiry warnings, account recovery).
    #[arg(long, env = "GATEHOUSE_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// The ACME directory. Let's Encrypt's staging one, for trying things out without its rate
    /// limits: https://acme-staging-v02.api.letsencrypt.org/directory
    #[arg(long, env = "GATEHOUSE_ACME_DIRECTORY", default_value = LETS_ENCRYPT)]
    pub acme_directory: String,
    /// A PEM CA certificate to trust for the ACME directory's own HTTPS, instead of the
    /// system's roots (a private CA; tests).
    #[arg(long, env = "GATEHOUSE_ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// Janus's HTTP API as this server reaches it (e.g. http://127.0.0.1:8088/janus): keep one
    /// VideoRoom room per live room there.
    #[arg(long, env = "GATEHOUSE_JANUS_URL")]
    pub janus_url: Option<String>,
    /// Janus's API as browsers reach it, handed to admitted participants (default: this
    /// server's own relay, <public URL>/janus, on the same origin and certificate).
    #[arg(long, env = "GATEHOUSE_JANUS_PUBLIC_URL")]
    pub janus_public_url: Option<String>,
    /// The VideoRoom plugin's `admin_key` (janus.plugin.videoroom.jcfg), if it sets one.
    #[arg(long, env = "GATEHOUSE_JANUS_ADMIN_KEY")]
    pub janus_admin_key: Option<String>,
    /// Janus's Admin API (e.g. http://127.0.0.1:7088/admin), with --janus-admin-secret.
    #[arg(long, env = "GATEHOUSE_JANUS_ADMIN_URL", requires = "janus_admin_secret")]
    pub janus_admin_url: Option<String>,
    /// Janus's `admin_secret` (janus.jcfg).
    #[arg(long, env = "GATEHOUSE_JANUS_ADMIN_SECRET", requires = "janus_admin_url")]
    pub janus_admin_secret: Option<String>,
    /// Serve /metrics without an API key (for a scraper on a private network).
    #[arg(long, env = "GATEHOUSE_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Webhook request timeout in ms (tests shorten it).
    #[arg(long, env = "GATEHOUSE_WEBHOOK_TIMEOUT_MS", default_value_t = 15_000, hide = true)]
    pub webhook_timeout_ms: u64,
    /// When housekeeping runs (six-field cron, seconds first): purges dead revocations and token records.
    #[arg(long, env = "GATEHOUSE_HOUSEKEEPING_CRON", default_value = "0 */5 * * * *")]
    pub housekeeping_cron: String,
    /// Seconds a client has to send a request's head once it has started.
    #[arg(long, env = "GATEHOUSE_HEAD_TIMEOUT_SECS", default_value_t = 10)]
    pub head_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body.
    #[arg(long, env = "GATEHOUSE_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open between requests.
    #[arg(long, env = "GATEHOUSE_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Seconds a TLS handshake may take.
    #[arg(long, env = "GATEHOUSE_TLS_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub tls_handshake_timeout_secs: u64,
    /// Most connections open at once (default: the file-descriptor limit less 512 kept for the
    /// store and outbound webhooks, at most 100000).
    #[arg(long, env = "GATEHOUSE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most connections from one client address that have not yet made a request with the API
    /// key (session and lobby secrets do not count: anyone can get one; trusted proxies are exempt).
    #[arg(long, env = "GATEHOUSE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_connections_per_address: usize,
    /// Most open event streams (GET /v1/events/stream) per API key.
    #[arg(long, env = "GATEHOUSE_MAX_EVENT_STREAMS_PER_KEY", default_value_t = 64)]
    pub max_event_streams_per_key: usize,
    /// Most open streams (GET /v1/sessions/:id/stream) per session.
    #[arg(long, env = "GATEHOUSE_MAX_STREAMS_PER_SESSION", default_value_t = 4)]
    pub max_streams_per_session: usize,
    /// Most bans one room may hold; an eject with `ban` that would pass it is refused (400).
    #[arg(long, env = "GATEHOUSE_MAX_BANS_PER_ROOM", default_value_t = 10_000)]
    pub max_bans_per_room: usize,
    /// People present from which a room is large: its session streams get the count and the
    /// latest joiners and leavers a few times a second instead of every change.
    #[arg(long, env = "GATEHOUSE_LARGE_ROOM_THRESHOLD", default_value_t = 1000)]
    pub large_room_threshold: u64,
    /// Commands the writer queues; past it a mutation waits --shed-after-ms, then gets 503.
    #[arg(long, env = "GATEHOUSE_WRITER_QUEUE", default_value_t = 4096)]
    pub writer_queue: usize,
    /// Longest wait for room in the writer's queue before a mutation is answered 503 (Retry-After).
    #[arg(long, env = "GATEHOUSE_SHED_AFTER_MS", default_value_t = 100)]
    pub shed_after_ms: u64,
    /// Seconds the writer or the store's applier may stay busy without progress before the
    /// store counts as stuck: /readyz answers 503 with the reason and systemd's watchdog
    /// (WatchdogSec) is no longer fed, so the service is restarted.
    #[arg(long, env = "GATEHOUSE_STALL_TIMEOUT_SECS", default_value_t = 30)]
    pub stall_timeout_secs: u64,
    /// sled's background flush period in ms (0 = off, the default). Acknowledgements never
    /// depend on it, and the checkpointer makes sled durable with fsyncs whose failures it
    /// sees; sled's own flusher only logs a failed fsync (and the next one "succeeds").
    #[arg(long, env = "GATEHOUSE_SLED_FLUSH_EVERY_MS", default_value_t = 0, hide = true)]
    pub sled_flush_every_ms: u64,
    /// Size in KiB past which an event segment is closed and packed (tests make it small to
    /// close and pack segments often).
    #[arg(long, env = "GATEHOUSE_EVENT_SEGMENT_KB", default_value_t = 65_536, hide = true)]
    pub event_segment_kb: u64,
    #[command(flatten)]
    pub cluster: EtcdArgs,
}

/// Where the state lives, and the etcd settings of cluster mode (serve, config check, restore).
#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// Where the state lives: `sled` (the embedded store in the data dir, the default) or
    /// `etcd` (several nodes sharing an etcd cluster; README, "Running several nodes").
    #[arg(long, env = "GATEHOUSE_STORE", value_enum, default_value = "sled")]
    pub store: StoreArg,
    /// etcd client URLs, comma-separated (`http://10.0.0.1:2379,http://10.0.0.2:2379`).
    #[arg(long, env = "GATEHOUSE_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key Gatehouse keeps in etcd.
    #[arg(long, env = "GATEHOUSE_ETCD_PREFIX", default_value = "/gatehouse/")]
    pub etcd_prefix: String,
    /// etcd user (with --etcd-password), when etcd has authentication enabled.
    #[arg(long, env = "GATEHOUSE_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd password (prefer the environment or the config file to a flag).
    #[arg(long, env = "GATEHOUSE_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// CA bundle (PEM) for https etcd endpoints.
    #[arg(long, env = "GATEHOUSE_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), when etcd requires client certificates (with --etcd-key-file).
    #[arg(long, env = "GATEHOUSE_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(long, env = "GATEHOUSE_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// TTL of the leader's lease in etcd: a dead leader is replaced within about this plus a third.
    #[arg(long, env = "GATEHOUSE_ETCD_LEASE_TTL_SECS", default_value_t = 5)]
    pub etcd_lease_ttl_secs: u64,
    /// How the other nodes reach this one, `http://host:port` (default: http://<listen address>;
    /// set it when listening on 0.0.0.0).
    #[arg(long, env = "GATEHOUSE_ETCD_ADVERTISE_URL")]
    pub etcd_advertise_url: Option<String>,
    /// Batch records the leader commits between two snapshots of the state in etcd (each drops
    /// the records before it and compacts etcd's history).
    #[arg(long, env = "GATEHOUSE_ETCD_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub etcd_snapshot_every: u64,
    /// A follower answers reads from its own replica while it has applied everything etcd held
    /// this many milliseconds ago or less; past that it forwards them to the leader (0: always).
    #[arg(long, env = "GATEHOUSE_ETCD_READ_STALENESS_MS", default_value_t = 1000)]
    pub etcd_read_staleness_ms: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreArg {
    /// The embedded store in the data dir.
    Sled,
    /// An etcd cluster shared by several nodes.
    Etcd,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: `http://<the address actually bound>` (known only after binding, e.g. for port 0).
    pub public_url: Option<String>,
    pub domain_name: String,
    pub sync: SyncMode,
    pub cache_bytes: u64,
    pub body_limit: usize,
    pub token_leeway_secs: u64,
    pub shutdown_grace: std::time::Duration,
    pub sled_flush_every_ms: Option<u64>,
    pub event_segment_bytes: u64,
    pub lease_ms: i64,
    pub join_rate: f64,
    pub join_burst: u32,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub housekeeping_cron: String,
    pub webhook_deny_private: bool,
    pub webhook_timeout: std::time::Duration,
    pub retention: crate::store::Retention,
    pub metrics_public: bool,
    /// Certificate and key files, when serving HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Certificates from an ACME CA, when serving HTTPS that way.
    pub acme: Option<AcmeSettings>,
    /// A Janus media server to keep in step, when there is one.
    pub janus: Option<JanusSettings>,
    pub head_timeout: std::time::Duration,
    pub body_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub tls_handshake_timeout: std::time::Duration,
    /// `None`: derived from the file-descriptor limit at start-up.
    pub max_connections: Option<usize>,
    pub max_connections_per_address: usize,
    pub max_event_streams_per_key: usize,
    pub max_streams_per_session: usize,
    pub max_bans_per_room: usize,
    pub large_room: u64,
    pub writer_queue: usize,
    pub shed_after: std::time::Duration,
    pub stall_after: std::time::Duration,
    /// From `GATEHOUSE_API_KEY` (comma-separated), else the file's `api_keys`; empty means
    /// "use or generate the data dir's key".
    pub api_keys: Vec<String>,
    /// `Some` with `--store etcd`.
    pub etcd: Option<EtcdSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--public-url must start with http:// or https:// (got '{0}')")]
    PublicUrl(String),
    #[error("--cache-mb must be between 8 and 65536")]
    Cache,
    #[error("--body-limit must be between 1024 and 16777216 bytes")]
    BodyLimit,
    #[error("--lease-secs must be between 5 and 3600")]
    Lease,
    #[error("--join-rate must be positive and --join-burst at least 1")]
    JoinRate,
    #[error("--{0} must be between {1} and {2}")]
    Range(&'static str, u64, u64),
    #[error("{0}")]
    Etcd(String),
    #[error("{0}")]
    Acme(String),
    #[error("{0}")]
    Janus(String),
}

/// The etcd settings, checked: with `--store etcd`, at least one http(s) endpoint, a CA for
/// https ones, user and password together, certificate and key together.
pub fn etcd_settings(a: &EtcdArgs) -> Result<Option<EtcdSettings>, ConfigError> {
    if a.store != StoreArg::Etcd {
        return Ok(None);
    }
    let bad = |m: String| Err(ConfigError::Etcd(m));
    let endpoints: Vec<String> =
        a.etcd_endpoints.iter().map(|e| e.trim().trim_end_matches('/').to_string()).filter(|e| !e.is_empty()).collect();
    if endpoints.is_empty() {
        return bad("--store etcd needs --etcd-endpoints (e.g. http://127.0.0.1:2379)".into());
    }
    for e in &endpoints {
        match url::Url::parse(e) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && u.fragment().is_none() => {}
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                return bad(
                    "--etcd-endpoints: credentials do not belong in a URL; use --etcd-user and --etcd-password".into()
                )
            }
            _ => return bad(format!("--etcd-endpoints: '{e}' is not an http:// or https:// host:port URL")),
        }
        if e.starts_with("https://") && a.etcd_ca_file.is_none() {
            return bad(format!("--etcd-endpoints: '{e}' is https; give the CA that signed it with --etcd-ca-file"));
        }
    }
    if a.etcd_prefix.is_empty() || a.etcd_prefix.chars().any(char::is_control) {
        return bad("--etcd-prefix must be non-empty, without control characters".into());
    }
    if a.etcd_user.is_some() != a.etcd_password.is_some() {
        return bad("--etcd-user and --etcd-password go together".into());
    }
    if a.etcd_cert_file.is_some() != a.etcd_key_file.is_some() {
        return bad("--etcd-cert-file and --etcd-key-file go together".into());
    }
    Ok(Some(EtcdSettings {
        endpoints,
        prefix: a.etcd_prefix.clone(),
        user: a.etcd_user.clone(),
        password: a.etcd_password.clone(),
        ca_file: a.etcd_ca_file.clone(),
        client_cert: a.etcd_cert_file.clone().zip(a.etcd_key_file.clone()),
        lease_ttl_secs: within("etcd-lease-ttl-secs", a.etcd_lease_ttl_secs, 2, 60)?,
        snapshot_every: within("etcd-snapshot-every", a.etcd_snapshot_every, 1, 10_000_000)?,
        read_staleness: std::time::Duration::from_millis(within(
            "etcd-read-staleness-ms",
            a.etcd_read_staleness_ms,
            0,
            60_000,
        )?),
        advertise_url: match &a.etcd_advertise_url {
            None => None,
            Some(u) => match url::Url::parse(u) {
                Ok(p) if p.scheme() == "http" && p.host().is_some() && p.path() == "/" && p.query().is_none() => {
                    Some(u.trim_end_matches('/').to_string())
                }
                _ => return bad(format!("--etcd-advertise-url: '{u}' is not an http://host:port URL")),
            },
        },
        request_timeout: std::time::Duration::from_secs(5),
    }))
}

/// `value` if it is within `lo..=hi`, else the error naming the flag.
fn within(flag: &'static str, value: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Range(flag, lo, hi))
    }
}

impl ServeArgs {
    pub fn validate(self, api_key_env: Option<String>) -> Result<Settings, ConfigError> {
        let etcd = etcd_settings(&self.cluster)?;
        let acme =
            acme_settings(&self.acme_domain, self.acme_email.as_deref(), &self.acme_directory, &self.acme_ca_root)?;
        let janus = janus_settings(
            self.janus_url.as_deref(),
            self.janus_public_url.as_deref(),
            self.janus_admin_key.as_deref(),
            self.janus_admin_url.as_deref(),
            self.janus_admin_secret.as_deref(),
        )?;
        if etcd.is_some() && janus.is_some() {
            return Err(ConfigError::Janus("--janus-url is not supported with --store etcd yet".into()));
        }
        if etcd.is_some() && acme.is_some() {
            return Err(ConfigError::Acme(
                "--acme-domain is not supported with --store etcd: nodes forward to each other over plain HTTP; \
                 terminate TLS in a proxy in front of the nodes"
                    .into(),
            ));
        }
        if etcd.is_some() && self.tls_cert.is_some() {
            // A follower forwards to the leader over plain HTTP (the advertised http:// address):
            // a leader serving TLS could not be reached, and a follower would take API keys in clear.
            return Err(ConfigError::Etcd(
                "--tls-cert is not supported with --store etcd yet: nodes forward to the leader over plain HTTP; \
                 terminate TLS in a proxy in front of the nodes (see README, \"Running several nodes\")"
                    .into(),
            ));
        }
        let public_url = match self.public_url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Some(u.trim_end_matches('/').to_string())
            }
            Some(u) => return Err(ConfigError::PublicUrl(u)),
            None => None,
        };
        if !(8..=65_536).contains(&self.cache_mb) {
            return Err(ConfigError::Cache);
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.body_limit) {
            return Err(ConfigError::BodyLimit);
        }
        if !(5..=3600).contains(&self.lease_secs) {
            return Err(ConfigError::Lease);
        }
        if !(self.join_rate > 0.0 && self.join_rate.is_finite()) || self.join_burst == 0 {
            return Err(ConfigError::JoinRate);
        }
        let api_keys = split_keys(&api_key_env.unwrap_or_default());
        let secs = |flag, v| within(flag, v, 1, 3600).map(std::time::Duration::from_secs);
        let count = |flag, v: usize, lo, hi| within(flag, v as u64, lo, hi).map(|v| v as usize);
        let max_connections = match self.max_connections {
            Some(n) => Some(count("max-connections", n, 16, 1_000_000)?),
            None => None,
        };
        Ok(Settings {
            head_timeout: secs("head-timeout-secs", self.head_timeout_secs)?,
            body_timeout: secs("body-timeout-secs", self.body_timeout_secs)?,
            idle_timeout: secs("idle-timeout-secs", self.idle_timeout_secs)?,
            tls_handshake_timeout: secs("tls-handshake-timeout-secs", self.tls_handshake_timeout_secs)?,
            max_connections,
            max_connections_per_address: count(
                "max-connections-per-address",
                self.max_connections_per_address,
                1,
                1_000_000,
            )?,
            max_event_streams_per_key: count("max-event-streams-per-key", self.max_event_streams_per_key, 1, 100_000)?,
            max_streams_per_session: count("max-streams-per-session", self.max_streams_per_session, 1, 1000)?,
            max_bans_per_room: count("max-bans-per-room", self.max_bans_per_room, 1, 1_000_000)?,
            large_room: within("large-room-threshold", self.large_room_threshold, 1, 1_000_000)?,
            writer_queue: count("writer-queue", self.writer_queue, 1, 1_000_000)?,
            shed_after: std::time::Duration::from_millis(within("shed-after-ms", self.shed_after_ms, 0, 60_000)?),
            stall_after: secs("stall-timeout-secs", self.stall_timeout_secs)?,
            listen: self.listen,
            data_dir: self.data_dir,
            public_url,
            domain_name: self.domain_name,
            sync: match self.sync {
                SyncArg::Fdatasync => SyncMode::Fdatasync,
                SyncArg::Flush => SyncMode::Flush,
            },
            cache_bytes: self.cache_mb * 1024 * 1024,
            body_limit: self.body_limit,
            token_leeway_secs: self.token_leeway_secs,
            shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace_secs),
            sled_flush_every_ms: (self.sled_flush_every_ms > 0).then_some(self.sled_flush_every_ms),
            event_segment_bytes: self.event_segment_kb.clamp(4, 1 << 22) * 1024,
            lease_ms: (self.lease_secs * 1000) as i64,
            join_rate: self.join_rate,
            join_burst: self.join_burst,
            trusted_proxies: self.trusted_proxies,
            housekeeping_cron: self.housekeeping_cron,
            webhook_deny_private: self.webhook_deny_private,
            webhook_timeout: std::time::Duration::from_millis(self.webhook_timeout_ms.clamp(100, 120_000)),
            metrics_public: self.metrics_public,
            tls: self.tls_cert.zip(self.tls_key),
            acme,
            janus,
            retention: crate::store::Retention {
                max_age_ms: i64::try_from(self.events_retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
                max_bytes: self.events_max_mb.saturating_mul(1 << 20),
                hard_max_bytes: self.events_hard_max_mb.max(self.events_max_mb).saturating_mul(1 << 20),
            },
            api_keys,
            etcd,
        })
    }
}

/// A comma-separated key list (`GATEHOUSE_API_KEY`), blanks dropped.
pub fn split_keys(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect()
}

/// Validated Janus settings (`--janus-*`). Its `Debug` hides the secrets.
#[derive(Clone)]
pub struct JanusSettings {
    pub url: String,
    /// What browsers use (`None`: `url`).
    pub public_url: Option<String>,
    pub admin_key: Option<String>,
    pub admin_url: Option<String>,
    pub admin_secret: Option<String>,
}

impl std::fmt::Debug for JanusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JanusSettings")
            .field("url", &self.url)
            .field("public_url", &self.public_url)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "(hidden)"))
            .field("admin_url", &self.admin_url)
            .field("admin_secret", &self.admin_secret.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

/// The Janus settings, checked: http(s) URLs; the rest needs `--janus-url`.
pub fn janus_settings(
    url: Option<&str>,
    public_url: Option<&str>,
    admin_key: Option<&str>,
    admin_url: Option<&str>,
    admin_secret: Option<&str>,
) -> Result<Option<JanusSettings>, ConfigError> {
    let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        if admin_key.is_some() || admin_url.is_some() || public_url.is_some() {
            return Err(ConfigError::Janus(
                "--janus-public-url, --janus-admin-key and --janus-admin-url need --janus-url".into(),
            ));
        }
        return Ok(None);
    };
    for (flag, u) in [("--janus-url", Some(url)), ("--janus-public-url", public_url), ("--janus-admin-url", admin_url)]
    {
        let Some(u) = u else { continue };
        let ok = (u.starts_with("http://") || u.starts_with("https://")) && url::Url::parse(u).is_ok();
        if !ok {
            return Err(ConfigError::Janus(format!(
                "{flag} must be an http:// or https:// URL, not '{}'",
                u.chars().take(120).collect::<String>()
            )));
        }
    }
    Ok(Some(JanusSettings {
        url: url.trim_end_matches('/').to_string(),
        public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
        admin_key: admin_key.map(String::from),
        admin_url: admin_url.map(|u| u.trim_end_matches('/').to_string()),
        admin_secret: admin_secret.map(String::from),
    }))
}

/// Let's Encrypt's production directory, `--acme-directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Validated ACME settings (`--acme-*`).
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// DNS names, lower case, each checked.
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    pub ca_root: Option<PathBuf>,
}

/// The ACME settings, checked: names a CA can issue for with tls-alpn-01 (no wildcards, no IP
/// addresses), a plausible contact address, an https directory, a CA file that is there.
pub fn acme_settings(
    domains: &[String],
    email: Option<&str>,
    directory: &str,
    ca_root: &Option<PathBuf>,
) -> Result<Option<AcmeSettings>, ConfigError> {
    let bad = |why: String| Err(ConfigError::Acme(why));
    let domains: Vec<String> =
        domains.iter().map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase()).filter(|d| !d.is_empty()).collect();
    if domains.is_empty() {
        if email.is_some() || ca_root.is_some() {
            return bad("--acme-email and --acme-ca-root need --acme-domain".into());
        }
        return Ok(None);
    }
    for d in &domains {
        if !is_dns_name(d) {
            return bad(format!(
                "--acme-domain '{}' is not a DNS name a CA can issue for (letters, digits and '-' in dot-separated labels; no wildcard, no IP address)",
                d.chars().take(80).collect::<String>()
            ));
        }
    }
    if domains.len() > 100 {
        return bad(format!("--acme-domain names {} domains; a certificate holds at most 100", domains.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(d) = domains.iter().find(|d| !seen.insert(d.as_str())) {
        return bad(format!("--acme-domain '{d}' is given twice"));
    }
    if let Some(e) = email {
        let plausible = e.len() <= 254
            && e.split_once('@').is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
            && !e.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',');
        if !plausible {
            return bad("--acme-email must be one e-mail address (name@example.com)".into());
        }
    }
    if !directory.starts_with("https://") || url::Url::parse(directory).is_err() {
        return bad(format!(
            "--acme-directory must be an https:// URL, not '{}'",
            directory.chars().take(120).collect::<String>()
        ));
    }
    if let Some(f) = ca_root {
        if let Err(e) = std::fs::metadata(f) {
            return bad(format!("--acme-ca-root {}: {e}", f.display()));
        }
    }
    Ok(Some(AcmeSettings {
        domains,
        email: email.map(String::from),
        directory: directory.to_string(),
        ca_root: ca_root.clone(),
    }))
}

/// A DNS name of at least two labels: 1 to 63 letters, digits or '-' each, not starting or
/// ending with '-', the last not all digits; at most 253 characters.
fn is_dns_name(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    d.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// Validated etcd settings (`--etcd-*`). Its `Debug` hides the password.
#[derive(Clone)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Every key Gatehouse writes starts with this (several deployments can share a cluster).
    pub prefix: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA bundle that signed the members' certificates (needed for https endpoints).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, when the members require client certificates.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The leader's lease: a dead leader is replaced within about this plus a third.
    pub lease_ttl_secs: u64,
    /// How other nodes reach this one (`http://host:port`); `None`: `http://<listen address>`.
    pub advertise_url: Option<String>,
    /// Batch records committed between two snapshots (which trim the history).
    pub snapshot_every: u64,
    /// How far behind etcd a follower's replica may be and still answer reads (zero: never).
    pub read_staleness: std::time::Duration,
    pub request_timeout: std::time::Duration,
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("lease_ttl_secs", &self.lease_ttl_secs)
            .field("advertise_url", &self.advertise_url)
            .field("snapshot_every", &self.snapshot_every)
            .finish()
    }
}

/// Why the command line (with its `--config` file) was refused.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Args(clap::Error),
    /// The file could not be read or parsed, or holds a setting it may not.
    #[error("--config {}: {why}", path.display())]
    File { path: PathBuf, why: String },
    /// A value the file gave was refused as a flag would be.
    #[error("in --config {}: {err}", path.display())]
    FileArgs { path: PathBuf, err: clap::Error },
}

/// Settings that may not come from the file (they are about finding the file).
const NOT_IN_FILE: &[&str] = &["config"];

/// The command line, with settings that flags and environment leave at their defaults taken
/// from the TOML file named by `--config` / `GATEHOUSE_CONFIG`. Also returns the file's
/// `api_keys`, used when `GATEHOUSE_API_KEY` is not set.
pub fn parse_cli(args: Vec<std::ffi::OsString>) -> Result<(Cli, Vec<String>), CliError> {
    use clap::{CommandFactory, FromArgMatches};
    // Help, version and usage errors: clap prints them and exits with the right code.
    let matches = Cli::command().try_get_matches_from(&args).unwrap_or_else(|e| e.exit());
    let (serve_matches, path_to_sub): (&clap::ArgMatches, Vec<&str>) = match matches.subcommand() {
        None => (&matches, vec![]),
        Some(("serve", m)) => (m, vec!["serve"]),
        Some(("config", m)) => match m.subcommand() {
            Some(("check", c)) => (c, vec!["config", "check"]),
            _ => return Cli::from_arg_matches(&matches).map(|c| (c, vec![])).map_err(CliError::Args),
        },
        Some(_) => return Cli::from_arg_matches(&matches).map(|c| (c, vec![])).map_err(CliError::Args),
    };
    let Some(path) = serve_matches.get_one::<PathBuf>("config").cloned() else {
        return Cli::from_arg_matches(&matches).map(|c| (c, vec![])).map_err(CliError::Args);
    };
    let file = |why: String| CliError::File { path: path.clone(), why };
    let text = std::fs::read_to_string(&path).map_err(|e| file(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file(e.to_string()))?;
    let known: Vec<String> =
        ServeArgs::augment_args(clap::Command::new("x")).get_arguments().map(|a| a.get_id().to_string()).collect();
    let mut extra: Vec<String> = Vec::new();
    let mut file_keys = Vec::new();
    for (key, value) in &table {
        if key == "api_keys" {
            file_keys = match value {
                toml::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
                toml::Value::String(s) => split_keys(s),
                _ => return Err(file("'api_keys' must be a list of strings".into())),
            };
            continue;
        }
        if !known.contains(key) || NOT_IN_FILE.contains(&key.as_str()) {
            return Err(file(format!("unknown setting '{key}'")));
        }
        if serve_matches.value_source(key).is_some_and(|s| s != clap::parser::ValueSource::DefaultValue) {
            continue; // the environment or a flag says otherwise, and wins
        }
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            toml::Value::Boolean(true) => extra.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => extra.push(format!("{flag}={s}")),
            toml::Value::Integer(i) => extra.push(format!("{flag}={i}")),
            toml::Value::Float(f) => extra.push(format!("{flag}={f}")),
            toml::Value::Array(a) => {
                let items: Vec<String> =
                    a.iter().map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string())).collect();
                extra.push(format!("{flag}={}", items.join(",")));
            }
            _ => return Err(file(format!("'{key}' has an unsupported value"))),
        }
    }
    // Re-parse with the file's values as flags of the right (sub)command.
    let mut argv: Vec<std::ffi::OsString> = args.clone();
    let insert_at = match path_to_sub.last() {
        None => argv.len(),
        Some(last) => argv.iter().position(|a| a == *last).map_or(argv.len(), |i| i + 1),
    };
    for (i, e) in extra.into_iter().enumerate() {
        argv.insert(insert_at + i, e.into());
    }
    let matches =
        Cli::command().try_get_matches_from(&argv).map_err(|e| CliError::FileArgs { path: path.clone(), err: e })?;
    Cli::from_arg_matches(&matches).map(|c| (c, file_keys)).map_err(CliError::Args)
}

impl Settings {
    /// The effective settings as text, API keys shown only by their length and `kid` (no
    /// character of a key is ever printed).
    pub fn describe(&self) -> String {
        let keys: Vec<String> = self
            .api_keys
            .iter()
            .map(|k| format!("(hidden, {} characters, kid {})", k.chars().count(), crate::tokens::kid_for(k)))
            .collect();
        format!(
            "listen = {}\ndata_dir = {}\npublic_url = {}\ndomain_name = {}\nsync = {:?}\ncache_bytes = {}\nbody_limit = {}\ntoken_leeway_secs = {}\n\
             shutdown_grace = {:?}\nlease_ms = {}\njoin_rate = {}\njoin_burst = {}\ntrusted_proxies = {:?}\nhousekeeping_cron = {}\n\
             webhook_deny_private = {}\nwebhook_timeout = {:?}\nretention = {:?}\nmetrics_public = {}\ntls = {:?}\nacme = {:?}\njanus = {:?}\napi_keys = {}\n\
             head_timeout = {:?}\nbody_timeout = {:?}\nidle_timeout = {:?}\ntls_handshake_timeout = {:?}\nmax_connections = {}\n\
             max_connections_per_address = {}\nmax_event_streams_per_key = {}\nmax_streams_per_session = {}\nmax_bans_per_room = {}\nlarge_room_threshold = {}\nwriter_queue = {}\nshed_after = {:?}\nstall_after = {:?}\nstore = {}\n",
            self.listen,
            self.data_dir.display(),
            self.public_url.as_deref().unwrap_or("(the bound address)"),
            self.domain_name,
            self.sync,
            self.cache_bytes,
            self.body_limit,
            self.token_leeway_secs,
            self.shutdown_grace,
            self.lease_ms,
            self.join_rate,
            self.join_burst,
            self.trusted_proxies,
            self.housekeeping_cron,
            self.webhook_deny_private,
            self.webhook_timeout,
            self.retention,
            self.metrics_public,
            self.tls,
            self.acme,
            self.janus,
            if keys.is_empty() { "(generated in the data dir)".to_string() } else { keys.join(", ") },
            self.head_timeout,
            self.body_timeout,
            self.idle_timeout,
            self.tls_handshake_timeout,
            self.max_connections.map_or("(from the file-descriptor limit)".to_string(), |n| n.to_string()),
            self.max_connections_per_address,
            self.max_event_streams_per_key,
            self.max_streams_per_session,
            self.max_bans_per_room,
            self.large_room,
            self.writer_queue,
            self.shed_after,
            self.stall_after,
            match &self.etcd {
                None => "sled (in the data dir)".to_string(),
                Some(e) => format!(
                    "etcd {} prefix '{}' user {} password {} ca {:?} client certificate {:?} lease_ttl_secs {}",
                    e.endpoints.join(","),
                    e.prefix,
                    e.user.as_deref().unwrap_or("(none)"),
                    if e.password.is_some() { "(hidden)" } else { "(none)" },
                    e.ca_file,
                    e.client_cert,
                    e.lease_ttl_secs
                ),
            },
        )
    }
}
