//! Certificates from an ACME CA (RFC 8555) for `--acme-domain`: an account made once, a
//! certificate ordered with tls-alpn-01 (RFC 8737: the CA connects to the domain's port 443
//! offering only the `acme-tls/1` protocol, and the API's front answers with the challenge
//! certificate this module hands to `api::AcmeCerts`), kept in the store (durable, in backups;
//! its public chain also in `<data dir>/acme/certificate.pem` for `config check` and other
//! tools), served from then on, and renewed once two thirds of its lifetime have passed, or on
//! SIGHUP. A failure is logged with what it means (the CA unreachable, DNS, port 443, a rate
//! limit) and retried with a backoff from 10 s up to an hour; the stored certificate is served
//! meanwhile.
//!
//! Must not: serve HTTP (the front does), or put a secret in a log line or an event.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde_json::{Map, Value};
use tokio::sync::{watch, Notify};

use crate::api::{certified_key, validity, AcmeCerts};
use crate::clock::SharedClock;
use crate::config::AcmeSettings;
use crate::store::{SetAcme, Store, StoreError};

/// Why a certificate could not be had (this time: the loop tries again).
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("cannot reach the ACME directory {url} ({why}): check the URL, DNS and outbound HTTPS")]
    Unreachable { url: String, why: String },
    #[error("the CA refused: {0}")]
    Refused(String),
    #[error("the CA could not validate {domain}: {why}")]
    Validation { domain: String, why: String },
    #[error("the CA offers no tls-alpn-01 challenge for {0}")]
    NoTlsAlpn(String),
    #[error("the CA sent a certificate that cannot be served: {0}")]
    BadCertificate(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Local(String),
}

/// What a CA's problem document means, in words a person running a server can act on.
fn explain(p: &instant_acme::Problem) -> String {
    let kind = p.r#type.as_deref().unwrap_or("").rsplit(':').next().unwrap_or("").to_string();
    let detail = p.detail.clone().unwrap_or_default();
    let hint = match kind.as_str() {
        "rateLimited" => "rate limited by the CA; it says when to try again",
        "dns" => "DNS: the CA could not resolve the domain (is its A/AAAA record set?)",
        "connection" => {
            "the CA could not connect to the domain's port 443 (is it open, and does it reach this server?)"
        }
        "tls" => "TLS: the CA's handshake with the domain's port 443 failed (is something else answering there?)",
        "unauthorized" | "incorrectResponse" => {
            "the CA got an answer that was not this server's challenge (is the domain pointing here?)"
        }
        "caa" => "the domain's CAA record does not allow this CA",
        "rejectedIdentifier" => "the CA will not issue for this name",
        _ => "",
    };
    let sub: Vec<String> = p.subproblems.iter().filter_map(|s| s.detail.clone()).collect();
    let mut out = if hint.is_empty() { detail } else { format!("{hint}: {detail}") };
    if !sub.is_empty() {
        out.push_str(&format!(" ({})", sub.join("; ")));
    }
    out
}

fn from_acme(directory: &str, e: instant_acme::Error) -> AcmeError {
    match e {
        instant_acme::Error::Api(p) => AcmeError::Refused(explain(&p)),
        instant_acme::Error::Hyper(_) | instant_acme::Error::Http(_) | instant_acme::Error::Other(_) => {
            AcmeError::Unreachable { url: directory.to_string(), why: e.to_string() }
        }
        other => AcmeError::Local(other.to_string()),
    }
}

/// The certificate that answers tls-alpn-01 for `domain`: self-signed, naming it, with the
/// key authorization's digest in the acmeIdentifier extension.
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<rustls::sign::CertifiedKey, AcmeError> {
    let local = |e: rcgen::Error| AcmeError::Local(format!("making the tls-alpn-01 certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(local)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(local)?;
    let cert = params.self_signed(&key).map_err(local)?;
    certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .map_err(|e| AcmeError::Local(format!("serving the tls-alpn-01 certificate: {e}")))
}

/// Clears the challenge answers however the order ends.
struct Answering<'a> {
    certs: &'a AcmeCerts,
    domains: Vec<String>,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        for d in &self.domains {
            self.certs.clear_challenge(d);
        }
    }
}

/// Where the public chain is written for `config check` and other tools.
pub fn certificate_file(data_dir: &Path) -> PathBuf {
    data_dir.join("acme").join("certificate.pem")
}

