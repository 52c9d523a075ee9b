//! Reading requests and writing responses: size-limited bodies, JSON parsing with errors that
//! say what is wrong, query strings, path segments, and typed field extraction.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::Body;

/// How much of an oversized body we read and discard so the client sees our 413 instead of a
/// reset connection. Beyond this we answer at once and let the connection drop.
const DRAIN_LIMIT: u64 = 1024 * 1024;

/// Reads the whole body within the body deadline (408 past it, and the connection closes),
/// refusing more than `limit` (413).
async fn read_body_up_to(state: &super::AppState, req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(state.settings.conn.body_timeout, read_limited(req, limit)).await {
        Ok(r) => r,
        Err(_) => {
            state.conn_metrics.closed(super::conn::Closed::BodyTimeout);
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid-request-error",
                format!("the request body did not arrive within {} s", state.settings.conn.body_timeout.as_secs()),
            ))
        }
    }
}

async fn read_limited(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= DRAIN_LIMIT) {
            drain(&mut body).await;
        }
        return Err(ApiError::too_large(limit));
    }
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ApiError::invalid("could not read the request body"));
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                drain(&mut body).await;
                return Err(ApiError::too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

async fn drain(body: &mut Incoming) {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len() as u64);
        if seen > DRAIN_LIMIT {
            return;
        }
    }
}

/// Reads the body as it is, within `limit` and the body deadline (what the Janus relay passes
/// on, what Janus's event handler posts).
pub async fn read_bytes(state: &super::AppState, req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    read_body_up_to(state, req, limit).await
}

/// Reads and parses a JSON object body (an empty body is `{}`) within the body limit.
pub async fn read_object(state: &super::AppState, req: Request<Incoming>) -> Result<Map<String, Value>, ApiError> {
    parse_object(&read_body_up_to(state, req, state.settings.body_limit).await?)
}

/// Reads the body as a request type (`api::requests`; an empty body is `{}`) within the body
/// limit.
pub async fn read<T: serde::de::DeserializeOwned>(
    state: &super::AppState,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    read_up_to(state, req, state.settings.body_limit).await
}

/// [`read`] with another limit (the batch endpoints take more than one room's worth).
pub async fn read_up_to<T: serde::de::DeserializeOwned>(
    state: &super::AppState,
    req: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiError> {
    decode(&read_body_up_to(state, req, limit).await?)
}

/// A body as a request type. An object is first read straight into `T`; whatever that refuses
/// (or a body that is not an object) goes the long way, through a JSON value, whose refusals
/// (their wording, duplicate keys where the last one wins) are the API's. A body the straight
/// read takes is one the long way takes too, as the same `T` — because every request type
/// denies unknown fields (serde_json skips an unknown field's value without the checks a
/// JSON value's parse makes: nesting depth, lone surrogates, numbers out of range).
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        if let Ok(v) = T::deserialize(&mut de) {
            if de.end().is_ok() {
                return Ok(v);
            }
        }
    }
    typed(parse_object(bytes)?)
}

/// A JSON object as a request type, refused as the API words it: a field the type does not
/// name is an "unknown parameter", a value of the wrong JSON type "must be" the right one.
pub fn typed<T: serde::de::DeserializeOwned>(body: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(body)).map_err(|e| {
        let path = e.path().to_string();
        ApiError::invalid(refusal(&path, &e.into_inner().to_string()))
    })
}

/// serde's words for a refused field, in the API's.
fn refusal(path: &str, serde_says: &str) -> String {
    if let Some(rest) = serde_says.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return format!("unknown parameter '{}'", clip(name));
    }
    if let Some((_, expected)) = serde_says.split_once(", expected ") {
        let what = match expected {
            "a map" => "an object",
            "a sequence" => "an array",
            "a boolean" => "true or false",
            other => other,
        };
        return format!("'{}' must be {what}", clip(path));
    }
    format!("'{}': {}", clip(path), clip_long(serde_says))
}

/// Parses a JSON object body; an empty body is `{}`.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::json_parsing(format!("body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid("body must be a JSON object")),
    }
}

/// Shortens text we echo in error messages (names, not secrets).
pub fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Like [`clip`], for longer diagnostics (transport errors).
pub fn clip_long(s: &str) -> String {
    s.chars().take(300).filter(|c| !c.is_control()).collect()
}

/// Query parameters (form-encoded). Invalid UTF-8 is a 400.
pub fn query(req: &Request<Incoming>) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode_component(k)?, decode_component(v)?);
    }
    Ok(out)
}

fn decode_component(s: &str) -> Result<String, ApiError> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::invalid("query string is not valid UTF-8"))
}

/// An optional integer query parameter within a range.
pub fn int_param(q: &HashMap<String, String>, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(format!("'{name}' must be an integer between {min} and {max}"))),
        },
    }
}

pub fn bool_param(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(_) => Err(ApiError::invalid(format!("'{name}' must be true or false"))),
    }
}

