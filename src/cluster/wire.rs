//! What crosses hosts: batches of tasks and of results as their bytes, length-prefixed,
//! and messages of any size cut into chunks MPI can count.
//!
//! A message is its byte count (8 bytes, little-endian) under its kind's tag, then the
//! bytes in chunks of at most [`CHUNK`] under the kind's data tag. MPI counts elements
//! in an `int`, and rsmpi panics past 2^31 of them; chunks keep every call under it,
//! and let a receive tell a message that is slow from one that stopped coming.
//! Headers and data have different tags, so a receive from any source matches only
//! headers; the data then comes from that source alone, in order (MPI does not reorder
//! messages between one pair of ranks with one tag).
//!
//! A task batch sent to another host is a table: each task's index and length, and its
//! bytes if it has fewer than [`OUT_OF_LINE`]. The bytes of each larger task follow the
//! table under the same data tag, sent from where the caller keeps them and received
//! straight into their place in the batch.
//!
//! Waiting on MPI is polling, at a [`Pace`]: a blocking MPI call spins for as long as
//! it waits (MPICH over UCX: an `epoll_wait` per turn), which takes the core from the
//! host's workers. No wait is unbounded: a send or receive that moves no chunk for a
//! given time ends with [`Stalled`], since one to or from a rank that died never
//! completes, and MPI offers no way to cancel it. What MPI still holds then (the
//! request, and the buffer it reads or writes) is leaked, never freed while MPI may
//! use it; the caller counts that rank lost.

use std::time::Duration;

use mpi::point_to_point::{Destination, Source};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Tag;

/// Most bytes in one MPI message: well under MPI's 2^31 count, and small enough that a
/// chunk crosses a 1 Gb/s link in under a second, far inside any host timeout.
pub(crate) const CHUNK: usize = 64 << 20;

/// A message that stopped moving: no chunk of it went to or came from `rank` for
/// `waited`. The rank died, or is too slow to count on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stalled {
    pub rank: i32,
    pub waited: Duration,
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Master to leader: a batch of tasks.
    Tasks = 1,
    /// Leader to master: a batch of results.
    Results = 2,
    /// Master to leader: no more tasks; finish and leave.
    Stop = 3,
    /// Leader to master, once: the host's name.
    Hello = 4,
    /// Both ways, once, at the end: the last synchronisation before `MPI_Finalize`.
    Done = 5,
    /// Leader to master, when it has sent nothing else for a while: still here.
    Alive = 6,
}

impl Kind {
    fn tag(self) -> Tag {
        self as Tag
    }
    fn data_tag(self) -> Tag {
        100 + self as Tag
    }
    fn from_tag(tag: Tag) -> Option<Self> {
        [Self::Tasks, Self::Results, Self::Stop, Self::Hello, Self::Done, Self::Alive]
            .into_iter()
            .find(|k| k.tag() == tag)
    }
}

/// Sends `bytes` to `rank` as a message of `kind` and waits at a [`Pace`] until MPI is
/// done with it; [`Stalled`] if no chunk of it went for `within`: a send to a rank
/// that died never completes (MPICH over UCX spins in it for good). The message is
/// then left with MPI, its buffers leaked, never freed while MPI may read them.
///
/// A leader's sends go this way: a master that is alive takes a small message at once
/// (MPI buffers it), and a large one as soon as it polls.
pub(crate) fn send_within(
    world: &SimpleCommunicator,
    rank: i32,
    kind: Kind,
    bytes: Vec<u8>,
    within: Duration,
) -> Result<(), Stalled> {
    let mut outbox = Outbox::default();
    outbox.send(world, rank, kind, bytes);
    let mut watch = Watch::new(within);
    let mut pace = Pace::default();
    while !outbox.progress() {
        // The outbox's drop leaks what MPI still holds.
        watch.check(outbox.pending(), rank)?;
        pace.wait(PACE, None);
    }
    Ok(())
}

/// The next message of `kind` from `rank`, if it begins within `within` (polled at a
/// [`Pace`]) and none of its chunks stalls for as long.
pub(crate) fn receive_from_within(
    world: &SimpleCommunicator,
    rank: i32,
    kind: Kind,
    within: Duration,
) -> Result<Vec<u8>, Stalled> {
    let mut watch = Watch::new(within);
    let mut pace = Pace::default();
    while world.process_at_rank(rank).immediate_probe_with_tag(kind.tag()).is_none() {
        watch.check(1, rank)?;
        pace.wait(PACE, None);
    }
    let len = receive_len(world, rank, kind);
    receive_body(world, rank, kind, len, Vec::new(), within)
}

