//! Optional native TLS (rustls, ring): the certificate and key are read from PEM files at
//! start and again on SIGHUP (`app` handles the signal and calls [`Tls::reload`]); new
//! connections get the new certificate, established ones keep theirs.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

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
    cert: PathBuf,
    key: PathBuf,
    /// A std RwLock: held only to clone an `Arc`, never across an await.
    current: RwLock<Arc<ServerConfig>>,
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
        Ok(Tls { cert, key, current })
    }

    /// Re-reads the files; on failure the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = config(&self.cert, &self.key)?;
        if let Ok(mut c) = self.current.write() {
            *c = fresh;
        }
        Ok(())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self.current.read().map(|c| c.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}