/// The type an answer was made from (set in debug builds; the router then checks it against
/// what the route declares, see `api::handle`).
#[derive(Debug, Clone)]
pub struct Answered(pub String);

/// Marks `r` as an answer of type `T` (for answers written straight to bytes).
pub fn answered<T: schemars::JsonSchema + ?Sized>(mut r: Response<Body>) -> Response<Body> {
    if cfg!(debug_assertions) {
        r.extensions_mut().insert(Answered(T::schema_name().into_owned()));
    }
    r
}

/// `v` as a JSON answer with this status.
pub fn json_response<T: serde::Serialize + schemars::JsonSchema + ?Sized>(status: StatusCode, v: &T) -> Response<Body> {
    // Through a `Value`: its objects keep their keys in order, so every answer lists its fields
    // alphabetically, as it always has (and as the README's tour shows them).
    match serde_json::to_value(v).and_then(|v| serde_json::to_vec(&v)) {
        Ok(bytes) => answered::<T>(json_bytes(status, bytes)),
        Err(e) => {
            // Only a map whose keys are not strings could fail: no answer has one.
            tracing::error!(error = %e, "an answer could not be written as JSON");
            let body = br#"{"error":"server-error","info":"the answer could not be written"}"#.to_vec();
            answered::<super::responses::Error>(json_bytes(StatusCode::INTERNAL_SERVER_ERROR, body))
        }
    }
}

/// `v` as a 200 answer written straight from `T`, whose fields must be declared in
/// alphabetical order (what [`json_response`] writes through a `Value`; debug builds, so
/// every test run, check that it is the same).
pub fn ok_sorted<T: serde::Serialize + schemars::JsonSchema + ?Sized>(v: &T) -> Response<Body> {
    let Ok(bytes) = serde_json::to_vec(v) else { return json_response(StatusCode::OK, v) };
    if cfg!(debug_assertions) {
        let sorted = serde_json::to_value(v).and_then(|v| serde_json::to_vec(&v)).ok();
        assert_eq!(sorted.as_deref(), Some(&bytes[..]), "{} declares its fields out of order", T::schema_name());
    }
    answered::<T>(json_bytes(StatusCode::OK, bytes))
}

/// JSON already written.
pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `v` as a 200 answer.
pub fn ok<T: serde::Serialize + schemars::JsonSchema + ?Sized>(v: &T) -> Response<Body> {
    json_response(StatusCode::OK, v)
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.status, &e.body());
    if let Some(secs) = e.retry_after {
        r.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    if let Some(allow) = e.allow {
        r.headers_mut().insert("allow", HeaderValue::from_static(allow));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: Option<String>,
        privacy: Option<Value>,
        properties: Option<Map<String, Value>>,
        small: Option<u8>,
        nested: Option<Nested>,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Nested {
        a: i64,
    }

    /// A real request type: both ways take the body, or refuse it with the same status and words.
    fn same_outcome<T: serde::de::DeserializeOwned>(b: &str) {
        let words =
            |r: Result<T, ApiError>| r.map(|_| ()).map_err(|e| (e.status, serde_json::to_string(&e.body()).unwrap()));
        assert_eq!(words(decode(b.as_bytes())), words(parse_object(b.as_bytes()).and_then(typed)), "{b}");
    }

    /// The straight read takes what the long way takes, as the same value, and leaves every
    /// refusal to the long way (same status, same words).
    #[test]
    fn decode_answers_what_the_long_way_answers() {
        let bodies = [
            r#"{"name":"a","properties":{"x":1,"x":2},"privacy":null}"#,
            r#"  {"small": 7, "nested": {"a": -3}}  "#,
            r#"{"name":"a","name":"b"}"#,
            r#"{"unknown":1}"#,
            r#"{"small":300}"#,
            r#"{"small":1.5}"#,
            r#"{"nested":[5]}"#,
            r#"[{"name":"a"}]"#,
            r#"{"name":"a"} x"#,
            r#"{"name":"a""#,
            r#"{"name":"\ud800"}"#,
            "",
            "  \n",
            "null",
            r#""{}""#,
        ];
        for b in
            bodies.iter().chain(&[r#"{"properties":{"room_name":"r","x":[1,{"y":null}]}}"#, r#"{"properties":[]}"#])
        {
            same_outcome::<super::super::requests::TokenRequest>(b);
            same_outcome::<super::super::requests::RoomWrite>(b);
        }
        for b in bodies {
            let fast = decode::<Body>(b.as_bytes());
            let long = parse_object(b.as_bytes()).and_then(typed::<Body>);
            match (fast, long) {
                (Ok(f), Ok(l)) => assert_eq!(f, l, "{b}"),
                (Err(f), Err(l)) => {
                    assert_eq!(f.status, l.status, "{b}");
                    assert_eq!(
                        serde_json::to_string(&f.body()).unwrap(),
                        serde_json::to_string(&l.body()).unwrap(),
                        "{b}"
                    );
                }
                (f, l) => panic!("{b}: straight {:?}, long way {:?}", f.is_ok(), l.is_ok()),
            }
        }
    }
}
