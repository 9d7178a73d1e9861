//! Watching a running pipeline from another process.
//!
//! A pipeline built with [`Builder::observable`](crate::Builder::observable) keeps a
//! small region of counters, refreshed four times a second from the statistics its
//! runners already store (nothing on the item path changes), in a sealed memfd that
//! can never again be mapped writable. It hands that memfd out over an abstract Unix
//! socket, `@ringpipe/<pid>/<n>`, to processes of the same user only (the peer's
//! credentials are checked); a socket in the abstract namespace has no file, so a
//! pipeline killed with `kill -9` leaves nothing behind. [`list`] finds the pipelines
//! running on this machine, [`View::attach`] maps one read-only, and
//! [`View::snapshot`] reads it: every field is checked, so a region a buggy process
//! scribbled on gives a [`ViewError`], never a panic.
//!
//! ```no_run
//! for target in ringpipe_engine::view::list()? {
//!     let view = ringpipe_engine::view::View::attach(&target)?;
//!     let snap = view.snapshot()?;
//!     println!("{} ({}): {} stages", snap.program, snap.pid, snap.stages.len());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod layout;
mod publish;

use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix};

pub use layout::{parse, Snapshot, StageView};
pub(crate) use publish::Publisher;

/// The abstract socket names' prefix.
const PREFIX: &str = "ringpipe/";

/// An observable pipeline running on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The process it runs in.
    pub pid: u32,
    /// Its socket's abstract name (`ringpipe/<pid>/<n>`).
    pub socket: String,
}

/// Why a pipeline could not be watched.
#[derive(Debug)]
#[non_exhaustive]
pub enum ViewError {
    /// Its socket could not be reached (the pipeline ended, or never was).
    Connect(std::io::Error),
    /// It refused: the viewer is another user.
    Refused,
    /// Mapping its counters failed.
    Map(std::io::Error),
    /// Its counters are of another layout version.
    Version(u32),
    /// A field of its counters is impossible: the named one.
    Corrupt(&'static str),
    /// The counters kept changing while being read.
    Torn,
}

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot reach the pipeline: {e}"),
            Self::Refused => write!(f, "the pipeline refused: it runs as another user"),
            Self::Map(e) => write!(f, "cannot map the pipeline's counters: {e}"),
            Self::Version(v) => {
                write!(f, "the pipeline's counters are of layout version {v}, not {}", layout::VERSION)
            }
            Self::Corrupt(what) => write!(f, "the pipeline's counters are corrupt: {what}"),
            Self::Torn => write!(f, "the pipeline's counters kept changing while being read"),
        }
    }
}

impl std::error::Error for ViewError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Map(e) => Some(e),
            _ => None,
        }
    }
}

/// The observable pipelines running on this machine (in this network namespace),
/// from `/proc/net/unix`.
pub fn list() -> std::io::Result<Vec<Target>> {
    let table = std::fs::read_to_string("/proc/net/unix")?;
    let mut out: Vec<Target> = table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter_map(|path| path.strip_prefix('@'))
        .filter(|name| name.starts_with(PREFIX))
        .filter_map(|name| {
            let pid = name[PREFIX.len()..].split('/').next()?.parse().ok()?;
            Some(Target { pid, socket: name.to_owned() })
        })
        .collect();
    out.sort_by(|a, b| (a.pid, &a.socket).cmp(&(b.pid, &b.socket)));
    out.dedup();
    Ok(out)
}

/// A pipeline's counters, mapped read-only.
pub struct View {
    map: std::ptr::NonNull<u8>,
    _fd: OwnedFd,
}

// SAFETY: the mapping is read-only and only ever copied out of; the raw pointer is
// what makes the type !Send by default.
unsafe impl Send for View {}

