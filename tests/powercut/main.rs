//! The power-cut file system's own test: through a real mount, it drops what was not made
//! durable and keeps what was. Needs root and `/dev/fuse` (`needs_root_` keeps it out of
//! `--fast`).

mod fs;
#[path = "../common/mod.rs"]
mod common;

use std::path::Path;

use fs::{Cut, PowerCut};

fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    common::require(root && Path::new("/dev/fuse").exists(), "root and /dev/fuse (a FUSE file system)");
}

fn mount() -> (tempfile::TempDir, PowerCut) {
    let tmp = tempfile::tempdir().unwrap();
    let fs = PowerCut::mount(tmp.path()).expect("mount the power-cut file system (root and /dev/fuse)");
    (tmp, fs)
}

// ---------------------------------------------------------------------------------------------
// The file system's own tests: it drops what it should and keeps what was synced.

fn write_file(path: &Path, bytes: &[u8], sync: bool) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    if sync {
        f.sync_data().unwrap();
    }
}

fn sync_dir(path: &Path) {
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn needs_root_the_power_cut_file_system_keeps_only_what_was_made_durable() {
    require_fuse();
    let (_tmp, fs) = mount();
    let root = fs.path().to_path_buf();
    // A file synced, its name synced: kept. Data appended without a sync: gone.
    write_file(&root.join("kept"), b"durable", true);
    sync_dir(&root);
    write_file(&root.join("kept"), b"-lost", false);
    // A directory made, its name synced, a file in it with its name synced but no data sync.
    std::fs::create_dir(root.join("d")).unwrap();
    sync_dir(&root);
    write_file(&root.join("d/empty"), b"never synced", false);
    sync_dir(&root.join("d"));
    // A rename without a directory sync is undone; a deletion too.
    write_file(&root.join("old"), b"x", true);
    write_file(&root.join("gone"), b"y", true);
    sync_dir(&root);
    std::fs::rename(root.join("old"), root.join("new")).unwrap();
    std::fs::remove_file(root.join("gone")).unwrap();
    // A file synced, its name never synced: gone, data and all.
    write_file(&root.join("unnamed"), b"synced data", true);
    // sync_file_range is not a sync.
    {
        use std::os::unix::io::AsRawFd;
        write_file(&root.join("kept"), b"-range", false);
        let f = std::fs::File::open(root.join("kept")).unwrap();
        // SAFETY: a valid fd and range.
        let rc = unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                0,
                0,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        assert_eq!(rc, 0);
    }
    let before = fs.stats();
    fs.cut(Cut::Strict);
    assert_eq!(std::fs::read(root.join("kept")).unwrap(), b"durable");
    assert!(!root.join("unnamed").exists(), "a name never synced survived");
    assert_eq!(std::fs::read(root.join("d/empty")).unwrap(), b"", "unsynced data survived");
    assert!(root.join("old").exists() && !root.join("new").exists(), "an unsynced rename survived");
    assert!(root.join("gone").exists(), "an unsynced deletion survived");
    assert!(fs.stats().dropped > before.dropped);

    // What survives a torn cut is the synced part plus a prefix of the rest (maybe zeros).
    for seed in 0..20 {
        let f = root.join(format!("torn-{seed}"));
        write_file(&f, b"0123456789", true);
        sync_dir(&root);
        write_file(&f, b"abcdefghij", false);
        write_file(&f, b"ABCDEFGHIJ", false);
        fs.cut(Cut::Torn(seed));
        let got = std::fs::read(&f).unwrap();
        assert!(got.starts_with(b"0123456789"), "seed {seed}: the synced part was damaged: {got:?}");
        let rest = &got[10..];
        let written = b"abcdefghijABCDEFGHIJ";
        assert!(rest.len() <= written.len(), "seed {seed}: more than was written: {got:?}");
        let ok = rest.iter().zip(written.iter()).all(|(a, b)| a == b || *a == 0);
        assert!(ok, "seed {seed}: a torn tail must be a prefix of what was written, or zeros: {got:?}");
    }

    // A failed fsync loses the data, and the next fsync of the same file succeeds anyway.
    write_file(&root.join("eio"), b"first", true);
    sync_dir(&root);
    fs.fail_fsync("/eio", 1);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(root.join("eio")).unwrap();
        f.write_all(b"-second").unwrap();
        let err = f.sync_data().expect_err("the injected fsync failure");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        f.write_all(b"-third").unwrap();
        f.sync_data().expect("the fsync after a failure succeeds (as on Linux)");
    }
    fs.cut(Cut::Strict);
    assert_eq!(std::fs::read(root.join("eio")).unwrap(), b"first\0\0\0\0\0\0\0-third", "the failed write was not lost");
}

