//! The publishing side: a thread that refreshes the counters region and hands it to
//! viewers of the same user.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::layout::{self, Header, Record, MAX_PIDS, MAX_STAGES, REGION_LEN};
use crate::pipeline::Shared;
use crate::worker::spawn::WorkerProcess;

/// How often the region is refreshed.
const PERIOD: Duration = Duration::from_millis(250);

/// Observable pipelines this process has built: the `n` of their socket names.
static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A pipeline's publisher thread; dropping it stops the thread, which closes the
/// socket (its name goes with it) and the region.
pub(crate) struct Publisher {
    /// The socket's abstract name.
    pub name: String,
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Creates the region and the socket, and starts the thread.
    pub(crate) fn start(
        shared: Arc<Shared>,
        workers: Arc<Mutex<Vec<WorkerProcess>>>,
    ) -> std::io::Result<Publisher> {
        let memfd =
            rustix::fs::memfd_create("ringpipe-view", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&memfd, REGION_LEN as u64)?;
        // SAFETY: a fresh shared mapping of the memfd just sized to REGION_LEN.
        let map = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                REGION_LEN,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &memfd,
                0,
            )?
        };
        // From now on nobody can write it but through this mapping, resize it, or map
        // it writable: what a viewer receives it can only read.
        let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE | SealFlags::SEAL;
        rustix::fs::fcntl_add_seals(&memfd, seals)?;
        let region = Region(std::ptr::NonNull::new(map.cast()).expect("mmap never returns null"));
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}{}/{n}", super::PREFIX, std::process::id());
        rustix::net::bind(&socket, &rustix::net::SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
        rustix::net::listen(&socket, 16)?;
        let (wake_read, wake_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let thread = std::thread::Builder::new().name("ringpipe-view".into()).spawn(move || {
            let program = program_name();
            let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
            loop {
                region.write(&shared, &workers, &program, &host);
                let mut fds = [PollFd::new(&socket, PollFlags::IN), PollFd::new(&wake_read, PollFlags::IN)];
                let timeout = rustix::event::Timespec { tv_sec: 0, tv_nsec: PERIOD.as_nanos() as i64 };
                if rustix::event::poll(&mut fds, Some(&timeout)).is_err() {
                    continue;
                }
                if !fds[1].revents().is_empty() {
                    break;
                }
                if !fds[0].revents().is_empty() {
                    while let Ok(peer) = rustix::net::accept_with(&socket, SocketFlags::CLOEXEC) {
                        hand_over(&peer, &memfd);
                    }
                }
            }
            // SAFETY: the mapping made above, unmapped once, after its last use.
            let _ = unsafe { rustix::mm::munmap(region.0.as_ptr().cast(), REGION_LEN) };
        })?;
        Ok(Publisher { name, wake: Some(wake_write), thread: Some(thread) })
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.wake = None; // the thread's poll sees the hang-up
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends the region to `peer` if it runs as this process's user; otherwise a refusal.
fn hand_over(peer: &OwnedFd, memfd: &OwnedFd) {
    let same_user =
        rustix::net::sockopt::socket_peercred(peer).is_ok_and(|cred| cred.uid == rustix::process::geteuid());
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [memfd.as_fd()];
    let byte: &[u8] = if same_user {
        control.push(SendAncillaryMessage::ScmRights(&fds));
        b"V"
    } else {
        b"R"
    };
    let _ = rustix::net::sendmsg(peer, &[std::io::IoSlice::new(byte)], &mut control, SendFlags::NOSIGNAL);
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(|a| std::path::Path::new(&a).file_name().unwrap_or(a.as_os_str()).to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The publisher's writable mapping of the region.
struct Region(std::ptr::NonNull<u8>);

// SAFETY: the mapping is used by the publisher thread alone once moved there.
unsafe impl Send for Region {}

impl Region {
    /// Writes a fresh reading between two bumps of the sequence number.
    fn write(&self, shared: &Shared, workers: &Mutex<Vec<WorkerProcess>>, program: &str, host: &str) {
        let stats = crate::pipeline::stats_of(shared);
        let pids: Vec<(usize, u32)> =
            workers.lock().iter().filter(|w| w.lifeline.is_some()).map(|w| (w.stage, w.child.id())).collect();
        let mut restarts = vec![0u64; shared.stages.len()];
        for exit in shared.dead.lock().iter() {
            if let Some(r) = restarts.get_mut(exit.stage) {
                *r += 1;
            }
        }
        let free = shared.book.lock().free_slots.len();
        let mut header = Header {
            magic: layout::MAGIC,
            seq: 0,
            version: layout::VERSION,
            stages: stats.stages.len().min(MAX_STAGES) as u32,
            pid: std::process::id(),
            _pad: 0,
            elapsed_ns: stats.elapsed.as_nanos() as u64,
            submit_waited_ns: stats.submit_waited.as_nanos() as u64,
            in_flight: shared.tickets.saturating_sub(free) as u64,
            max_in_flight: shared.tickets as u64,
            restarts: shared.restarts.load(std::sync::atomic::Ordering::Relaxed) as u64,
            program: layout::name_bytes(program),
            host: layout::name_bytes(host),
        };
        let capacity = shared.seg.layout().ring_capacity();
        let records: Vec<Record> = stats
            .stages
            .iter()
            .take(MAX_STAGES)
            .enumerate()
            .map(|(i, s)| {
                let info = &shared.stages[i];
                let mut r: Record = bytemuck::Zeroable::zeroed();
                r.name = layout::name_bytes(&s.name);
                r.replicas = s.replicas as u32;
                r.on_thread = u32::from(s.on_thread);
                r.sandboxed = u32::from(info.sandbox.is_some());
                r.items = s.items;
                r.bytes_in = s.bytes_in;
                r.bytes_out = s.bytes_out;
                r.busy_ns = s.busy.as_nanos() as u64;
                r.starved_ns = s.starved.as_nanos() as u64;
                r.blocked_ns = s.blocked.as_nanos() as u64;
                let rings: Vec<usize> = info
                    .records
                    .clone()
                    .filter_map(|rec| shared.seg.stage(rec).ok())
                    .map(|rec| rec.input_ring as usize)
                    .collect();
                r.queue_capacity = capacity * rings.len() as u64;
                r.queued = rings
                    .iter()
                    .map(|&ring| shared.seg.ring_header(ring).occupancy().min(capacity))
                    .sum::<u64>();
                r.restarts = restarts[i];
                for (k, &(_, pid)) in pids.iter().filter(|(st, _)| *st == i).take(MAX_PIDS).enumerate() {
                    r.pids[k] = pid;
                    r.pids_len = k as u32 + 1;
                }
                r
            })
            .collect();
        let base = self.0.as_ptr();
        // SAFETY: `seq` is an 8-aligned word inside the mapping (offset 8 of a
        // page-aligned region), only ever accessed atomically by this thread and by
        // viewers' loads.
        let seq = unsafe { &*base.add(8).cast::<std::sync::atomic::AtomicU64>() };
        let next = seq.load(std::sync::atomic::Ordering::Relaxed).wrapping_add(1) | 1;
        seq.store(next, std::sync::atomic::Ordering::Relaxed);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        header.seq = next;
        let head = bytemuck::bytes_of(&header);
        // SAFETY: header and records fit the REGION_LEN mapping (MAX_STAGES records at
        // most); this thread is its only writer; viewers check `seq` around their copy.
        unsafe {
            std::ptr::copy_nonoverlapping(head.as_ptr(), base, head.len());
            let body = bytemuck::cast_slice::<Record, u8>(&records);
            std::ptr::copy_nonoverlapping(body.as_ptr(), base.add(head.len()), body.len());
        }
        seq.store(next.wrapping_add(1), std::sync::atomic::Ordering::Release);
    }
}
