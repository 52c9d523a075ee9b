//! A file system that loses power: a FUSE file system, in memory, that remembers what was made
//! durable and forgets the rest at a cut — the way a machine that loses power does, by POSIX's
//! rules and no kinder:
//! - a file's contents and size are durable once an `fsync`/`fdatasync` of the file returns;
//! - a name (created, renamed, deleted) is durable once an `fsync` of its directory returns;
//! - `sync_file_range`, `flush`, closing a file and writing a new name's file are not enough.
//!
//! A cut ([`PowerCut::cut`]) unmounts (the process using it must be dead first), rolls every
//! file and directory back to its durable state and mounts again. A [`Cut::Strict`] cut keeps
//! nothing unsynced; a [`Cut::Torn`] cut keeps a random prefix of each file's and directory's
//! unsynced changes, the last kept write cut short and possibly zero-filled beyond its part (a
//! size that reached the disk before the data did), as real disks do after a crash.
//!
//! It can also fail an `fsync` with EIO ([`PowerCut::fail_fsync`]) the way Linux does: the
//! unsynced data of that file is lost (it is gone at the next cut), and a later `fsync` of the
//! same file succeeds as if nothing had happened — the trap PostgreSQL fell into in 2018.
//!
//! Every change is kept as an undo record until it is made durable, so an `fsync` costs O(1)
//! whatever the file's size. Mount needs root and `/dev/fuse`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// How much of what was not made durable survives a cut.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Nothing: POSIX's minimum.
    Strict,
    /// A random prefix of each file's and directory's unsynced changes (seeded).
    Torn(u64),
}

/// One change to a file not yet made durable, and how to take it back.
#[derive(Debug, Clone)]
struct Undo {
    offset: u64,
    /// The bytes the change overwrote (within the old length).
    old: Vec<u8>,
    old_len: u64,
    /// Bytes written (0 for a change of length).
    len: u64,
}

/// One change to a directory not yet made durable: the names it changed, with what each named
/// before (`None`: nothing).
type DirUndo = Vec<(OsString, Option<u64>)>;

#[derive(Debug, Clone)]
struct Node {
    dir: bool,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    data: Vec<u8>,
    undo: Vec<Undo>,
    /// Ranges whose writes a failed fsync dropped: zeros after the next cut.
    lost: Vec<(u64, u64)>,
    entries: BTreeMap<OsString, u64>,
    dir_undo: Vec<DirUndo>,
    /// Where it was last linked (for paths in fault rules).
    parent: u64,
    name: OsString,
    open: u32,
}

impl Node {
    fn new(dir: bool, perm: u16, uid: u32, gid: u32, parent: u64, name: &OsStr) -> Node {
        Node {
            dir,
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
            data: Vec::new(),
            undo: Vec::new(),
            lost: Vec::new(),
            entries: BTreeMap::new(),
            dir_undo: Vec::new(),
            parent,
            name: name.to_os_string(),
            open: 0,
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let old_len = self.data.len() as u64;
        let end = offset as usize + bytes.len();
        let keep_to = end.min(self.data.len());
        let old = if (offset as usize) < keep_to { self.data[offset as usize..keep_to].to_vec() } else { Vec::new() };
        self.undo.push(Undo { offset, old, old_len, len: bytes.len() as u64 });
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset as usize..end].copy_from_slice(bytes);
        self.mtime = SystemTime::now();
    }

    fn set_len(&mut self, len: u64) {
        let old_len = self.data.len() as u64;
        let old = if len < old_len { self.data[len as usize..].to_vec() } else { Vec::new() };
        self.undo.push(Undo { offset: len.min(old_len), old, old_len, len: 0 });
        self.data.resize(len as usize, 0);
        self.mtime = SystemTime::now();
    }

    fn take_back(&mut self, u: &Undo) {
        let end = u.offset as usize + u.old.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[u.offset as usize..end].copy_from_slice(&u.old);
        self.data.resize(u.old_len as usize, 0);
    }

