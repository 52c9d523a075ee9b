//! Admin authentication: `Authorization: Bearer <API key>`, compared in constant time by the
//! key ring. Never logs or echoes what was presented.

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};

use super::error::ApiError;
use crate::tokens::{KeyRing, SigningKey};

/// The bearer credential, if the header is present. A header that is not `Bearer <credential>`
/// is a 400 `authorization-header-error`.
pub fn bearer(req: &Request<Incoming>) -> Result<Option<&str>, ApiError> {
    let Some(v) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "authorization-header-error",
            "Authorization header must be 'Bearer <credential>'",
        )
    };
    let s = v.to_str().map_err(|_| malformed())?;
    let (scheme, cred) = s.split_once(' ').ok_or_else(malformed)?;
    let cred = cred.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || cred.is_empty() || cred.contains(' ') {
        return Err(malformed());
    }
    Ok(Some(cred))
}

/// The API key the request carries, or 401/400.
pub fn api_key<'a>(req: &Request<Incoming>, keys: &'a KeyRing) -> Result<&'a SigningKey, ApiError> {
    let cred = bearer(req)?.ok_or_else(|| ApiError::unauthenticated("missing Authorization header with an API key"))?;
    let key = keys.authenticate(cred).ok_or_else(|| ApiError::unauthenticated("the API key is not valid"))?;
    authenticated(req);
    Ok(key)
}

/// Who acted, as events and records name a caller with the API key: `api:<kid>`.
pub fn actor(key: &SigningKey) -> String {
    format!("api:{}", key.kid)
}

/// Marks the request's connection as authenticated (it no longer counts against its address's
/// cap of unauthenticated connections). Only for what an outsider cannot get: the API key, or
/// a cluster node's tag. Session and lobby secrets do not count: anyone can get one.
pub fn authenticated(req: &Request<Incoming>) {
    if let Some(c) = req.extensions().get::<std::sync::Arc<super::conn::Conn>>() {
        c.authenticated();
    }
}

/// The API key as the password of HTTP Basic authentication (`Authorization: Basic
/// base64(user:password)`, the user name ignored): what Janus's event handler can send.
pub fn basic_api_key<'a>(req: &Request<Incoming>, keys: &'a KeyRing) -> Result<&'a SigningKey, ApiError> {
    use base64::Engine as _;
    let refused = || ApiError::unauthenticated("HTTP Basic authentication with the API key as the password is needed");
    let v = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(refused)?;
    let (scheme, cred) = v.split_once(' ').ok_or_else(refused)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(refused());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(cred.trim()).map_err(|_| refused())?;
    let text = String::from_utf8(decoded).map_err(|_| refused())?;
    let (_, password) = text.split_once(':').ok_or_else(refused)?;
    let key = keys.authenticate(password).ok_or_else(|| ApiError::unauthenticated("the API key is not valid"))?;
    authenticated(req);
    Ok(key)
}