/// A deadline that moves on whenever a wait makes progress: `within` after the last
/// time fewer requests were left.
struct Watch {
    within: Duration,
    since: std::time::Instant,
    left: usize,
}

impl Watch {
    fn new(within: Duration) -> Self {
        Self { within, since: std::time::Instant::now(), left: usize::MAX }
    }

    /// With `left` requests still pending on `rank`: [`Stalled`] if none completed for
    /// `within`.
    fn check(&mut self, left: usize, rank: i32) -> Result<(), Stalled> {
        if left < self.left {
            self.left = left;
            self.since = std::time::Instant::now();
        } else if self.since.elapsed() > self.within {
            return Err(Stalled { rank, waited: self.within });
        }
        Ok(())
    }
}

/// How often a rank polls MPI while it waits: 64 polls at once (a message often
/// follows another, and a small one crosses in a few round trips), 64 more yielding
/// the core between them to whatever else runs there (the host's workers), then with
/// sleeps that grow by a microsecond per poll up to a cap.
///
/// Over TCP a large message moves only while both ranks call MPI, and each poll moves
/// what the sockets hold (hundreds of KiB): a poll every few tens of µs keeps up with
/// the wire. Measured on two emulated hosts (`benches/cluster.sh`): spinning through
/// transfers, as blocking calls do, left zstd workers 57-72% of their cores; pacing
/// them, 80-86%.
#[derive(Default)]
pub(crate) struct Pace(u32);

/// The longest wait between two polls while a message of the rank's own moves.
pub(crate) const PACE: Duration = Duration::from_micros(50);

impl Pace {
    /// Starts over: the rank found something.
    pub(crate) fn reset(&mut self) {
        self.0 = 0;
    }

    /// After a poll that found nothing, waits before the next (at most `cap`; a zero
    /// `cap` yields the core and polls again as soon as it comes back).
    pub(crate) fn wait(&mut self, cap: Duration, host: Option<&super::host::Host>) {
        self.0 = self.0.saturating_add(1);
        match self.0 {
            0..=64 => std::hint::spin_loop(),
            65..=128 => std::thread::yield_now(),
            _ if cap.is_zero() => std::thread::yield_now(),
            n => {
                let wait = Duration::from_micros(u64::from(n - 128)).min(cap);
                match host {
                    // Its results end the wait.
                    Some(host) => drop(host.wait(wait)),
                    None => std::thread::sleep(wait),
                }
            }
        }
    }
}

/// The master's messages being sent, without blocking.
///
/// Two ranks that both block in `MPI_Send` to each other deadlock once their messages
/// are too large for MPI to buffer (MPICH's rendezvous, above some KiB): the master
/// sending a task batch to a leader that is sending it results. So the master only
/// starts its sends (`MPI_Isend`) and goes on receiving; MPI needs the bytes until a
/// send completes, so each message's buffers are owned here until then.
///
/// A body MPI has sent is kept as a spare (up to [`SPARES`]) for the next batch: a
/// fresh buffer of some MiB costs a page fault and a zeroed page per 4 KiB, more than
/// filling it.
#[derive(Default)]
pub(crate) struct Outbox {
    sending: Vec<Sending>,
    spares: Vec<Vec<u8>>,
}

/// Spare buffers kept for reuse.
pub(crate) const SPARES: usize = 8;

/// One message in flight: its header and body, and the requests still using them.
struct Sending {
    /// To whom.
    rank: i32,
    /// Leaked from its box while MPI reads it, reclaimed once `requests` is empty
    /// (never, if the job ends first: a leak, never a use after free).
    header: *mut [u8; 8],
    /// The body's vector, taken apart likewise: pointer, length, capacity.
    body: (*mut u8, usize, usize),
    requests: Vec<Request<'static, [u8], StaticScope>>,
}

