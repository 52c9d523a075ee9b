//! Meeting tokens, black-box: creation, validation (ignoreNbf, verbose), tokens minted
//! offline with only jsonwebtoken and the API key, and every kind of bad token.

mod common;
use common::{Server, KEY};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn offline(claims: Value, alg: Algorithm, key: &str, kid: Option<&str>) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(key.as_bytes()).unwrap()).unwrap()
}

fn payload(token: &str) -> Value {
    use base64::Engine;
    let seg = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
}

fn header(token: &str) -> Value {
    use base64::Engine;
    let seg = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
}

#[test]
fn issued_token_uses_compact_claims_kid_and_domain() {
    let s = Server::start();
    let domain = s.get("/v1/").body["domain_id"].as_str().unwrap().to_string();
    let t = s.token(json!({"room_name": "private-room-test", "is_owner": true, "user_name": "Ann", "user_id": "u-1",
        "exp": 1893456000, "nbf": 1500000000, "eject_at_token_exp": true, "eject_after_elapsed": 3, "enable_prejoin_ui": true}));
    let p = payload(&t);
    assert_eq!(p["r"], "private-room-test");
    assert_eq!(p["o"], true);
    assert_eq!(p["u"], "Ann");
    assert_eq!(p["ud"], "u-1");
    assert_eq!(p["ejt"], true);
    assert_eq!(p["eje"], 3);
    assert_eq!(p["d"], domain.as_str());
    assert!(p["iat"].is_i64() && p["jti"].is_string());
    assert_eq!(header(&t)["alg"], "HS256");
    assert_eq!(header(&t)["kid"].as_str().unwrap().len(), 16);

    let v = s.get(&format!("/v1/meeting-tokens/{t}"));
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.body["room_name"], "private-room-test");
    assert_eq!(v.body["is_owner"], true);
    assert_eq!(v.body["user_name"], "Ann");
    assert_eq!(v.body["exp"], 1893456000);
    assert_eq!(v.body["eject_after_elapsed"], 3);
    assert_eq!(v.body["enable_prejoin_ui"], true);
}

#[test]
fn token_created_event_and_listing_never_hold_the_jwt() {
    let s = Server::start();
    let t = s.token(json!({"room_name": "a"}));
    s.token(json!({"room_name": "b", "user_id": "bob"}));
    s.token(json!({}));
    let events = s.events();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["type"] == "meeting-token.created"));
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&t) && !text.contains(t.split('.').nth(2).unwrap()));
    let all = s.get("/v1/meeting-tokens").body;
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    assert_eq!(all["data"][0]["room_name"], Value::Null, "newest first");
    let b = s.get("/v1/meeting-tokens?room_name=b").body;
    assert_eq!(b["data"].as_array().unwrap().len(), 1);
    assert_eq!(b["data"][0]["user_id"], "bob");
    let page = s.get("/v1/meeting-tokens?limit=2").body;
    assert_eq!(page["has_more"], true);
    let after = page["data"][1]["jti"].as_str().unwrap();
    let rest = s.get(&format!("/v1/meeting-tokens?limit=2&starting_after={after}")).body;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["room_name"], "a");
    assert!(!serde_json::to_string(&all).unwrap().contains(&t));
}

#[test]
fn token_properties_are_validated() {
    let s = Server::start();
    let cases = [
        (json!({"properties": {"room": "x"}}), "room"),
        (json!({"properties": {"user_name": "x".repeat(101)}}), "user_name"),
        (json!({"properties": {"user_name": "bell\u{7}"}}), "user_name"),
        (json!({"properties": {"exp": "soon"}}), "exp"),
        (json!({"properties": {"nbf": -1}}), "nbf"),
        (json!({"properties": {"is_owner": "yes"}}), "is_owner"),
        (json!({"properties": {"room_name": "bad name"}}), "room_name"),
        (json!({"properties": {"permissions": {"canAdmin": 5}}}), "permissions"),
        (json!({"properties": {"nbf": 20, "exp": 10}}), "nbf"),
        (json!({"props": {}}), "props"),
    ];
    for (body, word) in cases {
        let r = s.post("/v1/meeting-tokens", &body);
        assert_eq!(r.status, 400, "{body}");
        assert!(r.body["info"].as_str().unwrap().contains(word), "{body}: {}", r.text);
    }
}

