//! The OpenAPI document: every documented operation is one the router answers, and
//! schemathesis (installed by ./run-tests) finds no 5xx and no response that does not match it.

mod common;
use common::Server;

#[test]
fn every_documented_operation_is_routed() {
    let s = Server::start();
    let doc = s.call("GET", "/v1/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "{} paths", paths.len());
    for (path, ops) in paths {
        for (method, _) in ops.as_object().unwrap() {
            let concrete = path
                .replace("{name}", "some-room")
                .replace("{id}", "x")
                .replace("{token}", "x")
                .replace("{user_id}", "u");
            if concrete.ends_with("/stream") || concrete == "/v1/backup" {
                continue; // long-lived bodies; covered by their own tests
            }
            let body = (method != "get" && method != "delete").then_some("{}");
            let r = s.call(&method.to_uppercase(), &concrete, Some(&s.key), body);
            let unrouted = r.status == 405 || (r.status == 404 && r.body["info"] == "no such route");
            assert!(!unrouted, "{method} {path} is documented but not routed: {}", r.text);
        }
    }
    // And the other way round, for every route family the router has.
    for p in [
        "/v1/rooms/{name}/join",
        "/v1/rooms/{name}/eject",
        "/v1/sessions/{id}/stream",
        "/v1/meeting-tokens/revoke",
        "/v1/events/stream",
        "/v1/webhooks/{id}/replay",
        "/v1/backup",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} is routed but not documented");
    }
}

#[test]
fn needs_python_schemathesis_finds_no_mismatch() {
    let have = std::process::Command::new("schemathesis")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    common::require(have, "the schemathesis command (Python package schemathesis)");
    let s = Server::start();
    let out = std::process::Command::new("schemathesis")
        .args(["run", &s.url("/v1/openapi.json"), "-H", &format!("Authorization: Bearer {}", s.key)])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
        // Long-polls and streams hold the connection open by design; their own tests cover them.
        .args(["--exclude-path-regex", "/stream$|^/v1/events$|^/v1/backup$"])
        .args(["-n", "25", "--request-timeout", "20", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(!s.log().contains("panicked"));
}
