//! Optional native TLS (rustls, ring). Either the certificate and key are read from PEM files
//! at start and again on SIGHUP (`app` handles the signal and calls [`Tls::reload`]), or they
//! come from an ACME CA (`crate::acme`), which swaps them into an [`AcmeCerts`] and answers
//! its tls-alpn-01 challenges through it. Either way new connections get the new certificate,
//! established ones keep theirs.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key could not be loaded (the old ones stay in use on a reload).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {source}")]
    Cert { path: String, source: rustls_pki_types::pem::Error },
    #[error("--tls-cert {0}: no certificate in it")]
    NoCert(String),
    #[error("--tls-key {path}: {source}")]
    Key { path: String, source: rustls_pki_types::pem::Error },
    #[error("{0}")]
    Protocols(rustls::Error),
    #[error("the TLS certificate and key do not fit: {0}")]
    Mismatch(rustls::Error),
}

pub struct Tls {
    /// The files, re-read on SIGHUP; `None` with ACME (the certificate changes in place).
    files: Option<(PathBuf, PathBuf)>,
    /// A std RwLock: held only to clone an `Arc`, never across an await.
    current: RwLock<Arc<ServerConfig>>,
}

/// The ALPN protocol of tls-alpn-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificate an ACME CA issued, and the answers to its challenges while it checks a
/// domain: a handshake that offers only `acme-tls/1` gets the challenge certificate of the
/// name it asks for, any other the current certificate (none yet: the handshake fails).
#[derive(Debug, Default)]
pub struct AcmeCerts {
    current: arc_swap::ArcSwapOption<CertifiedKey>,
    challenges: std::sync::Mutex<std::collections::HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeCerts {
    /// Serves `key` from now on (new connections; open ones keep theirs).
    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }

    pub fn has_certificate(&self) -> bool {
        self.current.load().is_some()
    }

    /// Answers tls-alpn-01 for `domain` with `key` until [`AcmeCerts::clear_challenge`].
    pub fn set_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        self.challenges.lock().unwrap_or_else(|p| p.into_inner()).insert(domain.to_string(), key);
    }

    pub fn clear_challenge(&self, domain: &str) {
        self.challenges.lock().unwrap_or_else(|p| p.into_inner()).remove(domain);
    }
}

impl ResolvesServerCert for AcmeCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validating = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validating {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned();
        }
        self.current.load_full()
    }
}

/// A certificate chain and private key (PEM) as rustls serves them.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Cert { path: "(the ACME certificate)".into(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert("(the ACME certificate)".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|source| TlsError::Key { path: "(the ACME certificate's key)".into(), source })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(TlsError::Mismatch)?;
    Ok(CertifiedKey::new(certs, signer))
}

fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

fn config(cert: &PathBuf, key: &PathBuf) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| TlsError::Cert { path: cert.display().to_string(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::Key { path: key.display().to_string(), source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

impl Tls {
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Tls, TlsError> {
        let current = RwLock::new(config(&cert, &key)?);
        Ok(Tls { files: Some((cert, key)), current })
    }

    /// TLS with the certificates an ACME CA issues (see [`AcmeCerts`]).
    pub fn acme(certs: Arc<AcmeCerts>) -> Result<Tls, TlsError> {
        Ok(Tls { files: None, current: RwLock::new(server_config(certs)?) })
    }

    /// Re-reads the files; on failure the old certificate stays in use. With ACME there are no
    /// files: nothing to do.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert, key)) = &self.files else { return Ok(()) };
        let fresh = config(cert, key)?;
        if let Ok(mut c) = self.current.write() {
            *c = fresh;
        }
        Ok(())
    }

    /// Whether the certificate comes from files (SIGHUP re-reads them).
    pub fn from_files(&self) -> bool {
        self.files.is_some()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self.current.read().map(|c| c.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}

/// When the first certificate of a PEM chain starts and stops being valid (unix seconds).
pub fn validity(chain_pem: &[u8]) -> Option<(i64, i64)> {
    let first = CertificateDer::pem_slice_iter(chain_pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    Some((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}
