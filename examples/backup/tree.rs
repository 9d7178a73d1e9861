//! The tree as an archive records it: its entries, the walk that finds them, and the
//! index that stores them (sealed, in the archive; see `main.rs`).
//!
//! Kept for every entry: its path (raw bytes: Unix names need not be UTF-8), its
//! permission bits and its modification time. Regular files keep their chunks;
//! symbolic links their target, unchanged and never followed; a second name of a
//! file already in the tree is kept as a hard link to it. Owners and extended
//! attributes are not kept.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: its size and its chunks' numbers, in order.
    File { size: u64, chunks: Vec<u32> },
    /// A directory.
    Dir,
    /// A symbolic link, with its target as stored.
    Symlink(Vec<u8>),
    /// Another name for the regular file that is entry number `.0` (an earlier one).
    HardLink(u32),
}

/// One entry of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the tree's root, `/`-separated.
    pub path: Vec<u8>,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    pub kind: Kind,
}

impl Entry {
    pub fn rel(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.path))
    }
}

/// Something the backup left out, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The walk's findings: entries in walk order (every directory before what it
/// holds), and what was left out.
pub struct Walked {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// Walks the tree under `root` without following symbolic links. Special files
/// (devices, FIFOs, sockets) and directories that cannot be listed are reported in
/// `skipped`; only a root that cannot be walked at all is an error.
pub fn walk(root: &Path) -> Result<Walked, String> {
    let meta = std::fs::metadata(root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", root.display()));
    }
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    // (device, inode) of files with several names: the entry holding the first.
    let mut inodes: HashMap<(u64, u64), u32> = HashMap::new();
    for item in walkdir::WalkDir::new(root).min_depth(1).follow_links(false).sort_by_file_name() {
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_path_buf();
                let reason = match e.io_error() {
                    Some(io) => format!("cannot be listed: {io}"),
                    None => e.to_string(),
                };
                skipped.push(Skipped { path, reason });
                continue;
            }
        };
        let path = item.path();
        let meta = match item.metadata() {
            Ok(m) => m,
            Err(e) => {
                skipped.push(Skipped { path: path.into(), reason: format!("cannot be read: {e}") });
                continue;
            }
        };
        let t = meta.file_type();
        let kind = if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            let seen = (meta.nlink() > 1).then(|| inodes.get(&(meta.dev(), meta.ino())).copied()).flatten();
            match seen {
                Some(first) => Kind::HardLink(first),
                None => {
                    if meta.nlink() > 1 {
                        inodes.insert((meta.dev(), meta.ino()), entries.len() as u32);
                    }
                    Kind::File { size: meta.len(), chunks: Vec::new() }
                }
            }
        } else if t.is_symlink() {
            match std::fs::read_link(path) {
                Ok(target) => Kind::Symlink(target.into_os_string().into_encoded_bytes()),
                Err(e) => {
                    skipped.push(Skipped { path: path.into(), reason: format!("link cannot be read: {e}") });
                    continue;
                }
            }
        } else {
            let what = if t.is_fifo() {
                "a FIFO"
            } else if t.is_socket() {
                "a socket"
            } else if t.is_block_device() {
                "a block device"
            } else if t.is_char_device() {
                "a character device"
            } else {
                "of an unknown type"
            };
            skipped.push(Skipped {
                path: path.into(),
                reason: format!("{what}: special files are not backed up"),
            });
            continue;
        };
        let rel = path.strip_prefix(root).expect("the walk stays under its root");
        entries.push(Entry {
            path: rel.as_os_str().as_bytes().to_vec(),
            mode: meta.mode() & 0o7777,
            mtime: (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32),
            kind,
        });
    }
    Ok(Walked { entries, skipped })
}

/// Drops the entries not `kept` (files that could not be read), and hard links to
/// them, renumbering the links that remain. Returns the dropped hard links' paths.
pub fn retain(entries: &mut Vec<Entry>, kept: impl Fn(usize) -> bool) -> Vec<Vec<u8>> {
    let mut renumber = vec![u32::MAX; entries.len()];
    let mut out = Vec::with_capacity(entries.len());
    let mut orphans = Vec::new();
    for (i, mut e) in std::mem::take(entries).into_iter().enumerate() {
        if !kept(i) {
            continue;
        }
        if let Kind::HardLink(to) = &mut e.kind {
            match renumber[*to as usize] {
                u32::MAX => {
                    orphans.push(e.path);
                    continue;
                }
                n => *to = n,
            }
        }
        renumber[i] = out.len() as u32;
        out.push(e);
    }
    *entries = out;
    orphans
}

/// Where each sealed chunk is in the archive (after its length word) and how long
/// it is, by chunk number.
pub type ChunkTable = Vec<(u64, u32)>;

/// The first bytes of an index.
pub const INDEX_MAGIC: &[u8; 8] = b"RPIDX002";

/// Encodes `entries` and the chunk table (each chunk's offset in the archive and
/// sealed length) as an index.
pub fn encode(entries: &[Entry], table: &[(u64, u32)]) -> Vec<u8> {
    let mut out = INDEX_MAGIC.to_vec();
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        let tag = match e.kind {
            Kind::File { .. } => 0u8,
            Kind::Dir => 1,
            Kind::Symlink(_) => 2,
            Kind::HardLink(_) => 3,
        };
        out.push(tag);
        out.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.path);
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&e.mtime.0.to_le_bytes());
        out.extend_from_slice(&e.mtime.1.to_le_bytes());
        match &e.kind {
            Kind::File { size, chunks } => {
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
                chunks.iter().for_each(|c| out.extend_from_slice(&c.to_le_bytes()));
            }
            Kind::Dir => {}
            Kind::Symlink(target) => {
                out.extend_from_slice(&(target.len() as u32).to_le_bytes());
                out.extend_from_slice(target);
            }
            Kind::HardLink(to) => out.extend_from_slice(&to.to_le_bytes()),
        }
    }
    out.extend_from_slice(&(table.len() as u64).to_le_bytes());
    for (at, len) in table {
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    out
}