impl Outbox {
    /// Starts sending `bytes` to `rank` as a message of `kind`.
    pub(crate) fn send(&mut self, world: &SimpleCommunicator, rank: i32, kind: Kind, bytes: Vec<u8>) {
        let to = world.process_at_rank(rank);
        let header: &'static [u8; 8] = Box::leak(Box::new((bytes.len() as u64).to_le_bytes()));
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        let parts = (bytes.as_mut_ptr(), bytes.len(), bytes.capacity());
        // SAFETY: the vector's buffer is never freed or written while MPI reads it: it
        // was taken apart above and is put back together only in `progress`, once
        // every request on it has completed.
        let body: &'static [u8] = unsafe { std::slice::from_raw_parts(parts.0, parts.1) };
        let mut requests = vec![to.immediate_send_with_tag(StaticScope, &header[..], kind.tag())];
        for chunk in body.chunks(CHUNK) {
            requests.push(to.immediate_send_with_tag(StaticScope, chunk, kind.data_tag()));
        }
        let header = std::ptr::from_ref(header).cast_mut();
        self.sending.push(Sending { rank, header, body: parts, requests });
    }

    /// An empty buffer for the next message: a spare if there is one.
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        self.spares.pop().unwrap_or_default()
    }

    /// Requests still in flight.
    fn pending(&self) -> usize {
        self.sending.iter().map(|s| s.requests.len()).sum()
    }

    /// Frees the buffers of the messages MPI has sent; true if none is left in flight.
    pub(crate) fn progress(&mut self) -> bool {
        let spares = &mut self.spares;
        self.sending.retain_mut(|s| {
            s.requests = std::mem::take(&mut s.requests).into_iter().filter_map(|r| r.test().err()).collect();
            if !s.requests.is_empty() {
                return true;
            }
            // SAFETY: both came apart in `send` (`Box::leak`, the vector's raw parts)
            // and are put back together only here, once; every request that read them
            // has completed (`test` consumed it), so nothing refers to them any more.
            let mut body = unsafe {
                drop(Box::from_raw(s.header));
                Vec::from_raw_parts(s.body.0, s.body.1, s.body.2)
            };
            if spares.len() < SPARES && body.capacity() > 0 {
                body.clear();
                spares.push(body);
            }
            false
        });
        self.sending.is_empty()
    }

    /// Waits until every message has been sent, but those to ranks `lost` names: a
    /// send to a dead rank may never complete, and stays here (its buffers are leaked
    /// with the outbox, never freed while MPI may read them).
    pub(crate) fn flush(&mut self, lost: impl Fn(i32) -> bool) {
        while !self.progress() && !self.sending.iter().all(|s| lost(s.rank)) {
            std::thread::yield_now();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A message still in flight (the job is ending with an error) keeps its buffers
        // and requests: leaked, since MPI may still read them.
        for s in self.sending.drain(..) {
            std::mem::forget(s.requests);
        }
    }
}

/// Receives the rest of a message of `kind` from `rank`, whose `len` header was taken,
/// into `bytes` (a spare buffer, or empty): each chunk straight into its place in the
/// message (the sender cuts it the same way).
fn receive_body(
    world: &SimpleCommunicator,
    rank: i32,
    kind: Kind,
    len: u64,
    mut bytes: Vec<u8>,
    within: Duration,
) -> Result<Vec<u8>, Stalled> {
    // Zeroes only what the buffer did not hold before; MPI overwrites every byte.
    bytes.resize(len as usize, 0);
    let places: Vec<_> = (0..bytes.len()).step_by(CHUNK).map(|at| at..bytes.len().min(at + CHUNK)).collect();
    receive_into(world, rank, kind, bytes, &places, within)
}

