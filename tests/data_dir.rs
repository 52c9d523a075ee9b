//! The data dir is private: everything the server creates there (its own files and sled's) is
//! 0700/0600 — webhook secrets and the API key live there —, a data dir others can read is made
//! private at start with a line in the log (not a warning about a dir the server made itself),
//! and another user's data dir is refused with the reason.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Server, KEY};
use serde_json::json;

/// Every folder and file under `dir` whose mode lets group or others in.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.permissions().mode() & 0o077 != 0 {
            out.push(format!("{} {:o}", p.display(), meta.permissions().mode() & 0o777));
        }
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

#[test]
fn everything_the_server_creates_is_private() {
    let r = common::receiver::Receiver::start();
    let mut s = Server::start();
    s.create_room(json!({"name": "private"}));
    assert_eq!(s.post("/v1/webhooks", &json!({"url": r.url, "basicAuth": "user:secret"})).status, 200);
    s.terminate();
    let dir = s.dir.clone();
    assert!(dir.join("store/db").exists() && dir.join("wal").exists() && dir.join("events").exists());
    assert_eq!(open_to_others(&dir), Vec::<String>::new(), "open to others");
    assert!(!s.log().contains("readable by others"), "a warning about the dir the server made itself:\n{}", s.log());
}

#[test]
fn a_data_dir_others_can_read_is_made_private() {
    let mut s = Server::start();
    s.create_room(json!({"name": "loose"}));
    s.terminate();
    let dir = s.dir.clone();
    let status = Command::new("chmod").args(["-R", "go+rX"]).arg(&dir).status().unwrap();
    assert!(status.success());
    assert!(!open_to_others(&dir).is_empty());
    let s = Server::start_in(&dir, &[]);
    assert_eq!(open_to_others(&dir), Vec::<String>::new());
    assert!(s.log().contains("made the data dir private"), "not said in the log:\n{}", s.log());
    assert_eq!(s.get("/v1/rooms/loose").status, 200);
}

#[test]
fn needs_root_another_users_data_dir_is_refused() {
    // SAFETY: geteuid has no preconditions.
    common::require(unsafe { libc::geteuid() } == 0, "root (to give a folder to another user)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(4242), Some(4242)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("GATEHOUSE_API_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running on another user's data dir after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "started on another user's data dir");
    assert!(stderr.contains("belongs to uid 4242") && stderr.contains("chown"), "no reason given:\n{stderr}");
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), 4242);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "it wrote into it anyway");
}
