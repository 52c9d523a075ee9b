//! What makes a file, and the name that points to it, survive a power cut (ARCHITECTURE.md,
//! "Durability"). By POSIX's rules, a file's data is durable once an `fsync`/`fdatasync` of the
//! file returns, and a name — created, renamed or deleted — once an `fsync` of its directory
//! returns; nothing else counts (not `sync_file_range`, not closing the file). Every folder and
//! file the server creates in its data dir goes through these helpers, 0700 and 0600.
//!
//! Must not: retry a failed sync. After a failed `fsync` Linux may have dropped the data it was
//! to write and the next `fsync` succeeds anyway (PostgreSQL's 2018 "fsyncgate"); callers stop
//! acknowledging instead, and a restart recovers from the journal.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every folder the server creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the server creates.
pub const FILE_MODE: u32 = 0o600;

/// Makes every file and folder this process creates private (umask 077), including those
/// libraries create (sled's `db`, `conf`, snapshots and `blobs/`).
pub fn private_by_default() {
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// The folder holding `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the names in `dir` durable (the names, not the contents of the files they name).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes an existing file's data durable (by path: for files another library wrote).
pub fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Creates `dir` and the folders missing above it (0700), each made durable in its parent
/// before the next is made inside it; `dir`'s name is synced in its parent even when it was
/// there already (made by a crashed run before its sync, or by an installer that never synced).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.is_dir() {
        missing.push(at);
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        sync_dir(parent_of(d))?;
    }
    sync_dir(parent_of(dir))
}

/// Syncs a file and drops its pages from the page cache, so that the next read of it comes
/// from the disk (see `store::read_from_disk` for why).
pub fn drop_cached(path: &Path) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = File::open(path)?;
    f.sync_data()?;
    // SAFETY: a valid descriptor; the call only advises the kernel about its cache.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::debug!(file = %path.display(), errno = rc, "posix_fadvise(DONTNEED) refused");
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the struct we pass; `c` is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
}

/// Writes `bytes` as `path` (0600) so that, whatever happens, `path` holds either what it held
/// before or all of `bytes`: a temporary file beside it, synced, renamed over it, and the
/// folder synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = parent_of(path).join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(parent_of(path))
}

/// Creates `path` (0600) with `bytes`, failing if it exists; the data and then the name are
/// made durable before this returns.
pub fn create_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    sync_dir(parent_of(path))
}

/// The regular files directly in `dir` (none when it cannot be read: it may not exist yet).
pub fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())).map(|e| e.path()).collect()
}

/// Removes files and makes their absence durable (one sync per folder). Missing ones are fine.
pub fn remove_files(dir: &Path, paths: &[std::path::PathBuf]) -> io::Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn folders_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        create_dir_all(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            let mode = std::fs::metadata(tmp.path().join(d)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{d}");
        }
        let f = deep.join("f");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!deep.join(".f.tmp").exists());
        assert_eq!(create_new(&f, b"x").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        remove_files(&deep, &[f.clone(), deep.join("missing")]).unwrap();
        assert!(!f.exists());
    }
}
