//! The counters region a pipeline publishes: a header, then one record per stage,
//! little-endian `repr(C)` words. The writer brackets every update with a sequence
//! number (odd while it writes); a reader copies the region, checks the sequence did
//! not move, and checks every field before it believes it.

use bytemuck::{Pod, Zeroable};

use super::ViewError;

/// "RPVIEW01": a ringpipe counters region of this layout.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"RPVIEW01");
/// The layout's version.
pub(crate) const VERSION: u32 = 1;
/// Stages a region has room for.
pub(crate) const MAX_STAGES: usize = 64;
/// Worker pids a stage record lists.
pub(crate) const MAX_PIDS: usize = 16;
/// Bytes of a stage's name (longer names are cut).
pub(crate) const NAME_LEN: usize = 64;
/// Bytes of the region.
pub(crate) const REGION_LEN: usize =
    std::mem::size_of::<Header>() + MAX_STAGES * std::mem::size_of::<Record>();

/// The region's first bytes.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct Header {
    pub magic: u64,
    /// Odd while the writer updates the region; bumped twice per update.
    pub seq: u64,
    pub version: u32,
    pub stages: u32,
    pub pid: u32,
    pub _pad: u32,
    pub elapsed_ns: u64,
    pub submit_waited_ns: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub restarts: u64,
    pub program: [u8; NAME_LEN],
    /// The machine's host name (with the pool across hosts, which host this is).
    pub host: [u8; NAME_LEN],
}

/// One stage.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct Record {
    pub name: [u8; NAME_LEN],
    pub replicas: u32,
    /// 1: on threads of the program; 0: in worker processes.
    pub on_thread: u32,
    /// 1: its workers run in a sandbox.
    pub sandboxed: u32,
    pub pids_len: u32,
    pub items: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub busy_ns: u64,
    pub starved_ns: u64,
    pub blocked_ns: u64,
    /// Items waiting in the stage's input rings, and the rings' room.
    pub queued: u64,
    pub queue_capacity: u64,
    pub restarts: u64,
    pub pids: [u32; MAX_PIDS],
}

/// A name cut to [`NAME_LEN`] bytes, NUL-padded.
pub(crate) fn name_bytes(name: &str) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    let mut n = name.len().min(NAME_LEN);
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

fn name_of(bytes: &[u8; NAME_LEN], what: &'static str) -> Result<String, ViewError> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    if bytes[end..].iter().any(|&b| b != 0) {
        return Err(ViewError::Corrupt(what));
    }
    String::from_utf8(bytes[..end].to_vec()).map_err(|_| ViewError::Corrupt(what))
}

/// What one stage has done, as a viewer reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageView {
    /// The stage's registered name (at most 64 bytes of it).
    pub name: String,
    /// Its runners.
    pub replicas: u32,
    /// It runs on threads of the program, not in worker processes.
    pub on_thread: bool,
    /// Its worker processes run sandboxed.
    pub sandboxed: bool,
    /// Items through it.
    pub items: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Nanoseconds its runners held an item, summed over them.
    pub busy_ns: u64,
    /// Nanoseconds they waited for input.
    pub starved_ns: u64,
    /// Nanoseconds they waited on the next stage.
    pub blocked_ns: u64,
    /// Items waiting in its input rings.
    pub queued: u64,
    /// Room in its input rings.
    pub queue_capacity: u64,
    /// Worker processes of this stage replaced after they died.
    pub restarts: u64,
    /// Its live worker processes (at most 16 listed).
    pub pids: Vec<u32>,
}

impl StageView {
    /// The share of its runners' time spent busy, in `0.0..=1.0`.
    pub fn busy_fraction(&self) -> f64 {
        use std::time::Duration;
        let ns = Duration::from_nanos;
        crate::pipeline::busy_share(ns(self.busy_ns), ns(self.starved_ns), ns(self.blocked_ns))
    }
}

/// One reading of a pipeline's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The program's process id.
    pub pid: u32,
    /// The program's name.
    pub program: String,
    /// The host it runs on.
    pub host: String,
    /// Nanoseconds since the pipeline was built.
    pub elapsed_ns: u64,
    /// Nanoseconds callers waited on it.
    pub submit_waited_ns: u64,
    /// Items in flight now.
    pub in_flight: u64,
    /// The bound on items in flight.
    pub max_in_flight: u64,
    /// Worker processes replaced after they died, all stages.
    pub restarts: u64,
    /// Each stage, in pipeline order.
    pub stages: Vec<StageView>,
}

impl Snapshot {
    /// The stage whose runners were busiest, if any counted time.
    pub fn bottleneck(&self) -> Option<usize> {
        crate::pipeline::busiest(self.stages.iter().map(StageView::busy_fraction))
    }
}

/// Reads a copy of a region, checking every field: a region a buggy or hostile
/// process wrote gives an error, never a panic.
pub fn parse(region: &[u8]) -> Result<Snapshot, ViewError> {
    let header_len = std::mem::size_of::<Header>();
    let h: Header =
        bytemuck::pod_read_unaligned(region.get(..header_len).ok_or(ViewError::Corrupt("length"))?);
    if h.magic != MAGIC {
        return Err(ViewError::Corrupt("magic"));
    }
    if h.version != VERSION {
        return Err(ViewError::Version(h.version));
    }
    if h.seq % 2 == 1 {
        return Err(ViewError::Torn);
    }
    let n = h.stages as usize;
    if n == 0 || n > MAX_STAGES {
        return Err(ViewError::Corrupt("stage count"));
    }
    if h.in_flight > h.max_in_flight {
        return Err(ViewError::Corrupt("items in flight"));
    }
    let record_len = std::mem::size_of::<Record>();
    let mut stages = Vec::with_capacity(n);
    for i in 0..n {
        let at = header_len + i * record_len;
        let bytes = region.get(at..at + record_len).ok_or(ViewError::Corrupt("length"))?;
        let r: Record = bytemuck::pod_read_unaligned(bytes);
        let pids = r.pids.get(..r.pids_len as usize).ok_or(ViewError::Corrupt("worker pids"))?;
        if r.on_thread > 1 || r.sandboxed > 1 || r.queued > r.queue_capacity {
            return Err(ViewError::Corrupt("stage record"));
        }
        stages.push(StageView {
            name: name_of(&r.name, "stage name")?,
            replicas: r.replicas,
            on_thread: r.on_thread == 1,
            sandboxed: r.sandboxed == 1,
            items: r.items,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            busy_ns: r.busy_ns,
            starved_ns: r.starved_ns,
            blocked_ns: r.blocked_ns,
            queued: r.queued,
            queue_capacity: r.queue_capacity,
            restarts: r.restarts,
            pids: pids.to_vec(),
        });
    }
    Ok(Snapshot {
        pid: h.pid,
        program: name_of(&h.program, "program name")?,
        host: name_of(&h.host, "host name")?,
        elapsed_ns: h.elapsed_ns,
        submit_waited_ns: h.submit_waited_ns,
        in_flight: h.in_flight,
        max_in_flight: h.max_in_flight,
        restarts: h.restarts,
        stages,
    })
}