/// Why an index was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum IndexError {
    /// It ends early, or has bytes of another format.
    Malformed(&'static str),
    /// An entry's path could land outside the restore target, or is not a plain
    /// relative path.
    UnsafePath(String),
    /// An entry's parent is not a directory of the archive (a symbolic link, a file,
    /// or missing), so restoring it could follow a link out of the target.
    NotUnderADirectory(String),
    /// Two entries have the same path.
    Duplicate(String),
    /// A hard link that names no earlier regular file, or a chunk that is not in
    /// the table.
    BadReference(String),
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "the archive's index is malformed: {what}"),
            Self::UnsafePath(p) => write!(f, "the archive names an unsafe path {p:?}; nothing was restored"),
            Self::NotUnderADirectory(p) => {
                write!(f, "the archive puts {p:?} under something that is not one of its directories; nothing was restored")
            }
            Self::Duplicate(p) => write!(f, "the archive names {p:?} twice; nothing was restored"),
            Self::BadReference(what) => write!(f, "the archive's index is inconsistent: {what}"),
        }
    }
}

impl std::error::Error for IndexError {}

/// A bounds-checked reader.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        if n > self.0.len() {
            return Err(IndexError::Malformed("it ends early"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, IndexError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, IndexError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, IndexError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A count of items of at least `min_size` bytes each, checked against what is left.
    fn count(&mut self, min_size: usize) -> Result<usize, IndexError> {
        let n = self.u64()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_size) <= self.0.len() => Ok(n),
            _ => Err(IndexError::Malformed("a count larger than the index")),
        }
    }
}

/// Whether `path` is a plain relative path: components that are neither empty, `.`
/// nor `..`, and no NUL.
fn plain(path: &[u8]) -> bool {
    !path.is_empty()
        && !path.contains(&0)
        && path.split(|&b| b == b'/').all(|c| !c.is_empty() && c != b"." && c != b"..")
}

fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Decodes and checks an index: every path plain and relative, under a directory
/// entry that comes before it, named once; every hard link to an earlier regular
/// file; every chunk in the table. Nothing is written before this passes.
pub fn decode(bytes: &[u8]) -> Result<(Vec<Entry>, ChunkTable), IndexError> {
    let mut c = Cursor(bytes);
    if c.take(INDEX_MAGIC.len())? != INDEX_MAGIC {
        return Err(IndexError::Malformed("not a ringpipe index of this version"));
    }
    let n = c.count(21)?;
    let mut entries: Vec<Entry> = Vec::with_capacity(n);
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut names: HashSet<Vec<u8>> = HashSet::new();
    for _ in 0..n {
        let tag = c.u8()?;
        let len = c.u32()? as usize;
        let path = c.take(len)?.to_vec();
        let mode = c.u32()?;
        let mtime = (c.u64()? as i64, c.u32()?);
        if !plain(&path) {
            return Err(IndexError::UnsafePath(shown(&path)));
        }
        if mode > 0o7777 || mtime.1 >= 1_000_000_000 {
            return Err(IndexError::Malformed("a mode or time out of range"));
        }
        if let Some(cut) = path.iter().rposition(|&b| b == b'/') {
            if !dirs.contains(&path[..cut]) {
                return Err(IndexError::NotUnderADirectory(shown(&path)));
            }
        }
        if !names.insert(path.clone()) {
            return Err(IndexError::Duplicate(shown(&path)));
        }
        let kind = match tag {
            0 => {
                let size = c.u64()?;
                let k = c.u32()? as usize;
                if k.saturating_mul(4) > c.0.len() {
                    return Err(IndexError::Malformed("a chunk list longer than the index"));
                }
                Kind::File { size, chunks: (0..k).map(|_| c.u32()).collect::<Result<_, _>>()? }
            }
            1 => {
                dirs.insert(path.clone());
                Kind::Dir
            }
            2 => {
                let len = c.u32()? as usize;
                Kind::Symlink(c.take(len)?.to_vec())
            }
            3 => {
                let to = c.u32()?;
                if !matches!(entries.get(to as usize), Some(Entry { kind: Kind::File { .. }, .. })) {
                    return Err(IndexError::BadReference(format!(
                        "{:?} is a hard link to entry {to}, which is not an earlier regular file",
                        shown(&path)
                    )));
                }
                Kind::HardLink(to)
            }
            _ => return Err(IndexError::Malformed("an entry of an unknown kind")),
        };
        entries.push(Entry { path, mode, mtime, kind });
    }
    let k = c.count(12)?;
    let table = (0..k).map(|_| Ok((c.u64()?, c.u32()?))).collect::<Result<Vec<_>, IndexError>>()?;
    if !c.0.is_empty() {
        return Err(IndexError::Malformed("bytes after its end"));
    }
    for e in &entries {
        if let Kind::File { chunks, .. } = &e.kind {
            if let Some(bad) = chunks.iter().find(|&&k| k as usize >= table.len()) {
                return Err(IndexError::BadReference(format!(
                    "{:?} names chunk {bad}, but the archive has {}",
                    shown(&e.path),
                    table.len()
                )));
            }
        }
    }
    Ok((entries, table))
}
