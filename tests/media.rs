//! Real calls: Gatehouse in front of a real Janus, room pages in headless Chromium with fake
//! camera and microphone (`tests/browser/media.mjs`), video flowing both ways through Janus.
//! For each way a session is ended (the REST eject, the owner's Eject and Eject-and-ban
//! buttons, token revocation, the token's expiry, the room's deletion) the ended page is made
//! hostile (it ignores its end and keeps sending) and the host's page must stop receiving its
//! media within 2 s (WebRTC `getStats`), and the ended page says why. `canSend` false stops a
//! guest's media the same way. After `kill -9` of Janus (and a restart), the pages join again
//! by themselves, a new guest's media flows, and an ejected session's credential is refused.
//! After `kill -9` of Gatehouse mid-call, a guest whose token deadline passed while it was down
//! loses its media once it is back, and a guest still live keeps it.
//! Janus's event handler posts to Gatehouse: a guest's media shows as `connected` in presence
//! and in a `participant.media` event, then `disconnected` when its page hangs up.
//!
//! Janus never gathers ICE candidates on loopback interfaces, so the test runs itself again in
//! a network namespace of its own (`unshare -n`, as root) with a veth pair on private
//! addresses: Janus, Gatehouse and Chromium talk only inside it.

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;

const INSIDE: &str = "GATEHOUSE_TEST_IN_NETNS";
const ADMIN_KEY: &str = "videoroom-admin-key-for-tests";
const ADMIN_SECRET: &str = "janus-admin-secret-for-tests";

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).status().is_ok_and(|s| s.success())
}

#[test]
fn needs_janus_and_chromium_every_end_of_a_session_cuts_its_real_media() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::require(have("janus"), "janus (Debian package janus)");
    common::require(Path::new("/usr/bin/chromium").exists(), "Debian's chromium at /usr/bin/chromium");
    common::require(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core in tests/browser/node_modules (npm ci)",
    );
    common::require(have("unshare") && have("ip"), "unshare (util-linux) and ip (iproute2)");
    if std::env::var_os(INSIDE).is_none() {
        // Again, alone, in a network namespace of its own.
        let out = Command::new("unshare")
            .args(["-n", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "needs_janus_and_chromium_every_end_of_a_session_cuts_its_real_media", "--nocapture"])
            .env(INSIDE, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        common::require(
            !stderr.contains("unshare failed") || !stderr.contains("Operation not permitted"),
            "root, to make a network namespace (unshare -n)",
        );
        assert!(out.status.success(), "in the network namespace:\n{stdout}\n{stderr}");
        assert!(stdout.contains("test result: ok. 1 passed"), "the test did not run inside:\n{stdout}");
        return;
    }
    common::janus_config::media_network();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("janus");
    std::fs::create_dir_all(&dir).unwrap();
    let (port, admin_port, gatehouse_port) = (common::free_port(), common::free_port(), common::free_port());
    common::janus_config::write(&dir, port, admin_port, ADMIN_KEY, ADMIN_SECRET);
    // Janus's event handler posts to Gatehouse (started next, on the port chosen here).
    let backend = format!("http://127.0.0.1:{gatehouse_port}/v1/janus/events");
    common::janus_config::write_event_handler(&dir, &backend, common::KEY);
    let log = dir.join("janus.log");
    let mut janus = common::janus_config::run(&dir, port, Some(&log));
    let (url, admin_url) = (format!("http://127.0.0.1:{port}/janus"), format!("http://127.0.0.1:{admin_port}/admin"));
    let listen = format!("127.0.0.1:{gatehouse_port}");
    let env = [
        ("GATEHOUSE_LISTEN", listen.as_str()),
        // A short lease, for the path where a page's network goes and its media does not.
        ("GATEHOUSE_LEASE_SECS", "6"),
        ("GATEHOUSE_JANUS_URL", url.as_str()),
        ("GATEHOUSE_JANUS_ADMIN_KEY", ADMIN_KEY),
        ("GATEHOUSE_JANUS_ADMIN_URL", admin_url.as_str()),
        ("GATEHOUSE_JANUS_ADMIN_SECRET", ADMIN_SECRET),
    ];
    let s = Server::start_with(&env);
    // What the script needs to start it again after its kill -9 (the same data, port, settings).
    let mut restart: serde_json::Map<String, serde_json::Value> =
        env.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    restart.insert("GATEHOUSE_API_KEY".into(), s.key.clone().into());
    restart.insert("GATEHOUSE_JOIN_RATE".into(), "100000".into());
    restart.insert("GATEHOUSE_JOIN_BURST".into(), "100000".into());
    let out = Command::new("node")
        .arg(root.join("tests/browser/media.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("BASE", &s.base)
        .env("KEY", &s.key)
        .env("SHOTS", root.join("target/browser-screenshots"))
        .env("JANUS_PID", janus.id().to_string())
        .env("GATEHOUSE_PID", s.pid().to_string())
        .env("GATEHOUSE_BIN", env!("CARGO_BIN_EXE_gatehouse"))
        .env("GATEHOUSE_DATA", &s.dir)
        .env("GATEHOUSE_LISTEN", &listen)
        .env("GATEHOUSE_ENV", serde_json::Value::Object(restart).to_string())
        .env("JANUS_DIR", &dir)
        .output()
        .unwrap();
    let _ = janus.kill();
    let _ = janus.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "media tests failed:\n{stdout}\n{}\nserver log:\n{}\njanus log (tail):\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log(),
        std::fs::read_to_string(&log).unwrap_or_default().lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}