/// Receives the data of a message of `kind` from `rank` into `places` of `buffer`
/// (disjoint ranges, one chunk each, in the order they were sent), polling at a
/// [`Pace`]. If no chunk comes for `within`, the receives are left posted and the
/// buffer leaked: MPI may write into it for as long as the job lives.
fn receive_into(
    world: &SimpleCommunicator,
    rank: i32,
    kind: Kind,
    buffer: Vec<u8>,
    places: &[std::ops::Range<usize>],
    within: Duration,
) -> Result<Vec<u8>, Stalled> {
    if places.is_empty() {
        return Ok(buffer);
    }
    let from = world.process_at_rank(rank);
    let mut buffer = std::mem::ManuallyDrop::new(buffer);
    let base = buffer.as_mut_ptr();
    let mut requests: Vec<Request<'static, [u8], StaticScope>> = places
        .iter()
        .map(|place| {
            assert!(place.start <= place.end && place.end <= buffer.len(), "a place outside the buffer");
            // The buffer is neither read, moved nor freed until every request writing
            // into it has completed: it is put back together below only then, and
            // leaked otherwise.
            // SAFETY: each place lies inside the buffer (checked above); no two overlap
            // (the caller's word).
            let chunk: &'static mut [u8] =
                unsafe { std::slice::from_raw_parts_mut(base.add(place.start), place.len()) };
            from.immediate_receive_into_with_tag(StaticScope, chunk, kind.data_tag())
        })
        .collect();
    let mut watch = Watch::new(within);
    let mut pace = Pace::default();
    loop {
        requests = requests.into_iter().filter_map(|r| r.test().err()).collect();
        if requests.is_empty() {
            return Ok(std::mem::ManuallyDrop::into_inner(buffer));
        }
        if let Err(stalled) = watch.check(requests.len(), rank) {
            // Still posted: MPI may write into the buffer, which is never freed.
            std::mem::forget(requests);
            return Err(stalled);
        }
        pace.wait(PACE, None);
    }
}

/// A message received: from whom, what, and its bytes.
pub(crate) struct Received {
    pub rank: i32,
    pub kind: Kind,
    pub bytes: Vec<u8>,
}

/// The next message from anyone, if one is waiting (`None` at once otherwise); its
/// bytes go into the buffer `spare` gives. [`Stalled`] if its sender stopped sending
/// it for `within`.
pub(crate) fn try_receive(
    world: &SimpleCommunicator,
    spare: impl FnOnce() -> Vec<u8>,
    within: Duration,
) -> Option<Result<Received, Stalled>> {
    let status = world.any_process().immediate_probe()?;
    let rank = status.source_rank();
    // Never a data tag: from each rank a header comes before its data, and the data is
    // taken right after the header (below), so a rank's first pending message is a header.
    let kind = Kind::from_tag(status.tag())?;
    let len = receive_len(world, rank, kind);
    Some(receive_body(world, rank, kind, len, spare(), within).map(|bytes| Received { rank, kind, bytes }))
}

/// A message's header: its length. Only for a header a probe has seen: it is there.
fn receive_len(world: &SimpleCommunicator, rank: i32, kind: Kind) -> u64 {
    let mut len = [0u8; 8];
    world.process_at_rank(rank).receive_into_with_tag(&mut len[..], kind.tag());
    u64::from_le_bytes(len)
}

/// Tasks of this many bytes or more cross hosts on their own: sent straight from the
/// caller's memory, with no copy into a batch, and received straight into their place
/// in the batch on the other side. Smaller ones are copied into the batch's table,
/// where one message carries many.
pub(crate) const OUT_OF_LINE: usize = 64 << 10;

/// Appends task `index` with `bytes` to a task batch.
pub(crate) fn put_task(batch: &mut Vec<u8>, index: u64, bytes: &[u8]) {
    batch.extend_from_slice(&index.to_le_bytes());
    batch.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    batch.extend_from_slice(bytes);
}

/// Appends task `index` to the table of a task batch crossing hosts: as [`put_task`],
/// but without its bytes if it has [`OUT_OF_LINE`] of them or more (they follow the
/// table as messages of their own).
pub(crate) fn put_table_entry(table: &mut Vec<u8>, index: u64, bytes: &[u8]) {
    if bytes.len() < OUT_OF_LINE {
        put_task(table, index, bytes);
    } else {
        table.extend_from_slice(&index.to_le_bytes());
        table.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    }
}

/// Sends one out-of-line task's bytes (after its batch's table) to `rank`, from where
/// they lie. Returns the requests, which read `bytes` until they complete.
///
/// # Safety
/// `bytes` must stay valid and unchanged until every returned request has completed.
pub(crate) unsafe fn send_out_of_line(
    world: &SimpleCommunicator,
    rank: i32,
    bytes: &[u8],
) -> Vec<Request<'static, [u8], StaticScope>> {
    // SAFETY: the caller keeps the bytes valid until the requests complete.
    let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
    let to = world.process_at_rank(rank);
    bytes
        .chunks(CHUNK)
        .map(|chunk| to.immediate_send_with_tag(StaticScope, chunk, Kind::Tasks.data_tag()))
        .collect()
}