impl View {
    /// Connects to `target` and maps its counters read-only.
    pub fn attach(target: &Target) -> Result<View, ViewError> {
        let connect = || -> std::io::Result<OwnedFd> {
            use rustix::net::{AddressFamily, SocketFlags, SocketType};
            let fd = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )?;
            rustix::net::connect(&fd, &SocketAddrUnix::new_abstract_name(target.socket.as_bytes())?)?;
            Ok(fd)
        };
        let sock = connect().map_err(ViewError::Connect)?;
        let mut byte = [0u8; 1];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &sock,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| ViewError::Connect(e.into()))?;
        let mut fd = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                fd = fds.into_iter().next().or(fd);
            }
        }
        let (Some(fd), 1, b'V') = (fd, got.bytes, byte[0]) else { return Err(ViewError::Refused) };
        // Mapping past the end of a file faults on access: the region must be whole and
        // sealed against shrinking before it is mapped.
        let len = rustix::fs::fstat(&fd).map_err(|e| ViewError::Map(e.into()))?.st_size;
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| ViewError::Map(e.into()))?;
        if len < layout::REGION_LEN as i64 || !seals.contains(rustix::fs::SealFlags::SHRINK) {
            return Err(ViewError::Corrupt("region size"));
        }
        // SAFETY: a fresh shared read-only mapping of a file checked above to hold
        // REGION_LEN bytes and sealed against shrinking; nothing else aliases it here.
        let map = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                layout::REGION_LEN,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                fd.as_fd(),
                0,
            )
        }
        .map_err(|e| ViewError::Map(e.into()))?;
        let map = std::ptr::NonNull::new(map.cast::<u8>())
            .ok_or(ViewError::Map(std::io::ErrorKind::Other.into()))?;
        Ok(View { map, _fd: fd })
    }

    /// Reads the counters: a copy taken while the writer's sequence number stood
    /// still, then checked field by field.
    pub fn snapshot(&self) -> Result<Snapshot, ViewError> {
        let seq = || {
            // SAFETY: the header's `seq` word is in bounds and 8-aligned (the mapping
            // is page-aligned, `seq` at offset 8); read as an atomic, as it is written.
            let word = unsafe { &*self.map.as_ptr().add(8).cast::<std::sync::atomic::AtomicU64>() };
            word.load(std::sync::atomic::Ordering::Acquire)
        };
        let mut copy = vec![0u8; layout::REGION_LEN];
        for _ in 0..100 {
            let before = seq();
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            // SAFETY: REGION_LEN bytes are mapped; a plain copy of bytes another
            // process may be writing is checked below (the sequence, then `parse`).
            unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr(), copy.as_mut_ptr(), copy.len()) };
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            if seq() == before {
                return parse(&copy);
            }
        }
        Err(ViewError::Torn)
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `attach`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.map.as_ptr().cast(), layout::REGION_LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::layout::*;
    use super::*;

    fn region(stages: u32) -> Vec<u8> {
        let mut h: Header = bytemuck::Zeroable::zeroed();
        h.magic = MAGIC;
        h.version = VERSION;
        h.stages = stages;
        h.max_in_flight = 8;
        h.program = name_bytes("prog");
        h.host = name_bytes("h1");
        let mut out = bytemuck::bytes_of(&h).to_vec();
        for _ in 0..stages {
            let mut r: Record = bytemuck::Zeroable::zeroed();
            r.name = name_bytes("zstd");
            r.pids_len = 1;
            r.pids[0] = 42;
            out.extend_from_slice(bytemuck::bytes_of(&r));
        }
        out.resize(REGION_LEN, 0);
        out
    }

    #[test]
    fn a_good_region_reads_back() {
        let s = parse(&region(2)).unwrap();
        assert_eq!((s.program.as_str(), s.host.as_str(), s.stages.len()), ("prog", "h1", 2));
        assert_eq!((s.stages[1].name.as_str(), &s.stages[1].pids[..]), ("zstd", &[42][..]));
    }

    #[test]
    fn every_scribbled_byte_is_an_error_or_a_plain_value_never_a_panic() {
        let good = region(3);
        for at in 0..good.len().min(2048) {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[at] = v;
                let _ = parse(&bad);
            }
        }
        let mut bad = good.clone();
        bad[..8].copy_from_slice(b"NOTVIEW!");
        assert!(matches!(parse(&bad), Err(ViewError::Corrupt("magic"))));
        let mut bad = good.clone();
        bad[20..24].copy_from_slice(&999u32.to_le_bytes()); // stages
        assert!(matches!(parse(&bad), Err(ViewError::Corrupt("stage count"))));
        let mut bad = good.clone();
        bad[8] = 1; // odd sequence: mid-write
        assert!(matches!(parse(&bad), Err(ViewError::Torn)));
        let header = std::mem::size_of::<Header>();
        let mut bad = good;
        bad[header + 3] = 0xff; // not UTF-8
        assert!(matches!(parse(&bad), Err(ViewError::Corrupt("stage name"))));
        assert!(matches!(parse(&[0; 16]), Err(ViewError::Corrupt("length"))));
    }
}
