//! A store that cannot write answers 503 and acknowledges nothing; once there is room again it
//! recovers, and every write it did acknowledge survives a restart. Uses a small tmpfs, so it
//! needs root (`./run-tests` stops before testing when it is not root).

mod common;
use common::Server;
use serde_json::json;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &std::path::Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).ok()?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .ok()?
        .success();
    ok.then(|| Mount(at.to_path_buf()))
}

#[test]
fn needs_root_full_disk_answers_503_and_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path().join("small");
    let mount = mount_tmpfs(&at, "6m");
    common::require(mount.is_some(), "root, to mount a small tmpfs");
    let mount = mount.unwrap();
    let dir = at.join("data");
    let mut s = Server::start_in(&dir, &[]);
    let hook = "h".repeat(2000);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..20_000 {
        let name = format!("room-{i}");
        let r = s.post("/v1/rooms", &json!({"name": name, "properties": {"meeting_join_hook": hook}}));
        match r.status {
            200 => acked.push(name),
            503 => {
                assert_eq!(r.body["error"], "server-error");
                assert!(r.header("retry-after").is_some());
                refused = Some(name);
                break;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    let refused = refused.expect("the disk never filled up");
    assert!(!acked.is_empty());
    // Not ready while it cannot write. A checkpoint may free journal files meanwhile: then
    // readiness must be true, and the refused write now goes through.
    let ready = s.call("GET", "/readyz", None, None);
    if ready.status != 503 {
        assert_eq!(ready.status, 200, "{}", ready.text);
        let again = s.post("/v1/rooms", &json!({"name": refused, "properties": {"meeting_join_hook": hook}}));
        assert_eq!(again.status, 200, "ready, yet the write is refused: {} ({})", again.text, ready.text);
        acked.push(refused.clone());
    }
    // Room again: grow the tmpfs, restart, and everything acknowledged is there.
    let grown = std::process::Command::new("mount").args(["-o", "remount,size=64m"]).arg(&mount.0).status().unwrap();
    assert!(grown.success());
    s.kill9();
    let s = Server::start_in(&dir, &[]);
    for name in &acked {
        assert_eq!(s.get(&format!("/v1/rooms/{name}")).status, 200, "acknowledged {name} lost");
    }
    s.create_room(json!({"name": "after-the-storm"}));
    let seqs: Vec<u64> = s.events().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "the event log has a gap");
    drop(s);
}
