//! What crosses hosts: batches of tasks and of results as their bytes, length-prefixed,
//! and messages of any size cut into chunks MPI can count.
//!
//! A message is its byte count (8 bytes, little-endian) under its kind's tag, then the
//! bytes in chunks of at most [`CHUNK`] under the kind's data tag. MPI counts elements in an `int`, and
//! rsmpi panics past 2^31 of them; chunks keep every call under it. Headers and data
//! have different tags, so a receive from any source matches only headers; the data
//! then comes from that source alone, in order (MPI does not reorder messages between
//! one pair of ranks with one tag).

use mpi::point_to_point::{Destination, Source};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Tag;

/// Most bytes in one MPI message.
pub(crate) const CHUNK: usize = 1 << 30;

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

/// Sends `bytes` to `rank` as a message of `kind`, returning once MPI is done with them
/// (a leader's sends: the master never blocks sending, see [`Outbox`], so a leader's
/// blocking send always finds the master receiving).
pub(crate) fn send(world: &SimpleCommunicator, rank: i32, kind: Kind, bytes: &[u8]) {
    let to = world.process_at_rank(rank);
    to.send_with_tag(&(bytes.len() as u64).to_le_bytes()[..], kind.tag());
    for chunk in bytes.chunks(CHUNK) {
        to.send_with_tag(chunk, kind.data_tag());
    }
}

/// The master's messages being sent, without blocking.
///
/// Two ranks that both block in `MPI_Send` to each other deadlock once their messages
/// are too large for MPI to buffer (MPICH's rendezvous, above some KiB): the master
/// sending a task batch to a leader that is sending it results. So the master only
/// starts its sends (`MPI_Isend`) and goes on receiving; MPI needs the bytes until a
/// send completes, so each message's buffers are owned here until then.
#[derive(Default)]
pub(crate) struct Outbox {
    sending: Vec<Sending>,
}

/// One message in flight: its header and body, and the requests still using them.
struct Sending {
    /// Both leaked from their boxes while MPI reads them, reclaimed once `requests` is
    /// empty (never, if the job ends first: a leak, never a use after free).
    header: *mut [u8; 8],
    body: *mut [u8],
    requests: Vec<Request<'static, [u8], StaticScope>>,
}

impl Outbox {
    /// Starts sending `bytes` to `rank` as a message of `kind`.
    pub(crate) fn send(&mut self, world: &SimpleCommunicator, rank: i32, kind: Kind, bytes: Vec<u8>) {
        let to = world.process_at_rank(rank);
        let header: &'static [u8; 8] = Box::leak(Box::new((bytes.len() as u64).to_le_bytes()));
        let body: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let mut requests = vec![to.immediate_send_with_tag(StaticScope, &header[..], kind.tag())];
        for chunk in body.chunks(CHUNK) {
            requests.push(to.immediate_send_with_tag(StaticScope, chunk, kind.data_tag()));
        }
        let header = std::ptr::from_ref(header).cast_mut();
        let body = std::ptr::from_ref(body).cast_mut();
        self.sending.push(Sending { header, body, requests });
    }

    /// Frees the buffers of the messages MPI has sent; true if none is left in flight.
    pub(crate) fn progress(&mut self) -> bool {
        self.sending.retain_mut(|s| {
            s.requests = std::mem::take(&mut s.requests).into_iter().filter_map(|r| r.test().err()).collect();
            if !s.requests.is_empty() {
                return true;
            }
            // SAFETY: both came from `Box::leak` in `send` and are freed only here, once;
            // every request that read them has completed (`test` consumed it), so
            // nothing refers to them any more.
            unsafe {
                drop(Box::from_raw(s.header));
                drop(Box::from_raw(s.body));
            }
            false
        });
        self.sending.is_empty()
    }

    /// Waits until every message has been sent.
    pub(crate) fn flush(&mut self) {
        while !self.progress() {
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

/// Receives the rest of a message of `kind` from `rank`, whose `len` header was taken:
/// each chunk straight into its place in the message (the sender cuts it the same way).
fn receive_body(world: &SimpleCommunicator, rank: i32, kind: Kind, len: u64) -> Vec<u8> {
    let from = world.process_at_rank(rank);
    let mut bytes = vec![0u8; len as usize];
    for chunk in bytes.chunks_mut(CHUNK) {
        from.receive_into_with_tag(chunk, kind.data_tag());
    }
    bytes
}

/// A message received: from whom, what, and its bytes.
pub(crate) struct Received {
    pub rank: i32,
    pub kind: Kind,
    pub bytes: Vec<u8>,
}

/// The next message from anyone, if one is waiting (`None` at once otherwise).
pub(crate) fn try_receive(world: &SimpleCommunicator) -> Option<Received> {
    let status = world.any_process().immediate_probe()?;
    let rank = status.source_rank();
    // Never a data tag: from each rank a header comes before its data, and the data is
    // taken right after the header (below), so a rank's first pending message is a header.
    let kind = Kind::from_tag(status.tag())?;
    let len = receive_len(world, rank, kind);
    Some(Received { rank, kind, bytes: receive_body(world, rank, kind, len) })
}

/// The next message of `kind` from `rank`, waiting for it.
pub(crate) fn receive_from(world: &SimpleCommunicator, rank: i32, kind: Kind) -> Vec<u8> {
    let len = receive_len(world, rank, kind);
    receive_body(world, rank, kind, len)
}

/// A message's header: its length.
fn receive_len(world: &SimpleCommunicator, rank: i32, kind: Kind) -> u64 {
    let mut len = [0u8; 8];
    world.process_at_rank(rank).receive_into_with_tag(&mut len[..], kind.tag());
    u64::from_le_bytes(len)
}

/// Appends task `index` with `bytes` to a task batch.
pub(crate) fn put_task(batch: &mut Vec<u8>, index: u64, bytes: &[u8]) {
    batch.extend_from_slice(&index.to_le_bytes());
    batch.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    batch.extend_from_slice(bytes);
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
            if let Some(m) = try_receive(&world) {
                break m;
            }
        };
        assert_eq!((got.rank, got.kind, got.bytes.len()), (0, Kind::Tasks, bytes.len()));
        assert!(got.bytes == bytes);
        let stop = receive_from(&world, 0, Kind::Stop);
        assert!(stop.is_empty());
        outbox.flush();
        assert!(outbox.sending.is_empty());
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