/// `config check`'s lines about `--acme-domain`: the certificate held, and until when.
pub fn report(settings: &AcmeSettings, data_dir: &Path, now_secs: i64) -> String {
    let file = certificate_file(data_dir);
    let mut out = format!("acme: {} for {}\n", settings.directory, settings.domains.join(", "));
    match std::fs::read(&file).ok().and_then(|pem| validity(&pem)) {
        Some((_, not_after)) => out.push_str(&format!(
            "acme: certificate {} expires {} ({} days left)\n",
            file.display(),
            crate::clock::rfc3339_ms(not_after.saturating_mul(1000)),
            (not_after - now_secs).div_euclid(86_400)
        )),
        None => out.push_str("acme: no certificate yet: the server obtains one at its first start\n"),
    }
    out
}

pub struct Acme {
    settings: AcmeSettings,
    store: Store,
    certs: Arc<AcmeCerts>,
    clock: SharedClock,
    not_after: Arc<AtomicI64>,
    data_dir: PathBuf,
    /// SIGHUP: renew now.
    pub renew_now: Arc<Notify>,
}

impl Acme {
    pub fn new(
        settings: AcmeSettings,
        store: Store,
        certs: Arc<AcmeCerts>,
        clock: SharedClock,
        not_after: Arc<AtomicI64>,
        data_dir: PathBuf,
    ) -> Acme {
        // instant-acme's client builds its TLS configuration with the process's provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Acme { settings, store, certs, clock, not_after, data_dir, renew_now: Arc::default() }
    }

    /// Serves the stored certificate, if there is one; `Some(domains)` it names.
    pub fn load(&self) -> Result<Option<Vec<String>>, AcmeError> {
        let st = self.store.acme_state()?;
        let (Some(chain), Some(key)) =
            (st.get("chain_pem").and_then(Value::as_str), st.get("key_pem").and_then(Value::as_str))
        else {
            return Ok(None);
        };
        let served =
            certified_key(chain.as_bytes(), key.as_bytes()).map_err(|e| AcmeError::BadCertificate(e.to_string()))?;
        self.certs.set(Arc::new(served));
        if let Some((_, not_after)) = validity(chain.as_bytes()) {
            self.not_after.store(not_after, Ordering::Relaxed);
        }
        self.write_public_chain(chain);
        Ok(Some(domains_of(&st)))
    }

    fn write_public_chain(&self, chain: &str) {
        let file = certificate_file(&self.data_dir);
        let written = crate::disk::create_dir_all(crate::disk::parent_of(&file))
            .and_then(|()| crate::disk::write_atomic(&file, chain.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "could not write the certificate chain for config check");
        }
    }

    /// When to renew: two thirds into the certificate's lifetime (now if there is none, or it
    /// does not name every domain asked for).
    fn renew_at(&self) -> Result<i64, AcmeError> {
        let st = self.store.acme_state()?;
        let mut held = domains_of(&st);
        let mut wanted = self.settings.domains.clone();
        held.sort();
        wanted.sort();
        let Some((not_before, not_after)) =
            st.get("chain_pem").and_then(Value::as_str).and_then(|c| validity(c.as_bytes()))
        else {
            return Ok(0);
        };
        // Other names, another CA (staging before production), or nothing served (the stored
        // one could not be loaded): now.
        let same_ca = st.get("cert_directory").and_then(Value::as_str) == Some(self.settings.directory.as_str());
        if held != wanted || !same_ca || !self.certs.has_certificate() {
            return Ok(0);
        }
        Ok(not_after - (not_after - not_before) / 3)
    }