    /// Rolls the file back to what survives the cut.
    fn cut_file(&mut self, how: Cut, rng: &mut Rng) {
        let undo = std::mem::take(&mut self.undo);
        let keep = match how {
            Cut::Strict => 0,
            Cut::Torn(_) => rng.below(undo.len() as u64 + 1) as usize,
        };
        for u in undo[keep..].iter().skip(1).rev() {
            self.take_back(u);
        }
        if let Some(torn) = undo.get(keep) {
            let written = if torn.len > 0 {
                let start = torn.offset as usize;
                self.data.get(start..start + torn.len as usize).map(<[u8]>::to_vec)
            } else {
                None
            };
            self.take_back(torn);
            if let (Cut::Torn(_), Some(bytes)) = (how, written) {
                let part = rng.below(bytes.len() as u64) as usize;
                if rng.below(2) == 0 {
                    // The size reached the disk, the data did not.
                    let end = torn.offset as usize + bytes.len();
                    if self.data.len() < end {
                        self.data.resize(end, 0);
                    }
                }
                let start = torn.offset as usize;
                if self.data.len() < start + part {
                    self.data.resize(start + part, 0);
                }
                self.data[start..start + part].copy_from_slice(&bytes[..part]);
            }
        }
        for (from, len) in std::mem::take(&mut self.lost) {
            let (from, to) = (from as usize, (from + len) as usize);
            let to = to.min(self.data.len());
            if from < to {
                self.data[from..to].fill(0);
            }
        }
    }

    /// Rolls the directory's names back to what survives the cut.
    fn cut_dir(&mut self, how: Cut, rng: &mut Rng) {
        let undo = std::mem::take(&mut self.dir_undo);
        let keep = match how {
            Cut::Strict => 0,
            Cut::Torn(_) => rng.below(undo.len() as u64 + 1) as usize,
        };
        for change in undo[keep..].iter().rev() {
            for (name, before) in change.iter().rev() {
                match before {
                    Some(ino) => self.entries.insert(name.clone(), *ino),
                    None => self.entries.remove(name),
                };
            }
        }
    }
}

/// A small deterministic generator (splitmix64), so a failing cut can be replayed by its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// What the file system counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub writes: u64,
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
    pub failed_fsyncs: u64,
    pub cuts: u64,
    /// Changes that a cut took back (file writes and directory changes).
    pub dropped: u64,
}

/// The whole state: what is there now, and how to get back to what is durable.
pub struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// `fsync` of a path containing the text fails this many more times.
    failing: Vec<(String, u32)>,
    stats: Stats,
}

pub const ROOT: u64 = 1;

#[derive(Debug, PartialEq, Eq)]
pub enum FsError {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Io,
    Invalid,
}

impl FsError {
    fn errno(&self) -> Errno {
        match self {
            FsError::NotFound => Errno::ENOENT,
            FsError::Exists => Errno::EEXIST,
            FsError::NotDir => Errno::ENOTDIR,
            FsError::IsDir => Errno::EISDIR,
            FsError::NotEmpty => Errno::ENOTEMPTY,
            FsError::Io => Errno::EIO,
            FsError::Invalid => Errno::EINVAL,
        }
    }
}

impl Default for Model {
    fn default() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(true, 0o755, 0, 0, ROOT, OsStr::new("")));
        Model { nodes, next_ino: 2, failing: Vec::new(), stats: Stats::default() }
    }
}

