//! Signatures for every delivery attempt, made afresh with the attempt's own timestamp:
//! Daily's (`X-Webhook-Signature` = base64 HMAC-SHA256 of `timestamp.body`) and Standard
//! Webhooks' (`webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`), both keyed
//! with the base64-decoded `hmac` secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A fresh random secret: 32 bytes, base64 (Daily's `hmac`).
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    STANDARD.encode(b)
}

/// The key bytes of a secret (`whsec_` prefix allowed, as Standard Webhooks writes them).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).ok().filter(|k| !k.is_empty())
}

fn mac(key: &[u8], parts: &[&[u8]]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length"); // cannot fail: any key length
    for p in parts {
        m.update(p);
    }
    STANDARD.encode(m.finalize().into_bytes())
}

/// Headers for one attempt at delivering `body` (event id `id`) at unix second `ts`.
pub fn headers(key: &[u8], id: &str, ts: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts_s = ts.to_string();
    vec![
        ("x-webhook-signature", mac(key, &[ts_s.as_bytes(), b".", body])),
        ("x-webhook-timestamp", ts_s.clone()),
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts_s.clone()),
        ("webhook-signature", format!("v1,{}", mac(key, &[id.as_bytes(), b".", ts_s.as_bytes(), b".", body]))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vector from the Standard Webhooks specification's test suite.
    #[test]
    fn standard_webhooks_reference_vector() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let h = headers(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        let sig = h.iter().find(|(k, _)| *k == "webhook-signature").unwrap();
        assert_eq!(sig.1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn daily_signature_is_over_timestamp_dot_body() {
        let key = secret_key(&new_secret()).unwrap();
        let h = headers(&key, "evt_x_1", 1700000000, b"{}");
        assert_eq!(h[0].1, mac(&key, &[b"1700000000.{}"]));
        assert!(secret_key("not base64!").is_none());
    }
}
