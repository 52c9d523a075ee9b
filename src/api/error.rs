//! The API's error type and the one place where domain and store errors become HTTP statuses.
//! Body shape: `{"error": "<type>", "info": "<human text>"}` (Daily's); `info` never holds a secret.

use hyper::StatusCode;
use serde_json::Value;

use crate::rooms::RoomError;
use crate::store::StoreError;
use crate::tokens::TokenError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub info: String,
    /// Extra top-level fields (e.g. `oldest_seq` on 410).
    pub extra: Option<Value>,
    /// `Retry-After` seconds, for 429/503.
    pub retry_after: Option<u64>,
    /// `Allow`, for 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, info: impl Into<String>) -> Self {
        ApiError { status, kind, info: info.into(), extra: None, retry_after: None, allow: None }
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(info: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server-error", info);
        e.retry_after = Some(retry_after);
        e
    }

    /// The same error, its text prefixed (which item of a batch it is about).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.info.insert_str(0, prefix);
        self
    }

    pub fn invalid(info: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request-error", info)
    }

    pub fn not_found(info: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", info)
    }

    pub fn unauthenticated(info: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication-error", info)
    }

    pub fn json_parsing(info: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "json-parsing-error", info)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid-request-error",
            format!("request body is larger than {limit} bytes"),
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid-request-error",
            format!("method not allowed here; use {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn internal(request_id: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server-error",
            format!("internal error (request id {request_id})"),
        )
    }

    pub fn body(&self) -> super::responses::Error {
        let extra = match &self.extra {
            Some(Value::Object(extra)) => extra.clone(),
            _ => serde_json::Map::new(),
        };
        super::responses::Error { error: self.kind.to_string(), info: self.info.clone(), extra }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => {
                tracing::error!(error = %why, "store unavailable");
                ApiError::unavailable("the store cannot accept writes right now; nothing was saved", 5)
            }
            // sled or the history file refusing an operation (a full disk, an I/O error): nothing of the
            // request was saved, and it may clear.
            StoreError::Io(_) | StoreError::History(_) => {
                tracing::error!(error = %e, "storage error");
                ApiError::unavailable("the store cannot read or write right now (storage error); nothing was saved", 5)
            }
            StoreError::Durability(why) => {
                tracing::error!(error = %why, "a sync failed");
                ApiError::unavailable(
                    "the store cannot make writes durable (a sync failed); writes are refused until a restart",
                    5,
                )
            }
            StoreError::Overloaded => ApiError::unavailable("the server is busy; nothing was saved; retry shortly", 1),
            StoreError::Replica => ApiError::unavailable(
                "this cluster node follows the leader and takes no writes itself; nothing was saved; retry",
                1,
            ),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server-error",
                    "internal storage error; see the server log",
                )
            }
        }
    }
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::NotFound => ApiError::not_found("room not found"),
            RoomError::Missing(_) => ApiError::not_found(e.to_string()),
            other => ApiError::invalid(other.to_string()),
        }
    }
}

impl From<crate::sessions::Denial> for ApiError {
    /// A refused join, in Daily's words: 404 for `no-room`, 429 for a full lobby, 403 for every
    /// other refusal.
    fn from(d: crate::sessions::Denial) -> Self {
        let status = match d.error {
            "no-room" => StatusCode::NOT_FOUND,
            "rate-limit-error" => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::FORBIDDEN,
        };
        ApiError::new(status, d.error, d.info)
    }
}

impl From<crate::store::SessionDataError> for ApiError {
    fn from(e: crate::store::SessionDataError) -> Self {
        match e {
            crate::store::SessionDataError::NoRoom => ApiError::not_found("room not found"),
            other => ApiError::invalid(other.to_string()),
        }
    }
}

impl From<crate::store::EjectError> for ApiError {
    fn from(e: crate::store::EjectError) -> Self {
        match e {
            crate::store::EjectError::NoRoom => ApiError::not_found("room not found"),
            other => ApiError::invalid(other.to_string()),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Property(_) => ApiError::invalid(e.to_string()),
            TokenError::Signing | TokenError::WeakKey(_) => {
                tracing::error!(error = %e, "token signing failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server-error", "could not sign the token")
            }
        }
    }
}
