//! The admin CLI: `gatehouse token` mints offline the same token the API gives, and
//! `gatehouse keys generate` prints a key the server accepts.

mod common;
use common::{Server, KEY};
use serde_json::json;

fn gatehouse(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(args).env_remove("GATEHOUSE_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn token_minted_offline_validates_and_joins() {
    let s = Server::start();
    s.create_room(json!({"name": "cli", "privacy": "private"}));
    let dir = s.dir.to_string_lossy().to_string();
    let (ok, token, err) = gatehouse(
        &["token", "--room", "cli", "--owner", "--exp", "1h", "--user-name", "Ops", "--data-dir", &dir],
        &[("GATEHOUSE_API_KEY", KEY)],
    );
    assert!(ok, "{err}");
    let v = s.get(&format!("/v1/meeting-tokens/{token}?verbose=true")).body;
    assert_eq!(
        (v["status"].as_str(), v["is_owner"].as_bool(), v["room_name"].as_str()),
        (Some("valid"), Some(true), Some("cli"))
    );
    let exp = v["exp"].as_i64().unwrap();
    let now = s.now_secs();
    assert!((exp - now - 3600).abs() <= 5, "exp in an hour: {exp} vs {now}");
    let (_, _, body) = s.join_ok("cli", Some(&token));
    assert_eq!(body["owner"], true);
    // Carries this server's domain, like the API's tokens.
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["d"], s.get("/v1/").body["domain_id"]);
    assert!(claims["jti"].is_string() && claims["iat"].is_i64());
    let (ok, _, err) =
        gatehouse(&["token", "--room", "cli", "--exp", "soon", "--data-dir", &dir], &[("GATEHOUSE_API_KEY", KEY)]);
    assert!(!ok && err.contains("--exp"), "{err}");
}

#[test]
fn generated_keys_are_accepted() {
    let (ok, key, _) = gatehouse(&["keys", "generate"], &[]);
    assert!(ok);
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_in(&tmp.path().join("d"), &[("GATEHOUSE_API_KEY", &key)]);
    assert_eq!(s.call("GET", "/v1/", Some(&key), None).status, 200);
}

#[test]
fn first_start_generates_prints_and_keeps_a_key() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("GATEHOUSE_API_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("gatehouse listening") {
            break;
        }
        printed.push_str(&line);
        printed.push('\n');
    }
    let _ = child.kill();
    let _ = child.wait();
    let stored = std::fs::read_to_string(dir.join("api_key")).unwrap().trim().to_string();
    assert!(printed.contains(&stored), "the generated key is printed once: {printed}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.join("api_key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
}

/// Logs are plain text when stderr is not a terminal (journald, files), without the scheduler
/// library's start-up chatter; long CLI work shows progress on a terminal and is quiet when piped.
#[test]
fn plain_logs_and_progress_only_on_a_terminal() {
    let mut s = Server::start_with(&[("GATEHOUSE_LOG", "")]);
    s.create_room(json!({"name": "progress"}));
    let dir = s.dir.to_string_lossy().to_string();
    s.terminate();
    let log = s.log();
    assert!(log.contains("store open"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI colour codes in a piped log:\n{log}");
    assert!(!log.contains("tokio_cron_scheduler"), "scheduler chatter at info:\n{log}");
    let tmp = tempfile::tempdir().unwrap();
    let piped = tmp.path().join("piped.ghbk");
    let (ok, out, err) =
        gatehouse(&["backup", piped.to_str().unwrap(), "--data-dir", &dir], &[("GATEHOUSE_API_KEY", KEY)]);
    assert!(ok, "{err}");
    assert!(out.contains("backup written"), "{out}");
    assert!(!err.contains('\r') && !err.contains("MiB"), "progress when piped: {err:?}");
    // Under a terminal (script(1) gives it a pty), the same command shows its progress.
    let on_tty = tmp.path().join("tty.ghbk");
    let cmd = format!("{} backup {} --data-dir {dir}", env!("CARGO_BIN_EXE_gatehouse"), on_tty.display());
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("GATEHOUSE_API_KEY", KEY)
        .output()
        .expect("script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("MiB") && text.contains("done"), "no progress on a terminal: {text:?}");
    let restored = tmp.path().join("restored");
    let cmd =
        format!("{} restore {} --data-dir {}", env!("CARGO_BIN_EXE_gatehouse"), on_tty.display(), restored.display());
    let out = std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("restore:"), "{text:?}");
}