    /// Obtains and renews until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            let due_in = match self.renew_at() {
                Ok(at) => (at - self.clock.now_secs()).max(0),
                Err(e) => {
                    tracing::error!(error = %e, "acme: cannot read the stored certificate");
                    3600
                }
            };
            if due_in > 0 {
                // Woken at least hourly: the clock may have moved (a suspended VM).
                let nap = Duration::from_secs(u64::try_from(due_in).unwrap_or(0).min(3600));
                tokio::select! {
                    _ = tokio::time::sleep(nap) => continue,
                    _ = self.renew_now.notified() => tracing::info!("acme: SIGHUP: renewing now"),
                    _ = shutdown.changed() => return,
                }
            }
            let started = std::time::Instant::now();
            match self.obtain().await {
                Ok(not_after) => {
                    failures = 0;
                    tracing::info!(
                        domains = %self.settings.domains.join(","),
                        expires = %crate::clock::rfc3339_ms(not_after.saturating_mul(1000)),
                        millis = started.elapsed().as_millis() as u64,
                        "acme: certificate obtained and served"
                    );
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // 10 s, 20 s, 40 s, ... up to an hour.
                    let backoff = Duration::from_secs(10u64.saturating_mul(1 << (failures - 1).min(9)).min(3600));
                    let serving = if self.certs.has_certificate() {
                        "the stored certificate is served meanwhile"
                    } else {
                        "HTTPS clients are refused until there is one"
                    };
                    tracing::error!(
                        error = %e,
                        retry_in_secs = backoff.as_secs(),
                        "acme: could not obtain a certificate; {serving}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.renew_now.notified() => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// The account (made and stored on first use, or when the directory changed).
    async fn account(&self, st: &mut Map<String, Value>) -> Result<Account, AcmeError> {
        let dir = &self.settings.directory;
        let builder = || match &self.settings.ca_root {
            Some(f) => Account::builder_with_root(f),
            None => Account::builder(),
        };
        let builder = builder().map_err(|e| AcmeError::Local(format!("the ACME client: {e}")))?;
        if st.get("directory").and_then(Value::as_str) == Some(dir.as_str()) {
            if let Some(creds) = st.get("account").cloned() {
                let creds: AccountCredentials = serde_json::from_value(creds)
                    .map_err(|e| AcmeError::Local(format!("the stored ACME account: {e}")))?;
                return builder.from_credentials(creds).await.map_err(|e| from_acme(dir, e));
            }
        }
        let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
        let (account, creds) = builder.create(&new, dir.clone(), None).await.map_err(|e| from_acme(dir, e))?;
        st.insert("directory".into(), Value::from(dir.as_str()));
        st.insert(
            "account".into(),
            serde_json::to_value(&creds).map_err(|e| AcmeError::Local(format!("the ACME account: {e}")))?,
        );
        self.store.submit(SetAcme { state: st.clone() }).await?;
        tracing::info!(directory = %dir, "acme: account created");
        Ok(account)
    }

    /// One order, start to end: the certificate is stored (durably) before it is served.
    async fn obtain(&self) -> Result<i64, AcmeError> {
        let dir = self.settings.directory.as_str();
        // A certificate that could not be kept would be ordered again and again (the CA's
        // duplicate-certificate limit is 5 a week): not while the store refuses writes.
        if !self.store.is_writable() {
            return Err(AcmeError::Local(
                "the store cannot write (a full disk?); not ordering a certificate it could not keep".into(),
            ));
        }
        let mut st = self.store.acme_state()?;
        let account = self.account(&mut st).await?;
        let ids: Vec<Identifier> = self.settings.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await.map_err(|e| from_acme(dir, e))?;
        let mut answering = Answering { certs: &self.certs, domains: Vec::new() };
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(|e| from_acme(dir, e))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Refused(format!("an authorization is {other:?}")));
                }
            }
            let Some(mut challenge) = a.challenge(ChallengeType::TlsAlpn01) else {
                return Err(AcmeError::NoTlsAlpn(self.settings.domains.join(", ")));
            };
            let domain = challenge.identifier().to_string().to_ascii_lowercase();
            let answer = challenge_certificate(&domain, challenge.key_authorization().digest().as_ref())?;
            self.certs.set_challenge(&domain, Arc::new(answer));
            answering.domains.push(domain);
            challenge.set_ready().await.map_err(|e| from_acme(dir, e))?;
        }
        let patience = RetryPolicy::new().timeout(Duration::from_secs(120));
        let status = order.poll_ready(&patience).await.map_err(|e| from_acme(dir, e))?;
        if status != OrderStatus::Ready {
            // Why: the failed challenge's problem.
            let mut why = format!("the order is {status:?}");
            let mut domain = self.settings.domains.join(", ");
            let mut authorizations = order.authorizations();
            while let Some(Ok(a)) = authorizations.next().await {
                if let Some(p) = a.challenges.iter().find_map(|c| c.error.as_ref()) {
                    why = explain(p);
                    domain = a.identifier().to_string();
                    break;
                }
            }
            return Err(AcmeError::Validation { domain, why });
        }
        drop(answering);
        let key_pem = order.finalize().await.map_err(|e| from_acme(dir, e))?;
        let chain_pem = order.poll_certificate(&patience).await.map_err(|e| from_acme(dir, e))?;
        let served = certified_key(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| AcmeError::BadCertificate(e.to_string()))?;
        let (_, not_after) = validity(chain_pem.as_bytes())
            .ok_or_else(|| AcmeError::BadCertificate("its validity cannot be read".into()))?;
        st.insert("chain_pem".into(), Value::from(chain_pem.as_str()));
        st.insert("key_pem".into(), Value::from(key_pem));
        st.insert("domains".into(), Value::from(self.settings.domains.clone()));
        st.insert("cert_directory".into(), Value::from(dir));
        // Served at once, whether or not it can be kept: it is valid either way.
        self.certs.set(Arc::new(served));
        self.not_after.store(not_after, Ordering::Relaxed);
        self.store.submit(SetAcme { state: st }).await?;
        self.write_public_chain(&chain_pem);
        Ok(not_after)
    }
}

fn domains_of(st: &Map<String, Value>) -> Vec<String> {
    st.get("domains")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|d| d.as_str().map(String::from)).collect())
        .unwrap_or_default()
}