/// Why a task batch could not be received.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BatchError {
    /// Its table does not read back; nothing was received.
    Malformed(String),
    /// Its out-of-line tasks stopped coming.
    Stalled(Stalled),
}

/// Turns a task batch's table, received from `rank`, into the batch itself. A table
/// that holds every task's bytes is the batch already (the layout is the same), and
/// is handed back as it is. Otherwise the batch is built in `spare` (a spare buffer,
/// or empty): the table's small tasks copied over, the out-of-line ones received
/// straight into their place, each within `within` of the last. Returns the batch,
/// and the buffer it did not use.
pub(crate) fn receive_tasks(
    world: &SimpleCommunicator,
    rank: i32,
    table: Vec<u8>,
    spare: Vec<u8>,
    within: Duration,
) -> Result<(Vec<u8>, Vec<u8>), BatchError> {
    // The table in full first: its size, and an error before any byte is received.
    let (entries, size) = table_entries(&table).map_err(BatchError::Malformed)?;
    if entries.iter().all(|(_, _, inline)| inline.is_some()) {
        return Ok((table, spare)); // no copy of small tasks' bytes
    }
    let mut into = spare;
    // Zeroes only what the buffer did not hold before; every byte is then written.
    into.resize(size, 0);
    // Entries in place; the out-of-line tasks' places set aside, to be received all at
    // once (their sends are all started: one wait for them all, not one each).
    let mut places = Vec::new();
    let mut at = 0;
    for (index, len, inline) in entries {
        into[at..at + 8].copy_from_slice(&index.to_le_bytes());
        into[at + 8..at + 16].copy_from_slice(&(len as u64).to_le_bytes());
        let place = at + 16..at + 16 + len;
        match inline {
            Some(bytes) => into[place].copy_from_slice(&table[bytes]),
            None => places.extend(place.clone().step_by(CHUNK).map(|c| c..place.end.min(c + CHUNK))),
        }
        at += 16 + len;
    }
    let batch = receive_into(world, rank, Kind::Tasks, into, &places, within).map_err(BatchError::Stalled)?;
    Ok((batch, table))
}

/// A task table's entries (index, length, and where its bytes lie in the table if
/// they are there), and the size of the batch they make.
type TableEntry = (u64, usize, Option<std::ops::Range<usize>>);

fn table_entries(table: &[u8]) -> Result<(Vec<TableEntry>, usize), String> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    let mut size = 0usize;
    while at < table.len() {
        let word = |at: usize| -> Result<u64, String> {
            let b = table.get(at..at + 8).ok_or_else(|| format!("task table truncated at byte {at}"))?;
            Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let (index, len) = (word(at)?, word(at + 8)?);
        at += 16;
        let len = usize::try_from(len).map_err(|_| format!("task {index} of {len} bytes"))?;
        let inline = if len < OUT_OF_LINE {
            let end = at.checked_add(len).filter(|&e| e <= table.len());
            let end = end.ok_or_else(|| format!("task {index} of {len} bytes overruns the table"))?;
            let bytes = at..end;
            at = end;
            Some(bytes)
        } else {
            None
        };
        size = size.checked_add(16 + len).ok_or_else(|| format!("task {index} of {len} bytes"))?;
        entries.push((index, len, inline));
    }
    Ok((entries, size))
}

/// Appends a result to a result batch: `ok`, or failed with `bytes` as its message.
pub(crate) fn put_result(batch: &mut Vec<u8>, index: u64, ok: bool, bytes: &[u8]) {
    batch.extend_from_slice(&index.to_le_bytes());
    batch.push(u8::from(ok));
    batch.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    batch.extend_from_slice(bytes);
}

/// One entry of a batch: its index, whether it succeeded (results), and where its
/// bytes lie in the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub index: u64,
    pub ok: bool,
    pub bytes: std::ops::Range<usize>,
}

