//! Native TLS: a generated self-signed certificate serves HTTPS; after the files are replaced,
//! SIGHUP makes new connections see the new certificate while an open connection carries on.

mod common;
use common::Server;

fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

fn client_trusting(pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_certificate_reload_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert1, key1) = self_signed();
    let (cert2, key2) = self_signed();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let env = [("GATEHOUSE_TLS_CERT", cert_path.to_str().unwrap()), ("GATEHOUSE_TLS_KEY", key_path.to_str().unwrap())];
    let s = tokio::task::block_in_place(|| Server::start_in(&tmp.path().join("d"), &env));
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let url = format!("{}/healthz", s.base);

    let old = client_trusting(&cert1);
    assert_eq!(old.get(&url).send().await.unwrap().status(), 200);
    let new = client_trusting(&cert2);
    assert!(new.get(&url).send().await.is_err(), "the second certificate is not served yet");

    std::fs::write(&cert_path, &cert2).unwrap();
    std::fs::write(&key_path, &key2).unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &s.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    let mut served_new = false;
    for _ in 0..50 {
        if client_trusting(&cert2).get(&url).send().await.is_ok() {
            served_new = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served_new, "after SIGHUP new connections get the new certificate");
    assert_eq!(old.get(&url).send().await.unwrap().status(), 200, "the open connection was not dropped");
    assert!(
        client_trusting(&cert1).get(&url).send().await.is_err(),
        "a new connection no longer gets the old certificate"
    );
    // A broken file on SIGHUP keeps the current certificate.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    std::process::Command::new("kill").args(["-HUP", &s.pid().to_string()]).status().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(client_trusting(&cert2).get(&url).send().await.unwrap().status(), 200);
    drop(s);
}