#[test]
fn time_checks_ignore_nbf_and_verbose() {
    let s = Server::start();
    let now = s.now_secs();
    let later = s.token(json!({"room_name": "r", "nbf": now + 3600, "exp": now + 7200}));
    let r = s.get(&format!("/v1/meeting-tokens/{later}"));
    assert_eq!(r.status, 400);
    assert!(r.body["info"].as_str().unwrap().contains("not valid yet"));
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{later}?ignoreNbf=true")).status, 200);
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{later}?verbose=true")).body["status"], "not_yet_valid");
    s.advance(3600.0);
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{later}")).status, 200);
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{later}?verbose=true")).body["status"], "valid");
    s.advance(3600.0);
    let r = s.get(&format!("/v1/meeting-tokens/{later}"));
    assert_eq!(r.status, 400);
    assert!(r.body["info"].as_str().unwrap().contains("expired"));
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{later}?verbose=true")).body["status"], "expired");
}

#[test]
fn offline_tokens_minted_with_the_api_key_validate() {
    let s = Server::start();
    let domain = s.get("/v1/").body["domain_id"].as_str().unwrap().to_string();
    // As a real client mints them: no kid, no iat, some long names, unknown extras.
    let t = offline(
        json!({"r": "room-1", "d": domain, "u": "Zoe", "o": false, "enable_prejoin_ui": true,
        "enable_terse_logging": true, "x_custom": [1, 2]}),
        Algorithm::HS256,
        KEY,
        None,
    );
    let r = s.get(&format!("/v1/meeting-tokens/{t}"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["room_name"], "room-1");
    assert_eq!(r.body["user_name"], "Zoe");
    assert_eq!(r.body["enable_prejoin_ui"], true);
    // Fractional exp is a number too.
    let frac = offline(json!({"exp": 4102444800.5}), Algorithm::HS256, KEY, None);
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{frac}")).status, 200);
    // Without `d` at all: accepted.
    let bare = offline(json!({"r": "x"}), Algorithm::HS256, KEY, None);
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{bare}")).status, 200);
}

#[test]
fn bad_tokens_get_clear_400s() {
    let s = Server::start();
    let other_key = "9999999999999999999999999999999999999999999999999999999999999999aa";
    let cases: Vec<(String, &str)> = vec![
        (offline(json!({"r": "x"}), Algorithm::HS384, KEY, None), "algorithm"),
        (offline(json!({"r": "x"}), Algorithm::HS256, other_key, None), "signature"),
        (offline(json!({"r": "x"}), Algorithm::HS256, KEY, Some("0000000000000000")), "key"),
        (offline(json!({"exp": "1893456000"}), Algorithm::HS256, KEY, None), "exp"),
        (offline(json!({"r": 5}), Algorithm::HS256, KEY, None), "'r'"),
        (offline(json!({"d": "another-domain"}), Algorithm::HS256, KEY, None), "domain"),
        ("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJyIjoieCJ9.".to_string(), "malformed"),
        ("not-a-token".to_string(), "malformed"),
    ];
    for (t, word) in &cases {
        let r = s.get(&format!("/v1/meeting-tokens/{t}"));
        assert_eq!(r.status, 400, "{word}: {}", r.text);
        assert_eq!(r.body["error"], "invalid-request-error");
        assert!(r.body["info"].as_str().unwrap().contains(word), "{word}: {}", r.text);
        assert!(!r.text.contains(t.as_str()), "the token is echoed");
        let v = s.get(&format!("/v1/meeting-tokens/{t}?verbose=true"));
        assert_eq!(v.status, 200);
    }
    // Tampered payload of a good token.
    let good = s.token(json!({"room_name": "x"}));
    let parts: Vec<&str> = good.split('.').collect();
    let forged =
        offline(json!({"r": "x", "o": true}), Algorithm::HS256, "another-key-another-key-another-key-123", None);
    let tampered = format!("{}.{}.{}", parts[0], forged.split('.').nth(1).unwrap(), parts[2]);
    let r = s.get(&format!("/v1/meeting-tokens/{tampered}"));
    assert_eq!(r.status, 400);
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{tampered}?verbose=true")).body["status"], "bad_signature");
    let unknown_kid = &cases[2].0;
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{unknown_kid}?verbose=true")).body["status"], "unknown_key");
    // The key never appears in the log.
    assert!(!s.log().contains(KEY));
}

#[test]
fn several_keys_each_sign_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let k2 = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let keys = format!("{KEY},{k2}");
    let s = Server::start_in(&tmp.path().join("d"), &[("GATEHOUSE_API_KEY", &keys)]);
    let r = s.call("POST", "/v1/meeting-tokens", Some(k2), Some(r#"{"properties":{"room_name":"x"}}"#));
    assert_eq!(r.status, 200);
    let t = r.body["token"].as_str().unwrap();
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{t}")).status, 200);
    let offline2 = offline(json!({"r": "x"}), Algorithm::HS256, k2, None);
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{offline2}")).status, 200);
}

/// A token minted offline is held to the rules the API applies when it mints one: a claim the
/// API would refuse is refused at validation and at join, naming the claim (never its value),
/// and the refused join is logged as `participant.join-denied`.
#[test]
fn offline_tokens_follow_the_api_rules() {
    let s = Server::start();
    s.create_room(json!({"name": "room-a", "privacy": "private"}));
    let long = "x".repeat(300);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"r": "room-a", "u": "nul\u{0}inside"}), "'u'"),
        (json!({"r": "room-a", "u": "bell\u{7}"}), "'u'"),
        (json!({"r": "room-a", "user_name": "x".repeat(101)}), "'user_name'"),
        (json!({"r": "room-a", "ud": "a\u{0}b"}), "'ud'"),
        (json!({"r": "room-a", "ud": long}), "'ud'"),
        (json!({"r": "room-a", "exp": 253402300800u64}), "'exp'"),
        (json!({"r": "room-a", "nbf": 1e15}), "'nbf'"),
        (json!({"r": "room-a", "nbf": 2000000000, "exp": 1900000000}), "'nbf'"),
        (json!({"r": "room-a", "iat": -5}), "'iat'"),
        (json!({"r": "room-a", "eje": 0}), "'eje'"),
        (json!({"r": "room-a", "p": {"canSend": true, "sneaky": 1}}), "'p'"),
        (json!({"r": "room a"}), "'r'"),
        (json!({"r": "room-a", "jti": long}), "'jti'"),
    ];
    for (claims, word) in &cases {
        let t = offline(claims.clone(), Algorithm::HS256, KEY, None);
        let r = s.get(&format!("/v1/meeting-tokens/{t}"));
        assert_eq!(r.status, 400, "{claims}: {}", r.text);
        let info = r.body["info"].as_str().unwrap();
        assert!(info.contains(word), "{claims}: {info}");
        assert!(!info.contains(&long) && !info.contains("nul"), "the claim's value is echoed: {info}");
        let v = s.get(&format!("/v1/meeting-tokens/{t}?verbose=true"));
        assert_eq!(v.body["status"], "invalid_claims", "{claims}: {}", v.text);
        let j = s.join("room-a", Some(&t), None);
        assert_eq!(j.status, 403, "{claims}: {}", j.text);
        assert_eq!(j.body["error"], "not-allowed");
        assert!(j.body["info"].as_str().unwrap().contains(word), "{claims}: {}", j.text);
    }
    let denied = s.events_of("participant.join-denied");
    assert_eq!(denied.len(), cases.len());
    assert!(denied.iter().all(|e| e["payload"]["detail"] == "bad_claim"), "{denied:?}");
    // The same claims, within the rules, are accepted, fractional times included.
    let fine = offline(
        json!({"r": "room-a", "u": "Zoë 🙂", "ud": "a-b", "exp": 4102444800.25, "nbf": 1.5, "iat": 100.5, "eje": 60}),
        Algorithm::HS256,
        KEY,
        None,
    );
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{fine}")).status, 200);
    assert_eq!(s.join("room-a", Some(&fine), None).status, 200);
}