/// Reads a batch back; `results` says whether entries carry the ok byte. A batch
/// [`put_task`]/[`put_result`] did not make is an error, never a panic.
pub(crate) fn entries(batch: &[u8], results: bool) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let word = |at: usize| -> Result<u64, String> {
        let b = batch.get(at..at + 8).ok_or_else(|| format!("batch truncated at byte {at}"))?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    while at < batch.len() {
        let index = word(at)?;
        at += 8;
        let ok = if results {
            let b = *batch.get(at).ok_or_else(|| format!("batch truncated at byte {at}"))?;
            at += 1;
            b == 1
        } else {
            true
        };
        let len = word(at)?;
        at += 8;
        let end = usize::try_from(len).ok().and_then(|l| at.checked_add(l)).filter(|&e| e <= batch.len());
        let end = end.ok_or_else(|| format!("entry {index} of {len} bytes overruns the batch"))?;
        out.push(Entry { index, ok, bytes: at..end });
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message far past MPI's eager size, to itself: the outbox starts it and hands
    /// back before any receive is posted; the receive gets every byte, and the outbox
    /// then frees its buffers.
    #[test]
    fn outbox_never_blocks_and_frees_what_mpi_has_sent() {
        let universe = mpi::initialize().expect("the only test here that starts MPI");
        let world = universe.world();
        let bytes: Vec<u8> = (0..(4 << 20) as u32).map(|i| (i % 251) as u8).collect();
        let mut outbox = Outbox::default();
        outbox.send(&world, 0, Kind::Tasks, bytes.clone());
        outbox.send(&world, 0, Kind::Stop, Vec::new());
        let got = loop {
            if let Some(m) = try_receive(&world, Vec::new, WITHIN) {
                break m.unwrap();
            }
        };
        assert_eq!((got.rank, got.kind, got.bytes.len()), (0, Kind::Tasks, bytes.len()));
        assert!(got.bytes == bytes);
        let stop = receive_from_within(&world, 0, Kind::Stop, WITHIN).unwrap();
        assert!(stop.is_empty());
        outbox.flush(|_| false);
        assert!(outbox.sending.is_empty());
        assert_eq!(outbox.spares.len(), 1, "the batch's buffer is kept for reuse");
        let spare = outbox.buffer();
        assert!(spare.is_empty() && spare.capacity() >= bytes.len());

        // A batch of small and out-of-line tasks, to itself: the receiving side rebuilds
        // the batch the master's own host is given, into a spare with stale bytes.
        let small = [1u8; 10];
        let big = vec![2u8; OUT_OF_LINE];
        let bigger: Vec<u8> = (0..3 * OUT_OF_LINE as u32).map(|i| (i % 253) as u8).collect();
        let tasks: [(u64, &[u8]); 5] = [(5, &small), (6, &big), (7, &[]), (9, &bigger), (10, &small)];
        let (mut table, mut expected) = (Vec::new(), Vec::new());
        for (index, b) in tasks {
            put_table_entry(&mut table, index, b);
            put_task(&mut expected, index, b);
        }
        assert_eq!(table.len(), 5 * 16 + 2 * small.len(), "only the small tasks' bytes are in the table");
        outbox.send(&world, 0, Kind::Tasks, table);
        let mut reading = Vec::new();
        for (_, b) in tasks.iter().filter(|(_, b)| b.len() >= OUT_OF_LINE) {
            // SAFETY: `big` and `bigger` live until every request is waited for, below.
            reading.extend(unsafe { send_out_of_line(&world, 0, b) });
        }
        let got = loop {
            if let Some(m) = try_receive(&world, Vec::new, WITHIN) {
                break m.unwrap();
            }
        };
        assert_eq!(got.kind, Kind::Tasks);
        let (batch, unused) = receive_tasks(&world, 0, got.bytes.clone(), vec![9; 3], WITHIN).unwrap();
        assert!(batch == expected, "the batch as the master's own host gets it");
        assert!(unused == got.bytes, "the table's buffer is handed back");
        let (small, unused) =
            receive_tasks(&world, 0, expected[..16 + 10].to_vec(), vec![9; 3], WITHIN).unwrap();
        assert_eq!(
            (&small[..], &unused[..]),
            (&expected[..16 + 10], &[9u8; 3][..]),
            "a table of small tasks is the batch"
        );
        for r in reading {
            r.wait_without_status();
        }
        outbox.flush(|_| false);

        // MPI starts once per process: the map's checks run here, on a one-rank job.
        let cluster = super::super::Cluster::from_universe(universe);
        super::super::map::tests::maps_on_one_rank(&cluster);

        // Last, since each leaves a receive posted for good: messages that stop coming.
        stalls_end_every_wait(cluster.world());
    }

    /// No wait in the test above is meant to come near this.
    const WITHIN: Duration = Duration::from_secs(60);

    /// A sender that dies mid-message leaves a header with no body, or a task table
    /// with no out-of-line bytes after it: each receive ends with `Stalled` after the
    /// wait it was given, rather than waiting for good.
    fn stalls_end_every_wait(world: &SimpleCommunicator) {
        let short = Duration::from_millis(200);
        // A header promising 1000 bytes, and no body (`Alive`: its data tag is used by
        // nothing else here, so the receive left posted takes nothing later).
        // Sent without blocking: a blocking send to oneself waits for the receive.
        let header: &'static [u8; 8] = Box::leak(Box::new(1000u64.to_le_bytes()));
        let sent =
            world.process_at_rank(0).immediate_send_with_tag(StaticScope, &header[..], Kind::Alive.tag());
        let started = std::time::Instant::now();
        let got = loop {
            if let Some(m) = try_receive(world, Vec::new, short) {
                break m;
            }
        };
        assert_eq!(got.err(), Some(Stalled { rank: 0, waited: short }));
        assert!(started.elapsed() >= short, "not before the wait it was given");
        sent.wait_without_status();

        // A message that never begins.
        assert_eq!(
            receive_from_within(world, 0, Kind::Hello, short),
            Err(Stalled { rank: 0, waited: short })
        );

        // A task table naming an out-of-line task whose bytes never come.
        let mut table = Vec::new();
        put_table_entry(&mut table, 3, &[1; 10]);
        put_table_entry(&mut table, 4, &vec![2; OUT_OF_LINE]);
        assert_eq!(
            receive_tasks(world, 0, table, Vec::new(), short).err(),
            Some(BatchError::Stalled(Stalled { rank: 0, waited: short }))
        );
    }

    /// A wait is cut short by no progress for its whole span, never by its length.
    #[test]
    fn a_watch_moves_on_with_progress() {
        let within = Duration::from_millis(100);
        let mut watch = Watch::new(within);
        assert_eq!(watch.check(3, 1), Ok(()));
        std::thread::sleep(within + within / 2);
        assert_eq!(watch.check(2, 1), Ok(()), "a request completed: the wait goes on");
        std::thread::sleep(within + within / 2);
        assert_eq!(watch.check(2, 1), Err(Stalled { rank: 1, waited: within }));
    }

    #[test]
    fn task_tables_read_back_and_bad_ones_are_errors() {
        let mut t = Vec::new();
        put_table_entry(&mut t, 3, &[7; 100]);
        put_table_entry(&mut t, 4, &vec![8; OUT_OF_LINE]);
        let (entries, size) = table_entries(&t).unwrap();
        assert_eq!(entries, [(3, 100, Some(16..116)), (4, OUT_OF_LINE, None)]);
        assert_eq!(size, 16 + 100 + 16 + OUT_OF_LINE);
        for cut in (1..t.len()).filter(|&c| c != 116) {
            assert!(table_entries(&t[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = t.clone();
        huge[8..16].copy_from_slice(&(OUT_OF_LINE as u64 - 1).to_le_bytes());
        assert!(table_entries(&huge).is_err(), "a small task's bytes overrun the table");
    }

    #[test]
    fn batches_read_back_and_bad_ones_are_errors() {
        let mut b = Vec::new();
        put_result(&mut b, 7, true, b"abc");
        put_result(&mut b, 9, false, b"");
        let e = entries(&b, true).unwrap();
        assert_eq!(e[0], Entry { index: 7, ok: true, bytes: 17..20 });
        assert_eq!((e[1].index, e[1].ok, e[1].bytes.len()), (9, false, 0));
        for cut in 1..b.len() {
            if cut != 20 {
                assert!(entries(&b[..cut], true).is_err(), "cut at {cut}");
            }
        }
        let mut t = Vec::new();
        put_task(&mut t, u64::MAX, &[1; 5]);
        assert_eq!(entries(&t, false).unwrap()[0].bytes, 16..21);
        let mut huge = t.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(entries(&huge, false).is_err());
    }
}