impl Model {
    fn node(&self, ino: u64) -> Result<&Node, FsError> {
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, FsError> {
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Node, FsError> {
        let n = self.node_mut(ino)?;
        if !n.dir {
            return Err(FsError::NotDir);
        }
        Ok(n)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, FsError> {
        self.node(parent)?.entries.get(name).copied().ok_or(FsError::NotFound)
    }

    /// Creates a file or directory named `name` in `parent` (the name is not durable yet).
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        dir: bool,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, FsError> {
        let p = self.dir_mut(parent)?;
        if p.entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let p = self.dir_mut(parent)?;
        p.entries.insert(name.to_os_string(), ino);
        p.dir_undo.push(vec![(name.to_os_string(), None)]);
        self.nodes.insert(ino, Node::new(dir, perm, uid, gid, parent, name));
        Ok(ino)
    }

    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<(), FsError> {
        let n = self.node_mut(ino)?;
        if n.dir {
            return Err(FsError::IsDir);
        }
        n.write(offset, bytes);
        self.stats.writes += 1;
        Ok(())
    }

    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), FsError> {
        let n = self.node_mut(ino)?;
        if n.dir {
            return Err(FsError::IsDir);
        }
        n.set_len(len);
        Ok(())
    }

    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<&[u8], FsError> {
        let n = self.node(ino)?;
        let from = (offset as usize).min(n.data.len());
        let to = from.saturating_add(size).min(n.data.len());
        Ok(&n.data[from..to])
    }

    /// The path of `ino` from the root, as last linked.
    pub fn path_of(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let Some(n) = self.nodes.get(&at) else { break };
            parts.push(n.name.to_string_lossy().to_string());
            at = n.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Whether a fault rule names `ino`'s path (and uses one of its failures up).
    fn faulty(&mut self, ino: u64) -> bool {
        let path = self.path_of(ino);
        match self.failing.iter_mut().find(|(part, left)| *left > 0 && path.contains(part.as_str())) {
            Some((_, left)) => {
                *left -= 1;
                true
            }
            None => false,
        }
    }

    /// Makes the file's contents and size durable — or fails with EIO when a fault rule says
    /// so, losing the unsynced writes the way Linux does.
    pub fn fsync(&mut self, ino: u64) -> Result<(), FsError> {
        if self.faulty(ino) {
            let n = self.node_mut(ino)?;
            let lost: Vec<(u64, u64)> = n.undo.drain(..).filter(|u| u.len > 0).map(|u| (u.offset, u.len)).collect();
            n.lost.extend(lost);
            self.stats.failed_fsyncs += 1;
            return Err(FsError::Io);
        }
        self.node_mut(ino)?.undo.clear();
        self.stats.fsyncs += 1;
        Ok(())
    }

    /// Makes the directory's names durable (not the contents of the files they name) — or
    /// fails with EIO when a fault rule names it (its unsynced names then stay unsynced).
    pub fn fsync_dir(&mut self, ino: u64) -> Result<(), FsError> {
        if self.faulty(ino) {
            self.stats.failed_fsyncs += 1;
            return Err(FsError::Io);
        }
        self.dir_mut(ino)?.dir_undo.clear();
        self.stats.dir_fsyncs += 1;
        self.collect();
        Ok(())
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        can_replace(self.node(ino)?, want_dir)?;
        let p = self.dir_mut(parent)?;
        p.entries.remove(name);
        p.dir_undo.push(vec![(name.to_os_string(), Some(ino))]);
        Ok(())
    }

    pub fn rename(
        &mut self,
        from: u64,
        name: &OsStr,
        to: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), FsError> {
        let ino = self.lookup(from, name)?;
        let moving_dir = self.node(ino)?.dir;
        let replaced = self.node(to)?.entries.get(new_name).copied();
        if let Some(r) = replaced {
            if no_replace {
                return Err(FsError::Exists);
            }
            can_replace(self.node(r)?, moving_dir)?;
        }
        if replaced == Some(ino) {
            return Ok(());
        }
        if from == to {
            let p = self.dir_mut(from)?;
            p.entries.remove(name);
            p.entries.insert(new_name.to_os_string(), ino);
            p.dir_undo.push(vec![(name.to_os_string(), Some(ino)), (new_name.to_os_string(), replaced)]);
        } else {
            let p = self.dir_mut(from)?;
            p.entries.remove(name);
            p.dir_undo.push(vec![(name.to_os_string(), Some(ino))]);
            let q = self.dir_mut(to)?;
            q.entries.insert(new_name.to_os_string(), ino);
            q.dir_undo.push(vec![(new_name.to_os_string(), replaced)]);
        }
        let n = self.node_mut(ino)?;
        n.parent = to;
        n.name = new_name.to_os_string();
        Ok(())
    }

    /// Power is lost: everything goes back to what was durable (and, for a torn cut, a random
    /// part of the rest).
    pub fn cut(&mut self, how: Cut) {
        let mut rng = Rng::new(match how {
            Cut::Strict => 0,
            Cut::Torn(seed) => seed,
        });
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(n) = self.nodes.get_mut(&ino) else { continue };
            self.stats.dropped += (n.undo.len() + n.dir_undo.len()) as u64;
            if n.dir {
                n.cut_dir(how, &mut rng);
            } else {
                n.cut_file(how, &mut rng);
            }
            n.open = 0;
        }
        self.stats.cuts += 1;
        self.collect();
        // Paths of the survivors, for fault rules.
        let links: Vec<(u64, u64, OsString)> = self
            .nodes
            .iter()
            .flat_map(|(p, n)| n.entries.iter().map(move |(name, c)| (*c, *p, name.clone())))
            .collect();
        for (child, parent, name) in links {
            if let Some(n) = self.nodes.get_mut(&child) {
                n.parent = parent;
                n.name = name;
            }
        }
    }

    /// Forgets nodes nothing can reach any more: no name now, no name a cut could bring
    /// back, not open.
    fn collect(&mut self) {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut todo: Vec<u64> = vec![ROOT];
        todo.extend(self.nodes.iter().filter(|(_, n)| n.open > 0).map(|(i, _)| *i));
        while let Some(ino) = todo.pop() {
            if !seen.insert(ino) {
                continue;
            }
            let Some(n) = self.nodes.get(&ino) else { continue };
            todo.extend(n.entries.values().copied());
            todo.extend(n.dir_undo.iter().flatten().filter_map(|(_, before)| *before));
        }
        self.nodes.retain(|ino, _| seen.contains(ino));
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes of file data held (for the self-test's bound on memory).
    pub fn bytes(&self) -> usize {
        self.nodes.values().map(|n| n.data.len()).sum()
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, FsError> {
        let n = self.node(ino)?;
        let size = if n.dir { 4096 } else { n.data.len() as u64 };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind: if n.dir { FileType::Directory } else { FileType::RegularFile },
            perm: n.perm,
            nlink: if n.dir { 2 } else { 1 },
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

/// Whether `n` may go (unlinked, or replaced by a rename) for something that is a folder or not.
fn can_replace(n: &Node, dir: bool) -> Result<(), FsError> {
    match (n.dir, dir) {
        (true, false) => Err(FsError::IsDir),
        (false, true) => Err(FsError::NotDir),
        (true, true) if !n.entries.is_empty() => Err(FsError::NotEmpty),
        _ => Ok(()),
    }
}

/// The FUSE side: every request is one call on the shared model.
struct Fuse(Arc<Mutex<Model>>);

const TTL: Duration = Duration::from_secs(1);

impl Fuse {
    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, ino: Result<u64, FsError>, reply: ReplyEntry) {
        let m = self.model();
        match ino.and_then(|i| m.attr(i)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e.errno()),
        }
    }
}

fn attr(r: Result<FileAttr, FsError>, reply: ReplyAttr) {
    match r {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(e.errno()),
    }
}

fn empty(r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.errno()),
    }
}

impl Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = self.model().lookup(parent.0, name);
        self.entry(ino, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        attr(self.model().attr(ino.0), reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut m = self.model();
        let changed = (|| {
            if let Some(len) = size {
                m.set_len(ino.0, len)?;
            }
            let n = m.node_mut(ino.0)?;
            if let Some(mode) = mode {
                n.perm = (mode & 0o7777) as u16;
            }
            if let Some(u) = uid {
                n.uid = u;
            }
            if let Some(g) = gid {
                n.gid = g;
            }
            m.attr(ino.0)
        })();
        attr(changed, reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::EPERM);
            return;
        }
        let perm = (mode & !umask & 0o7777) as u16;
        let ino = self.model().create(parent.0, name, false, perm, req.uid(), req.gid());
        self.entry(ino, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let perm = (mode & !umask & 0o7777) as u16;
        let ino = self.model().create(parent.0, name, true, perm, req.uid(), req.gid());
        self.entry(ino, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(self.model().unlink(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(self.model().unlink(parent.0, name, true), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(self.model().rename(parent.0, name, newparent.0, newname, no_replace), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut m = self.model();
        let opened = (|| {
            if flags.0 & libc::O_TRUNC != 0 {
                m.set_len(ino.0, 0)?;
            }
            m.node_mut(ino.0)?.open += 1;
            Ok::<(), FsError>(())
        })();
        match opened {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::empty()),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut m = self.model();
        let perm = (mode & !umask & 0o7777) as u16;
        let made = match m.lookup(parent.0, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(FsError::Exists),
            Ok(ino) => (|| {
                if flags & libc::O_TRUNC != 0 {
                    m.set_len(ino, 0)?;
                }
                Ok(ino)
            })(),
            Err(_) => m.create(parent.0, name, false, perm, req.uid(), req.gid()),
        };
        let attr = made.and_then(|ino| {
            m.node_mut(ino)?.open += 1;
            m.attr(ino)
        });
        match attr {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(a.ino.0), FopenFlags::empty()),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let m = self.model();
        match m.read(ino.0, offset, size as usize) {
            Ok(b) => reply.data(b),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.model().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut m = self.model();
        if let Ok(n) = m.node_mut(ino.0) {
            n.open = n.open.saturating_sub(1);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut m = self.model();
        let dir = m.node(ino.0).map(|n| n.dir).unwrap_or(false);
        empty(if dir { m.fsync_dir(ino.0) } else { m.fsync(ino.0) }, reply);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let m = self.model();
        let Ok(n) = m.node(ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let mut all: Vec<(u64, FileType, OsString)> =
            vec![(ino.0, FileType::Directory, ".".into()), (n.parent, FileType::Directory, "..".into())];
        for (name, child) in &n.entries {
            let kind =
                if m.nodes.get(child).is_some_and(|c| c.dir) { FileType::Directory } else { FileType::RegularFile };
            all.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(self.model().fsync_dir(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let mut m = self.model();
        let grown = (|| {
            let len = m.node(ino.0)?.data.len() as u64;
            if offset + length > len {
                m.set_len(ino.0, offset + length)?;
            }
            Ok(())
        })();
        empty(grown, reply);
    }
}

/// A mounted power-cut file system.
pub struct PowerCut {
    model: Arc<Mutex<Model>>,
    at: PathBuf,
    session: Mutex<Option<fuser::BackgroundSession>>,
}

impl PowerCut {
    /// Mounts an empty file system at `at` (an existing, empty directory). Needs root.
    pub fn mount(at: &Path) -> std::io::Result<PowerCut> {
        let model = Arc::new(Mutex::new(Model::default()));
        let session = mount(&model, at)?;
        Ok(PowerCut { model, at: at.to_path_buf(), session: Mutex::new(Some(session)) })
    }

    pub fn path(&self) -> &Path {
        &self.at
    }

    /// The power goes: unmount, keep only what survives `how`, mount again. Whatever used the
    /// file system must be dead already (a cut with files open fails to unmount).
    pub fn cut(&self, how: Cut) {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = s.take() {
            unmount(old, &self.at);
        }
        self.model.lock().unwrap_or_else(|p| p.into_inner()).cut(how);
        *s = Some(mount(&self.model, &self.at).expect("mounting the power-cut file system again"));
    }

    /// The next `times` fsyncs of files whose path contains `path_part` fail with EIO.
    pub fn fail_fsync(&self, path_part: &str, times: u32) {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).failing.push((path_part.to_string(), times));
    }

    /// Fault rules no longer apply.
    pub fn heal(&self) {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).failing.clear();
    }

    pub fn stats(&self) -> Stats {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        if let Some(s) = self.session.lock().unwrap_or_else(|p| p.into_inner()).take() {
            unmount(s, &self.at);
        }
    }
}

fn mount(model: &Arc<Mutex<Model>>, at: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("powercut".into())];
    config.n_threads = Some(4);
    fuser::spawn_mount2(Fuse(model.clone()), at, &config)
}

/// Unmounts. Something still holding the file system at a cut would go on writing after the
/// "power" went: that fails the test (after a lazy unmount, so nothing is left mounted). The
/// session thread ends with ECONNABORTED once the kernel lets go: that is the normal end.
fn unmount(session: fuser::BackgroundSession, at: &Path) {
    let result = session.umount_and_join();
    if !is_mounted(at) {
        return;
    }
    // FUSE hands a closed file's release to the file system asynchronously: on a loaded
    // machine the kernel can hold the mount busy a moment after the last close (failed once in
    // ./run-tests). A writer still alive would hold it for good: a second is plenty between.
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let _ = std::process::Command::new("umount").arg(at).stderr(std::process::Stdio::null()).status();
        if !is_mounted(at) {
            return;
        }
    }
    let _ = std::process::Command::new("umount").arg("-l").arg(at).status();
    panic!("the power-cut file system at {} was still in use at the cut: {result:?}", at.display());
}

fn is_mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let at = at.to_string_lossy();
    mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(at.as_ref()))
}
