//! The room page and the dashboard: static files embedded in the binary at build time (no
//! CDN, no external fonts), served with a Content-Security-Policy that allows no inline script,
//! `frame-ancestors 'none'`, and `Referrer-Policy: no-referrer`.
//!
//! Must not: render untrusted data into HTML on the server; the pages fetch JSON and insert
//! it as text.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

pub type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const ROOM_HTML: &str = include_str!("assets/room.html");
const DASHBOARD_HTML: &str = include_str!("assets/dashboard.html");
const ROOM_JS: &str = include_str!("assets/room.js");
const MEDIA_JS: &str = include_str!("assets/media.js");
const DASHBOARD_JS: &str = include_str!("assets/dashboard.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

fn respond(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The dashboard page.
pub fn dashboard() -> Response<Body> {
    respond(DASHBOARD_HTML, "text/html; charset=utf-8")
}

/// The room page (the same document for every room; it reads the name from its address).
pub fn room_page() -> Response<Body> {
    respond(ROOM_HTML, "text/html; charset=utf-8")
}

/// `/assets/<file>`, if it is one of ours.
pub fn asset(name: &str) -> Option<Response<Body>> {
    Some(match name {
        "room.js" => respond(ROOM_JS, "text/javascript; charset=utf-8"),
        "media.js" => respond(MEDIA_JS, "text/javascript; charset=utf-8"),
        "dashboard.js" => respond(DASHBOARD_JS, "text/javascript; charset=utf-8"),
        "style.css" => respond(STYLE_CSS, "text/css; charset=utf-8"),
        _ => return None,
    })
}
