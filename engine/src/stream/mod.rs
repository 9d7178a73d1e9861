//! A single-producer single-consumer **byte** ring with an explicit end of stream:
//! what a producer/consumer stage pair streams through instead of an OS pipe.
//!
//! Like the descriptor rings it works over any memory (the shared segment, or the heap
//! in [`HeapStream`]) and knows nothing of processes. Unlike a pipe, the end of a
//! stream is a statement, not an absence: the consumer sees end-of-file only after the
//! producer called [`StreamWriter::finish`]. A writer dropped (or failed, or whose
//! process died and was marked so by the engine) without finishing makes the reader's
//! next read an error, so a truncated stream never looks complete. A reader that
//! closes makes the writer's next write an error, so neither side can wait forever on
//! a ring the other has left.
//!
//! Zero-copy use: [`StreamWriter::write_chunk`] lends up to `n` contiguous free bytes
//! of the ring to fill and [`WriteChunk::commit`] publishes `k` of them;
//! [`StreamReader::read_chunk`] lends the readable bytes and
//! [`StreamReader::consume`] releases them. `std::io::{Write, Read, BufRead}` are
//! built on the same calls.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::heap::HeapBox;
use crate::sync::{AtomicU32, AtomicU64, CachePadded, Ordering};
use crate::wait::{WaitWord, Wake};

/// The producer finished: after the last byte, the reader sees end-of-file.
const FINISHED: u32 = 1;
/// The producer failed (error, panic, death): the reader gets an error, not EOF.
const FAILED: u32 = 2;
/// The consumer stopped reading: the writer gets an error.
const CLOSED: u32 = 4;

/// How long one park lasts before the waiter re-checks the clock and its deadline.
const PARK: Duration = Duration::from_millis(100);

/// The shared control block of one byte ring. All-zero bytes are an open, empty stream.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct StreamHeader {
    /// Bytes consumed; written by the reader only. In `tail - capacity..=tail`.
    head: CachePadded<AtomicU64>,
    /// Bytes produced; written by the writer only. In `head..=head + capacity`.
    tail: CachePadded<AtomicU64>,
    /// `FINISHED`, `FAILED` (writer side) and `CLOSED` (reader side) bits.
    flags: CachePadded<AtomicU32>,
    /// Where the reader parks when the ring is empty.
    readable: CachePadded<WaitWord>,
    /// Where the writer parks when the ring is full.
    writable: CachePadded<WaitWord>,
}

impl StreamHeader {
    /// Marks the writer failed (the engine calls this when the producer's process dies)
    /// and wakes the reader.
    pub(crate) fn fail_writer(&self) {
        self.set(FAILED);
    }

    /// Marks the reader closed (the engine calls this when the consumer's process dies)
    /// and wakes the writer.
    pub(crate) fn close_reader(&self) {
        self.set(CLOSED);
    }

    /// Makes the stream fresh (empty, open) for its next use. Only while neither end
    /// exists: the pair protocol calls it between items.
    pub(crate) fn reset(&self) {
        // Relaxed: no end exists; whoever makes the next ends learns of the reset
        // through a Release/Acquire hand-off of its own (the pair state, a ring push).
        self.head.store(0, Ordering::Relaxed);
        self.tail.store(0, Ordering::Relaxed);
        self.flags.store(0, Ordering::Relaxed);
    }

    fn set(&self, bit: u32) {
        // Release pairs with the Acquire loads of flags in both ends: the final tail
        // (for FINISHED) is visible to whoever sees the bit.
        self.flags.fetch_or(bit, Ordering::Release);
        self.readable.notify();
        self.writable.notify();
    }

    fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }

    #[cfg(loom)]
    pub(crate) fn flags_for_test(&self) -> u32 {
        self.flags()
    }
}

/// Why a stream operation failed. Converts to `io::Error` for the `Read`/`Write` impls.
///
/// ```
/// use std::io::{Read, Write};
/// use ringpipe_engine::stream::{HeapStream, StreamError};
/// let (mut w, mut r) = HeapStream::new(64).split();
/// w.write_all(b"abc")?;
/// w.fail(); // the producer failed: the reader sees an error, never end-of-file
/// let mut all = Vec::new();
/// let err = r.read_to_end(&mut all).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
/// assert!(matches!(r.read_chunk().map(|c| c.len()), Err(StreamError::ProducerFailed)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The producer failed, panicked or died before finishing: the stream is truncated.
    ProducerFailed,
    /// The consumer stopped reading (closed, failed or died).
    ConsumerClosed,
    /// This writer already finished (or failed) its stream.
    WriterDone,
    /// This reader was already closed.
    ReaderClosed,
    /// The ring's positions in shared memory are impossible.
    Corrupt,
    /// The timeout set with `set_timeout` passed first.
    TimedOut,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ProducerFailed => "the producer failed before finishing the stream; the data is truncated",
            Self::ConsumerClosed => "the consumer stopped reading the stream",
            Self::WriterDone => "the stream was already finished or failed by this writer",
            Self::ReaderClosed => "the stream reader was already closed",
            Self::Corrupt => "the stream ring's positions are inconsistent (corrupt shared memory)",
            Self::TimedOut => "timed out waiting on the stream",
        })
    }
}

impl std::error::Error for StreamError {}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        let kind = match e {
            StreamError::ProducerFailed => io::ErrorKind::ConnectionAborted,
            StreamError::ConsumerClosed | StreamError::WriterDone | StreamError::ReaderClosed => {
                io::ErrorKind::BrokenPipe
            }
            StreamError::Corrupt => io::ErrorKind::InvalidData,
            StreamError::TimedOut => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

#[derive(Clone)]
struct StreamRef {
    header: NonNull<StreamHeader>,
    data: NonNull<u8>,
    capacity: u64,
    _owner: Arc<dyn Send + Sync>,
}

// SAFETY: the pointers target a header of atomics and bytes whose access is governed by
// the ring positions; `_owner` keeps them alive; nothing is tied to a thread.
unsafe impl Send for StreamRef {}

impl StreamRef {
    fn header(&self) -> &StreamHeader {
        // SAFETY: `from_raw`'s contract: valid and alive as long as `_owner`.
        unsafe { self.header.as_ref() }
    }

    /// Where the contiguous run of ring bytes starting at position `pos` begins, and its
    /// length (at most `len`, cut where the ring wraps). Only a pointer: whoever owns
    /// the run by the position protocol makes a slice of it for as long as it owns it.
    fn run(&self, pos: u64, len: u64) -> (NonNull<u8>, usize) {
        let start = pos % self.capacity;
        let len = len.min(self.capacity - start);
        // SAFETY: `start < capacity`, so the pointer stays inside the data region.
        let ptr = unsafe { self.data.add(start as usize) };
        (ptr, len as usize)
    }
}

/// Makes the two ends of a byte ring whose memory lives elsewhere.
///
/// # Safety
/// `header` points to a valid, 128-byte aligned [`StreamHeader`] and `data` to
/// `capacity` bytes, both alive as long as `owner`; `capacity > 0`; at most one writer
/// and one reader exist for this ring at a time, in all processes together; the header
/// is all zeroes (a fresh stream) when the ends are made.
pub(crate) unsafe fn from_raw(
    header: NonNull<StreamHeader>,
    data: NonNull<u8>,
    capacity: u64,
    owner: Arc<dyn Send + Sync>,
) -> (StreamWriter, StreamReader) {
    // SAFETY: the caller's contract covers both ends.
    unsafe {
        (
            writer_from_raw(header, data, capacity, owner.clone()),
            reader_from_raw(header, data, capacity, owner),
        )
    }
}

/// Makes only the writing end of a byte ring (the other end lives in another process).
///
/// # Safety
/// As for [`from_raw`], for this writer and the one reader made elsewhere.
pub(crate) unsafe fn writer_from_raw(
    header: NonNull<StreamHeader>,
    data: NonNull<u8>,
    capacity: u64,
    owner: Arc<dyn Send + Sync>,
) -> StreamWriter {
    debug_assert!(capacity > 0);
    let ring = StreamRef { header, data, capacity, _owner: owner };
    StreamWriter { ring, tail: 0, cached_head: 0, done: false, timeout: None, waited: Duration::ZERO }
}

/// Waits on `word` until `ready()` or the deadline; `Err(TimedOut)` after it.
fn wait_on(
    word: &WaitWord,
    mut ready: impl FnMut() -> bool,
    deadline: Option<Instant>,
) -> Result<(), StreamError> {
    loop {
        let park = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(PARK),
                _ => return Err(StreamError::TimedOut),
            },
            None => PARK,
        };
        if word.wait(&mut ready, Some(park)) == Wake::Ready {
            return Ok(());
        }
    }
}

/// The producing end of a stream. Implements [`io::Write`].
///
/// Call [`finish`](Self::finish) when the stream is complete; dropping the writer
/// without finishing marks the stream failed, and the reader gets an error.
///
/// ```
/// use std::io::{Read, Write};
/// use ringpipe_engine::stream::HeapStream;
/// let (mut tx, mut rx) = HeapStream::new(8).split();
/// let writer = std::thread::spawn(move || -> std::io::Result<()> {
///     tx.write_all(b"longer than the ring")?; // waits for the reader as it goes
///     Ok(tx.finish()?)
/// });
/// let mut got = String::new();
/// rx.read_to_string(&mut got)?; // end of stream only after `finish`
/// writer.join().unwrap()?;
/// assert_eq!(got, "longer than the ring");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamWriter {
    ring: StreamRef,
    /// Next position to write; published as the header's tail on commit.
    tail: u64,
    /// Last reader position seen. In `tail - capacity..=tail`.
    cached_head: u64,
    done: bool,
    timeout: Option<Duration>,
    /// Time spent waiting for room (the clock is read only when there is none).
    waited: Duration,
}

impl StreamWriter {
    /// Bytes the ring holds.
    pub fn capacity(&self) -> usize {
        self.ring.capacity as usize
    }

    /// Gives every blocking call a time limit (`None`: wait as long as it takes).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Free bytes now (re-reading the reader's position), or why writing is over.
    fn free(&mut self) -> Result<u64, StreamError> {
        if self.done {
            return Err(StreamError::WriterDone);
        }
        let h = self.ring.header();
        if h.flags() & CLOSED != 0 {
            return Err(StreamError::ConsumerClosed);
        }
        // Acquire pairs with the reader's Release store of head in `consume`: the
        // reader is done with the bytes before it.
        let head = h.head.load(Ordering::Acquire);
        if head < self.cached_head || head > self.tail {
            return Err(StreamError::Corrupt);
        }
        self.cached_head = head;
        Ok(self.ring.capacity - (self.tail - head))
    }

    /// Lends up to `max` contiguous free bytes of the ring (fewer where the ring wraps
    /// or is nearly full; at most the ring's capacity), waiting for room if there is
    /// none. `max == 0` returns an empty chunk at once.
    ///
    /// ```
    /// use std::io::Read;
    /// use ringpipe_engine::stream::HeapStream;
    /// let (mut w, mut r) = HeapStream::new(8).split();
    /// let mut chunk = w.write_chunk(5)?;
    /// chunk[..5].copy_from_slice(b"hello");
    /// chunk.commit(5);
    /// w.finish()?;
    /// let mut s = String::new();
    /// r.read_to_string(&mut s)?;
    /// assert_eq!(s, "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_chunk(&mut self, max: usize) -> Result<WriteChunk<'_>, StreamError> {
        let deadline = self.timeout.map(crate::wait::deadline_after);
        let mut free = self.free()?;
        while free == 0 && max > 0 {
            let ring = self.ring.clone();
            let h = ring.header();
            let tail = self.tail;
            let started = Instant::now();
            let woke = wait_on(
                &h.writable,
                // Acquire: pairs with the reader's Release store of head.
                || h.head.load(Ordering::Acquire) != tail - ring.capacity || h.flags() & CLOSED != 0,
                deadline,
            );
            self.waited += started.elapsed();
            woke?;
            free = self.free()?;
        }
        let (ptr, len) = self.ring.run(self.tail, free.min(max as u64));
        Ok(WriteChunk { ptr, len, tail: &mut self.tail, ring: &self.ring })
    }

    /// Ends the stream cleanly: the reader sees end-of-file after the last byte.
    ///
    /// See [`StreamReader`] for an example.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        if self.done {
            return Err(StreamError::WriterDone);
        }
        self.done = true;
        // Release (inside `set`): the reader that sees FINISHED sees the final tail.
        self.ring.header().set(FINISHED);
        Ok(())
    }

    /// Ends the stream as failed: the reader's next read is an error.
    pub fn fail(&mut self) {
        if !self.done {
            self.done = true;
            self.ring.header().set(FAILED);
        }
    }

    /// True once the reader stopped reading.
    pub fn is_closed(&self) -> bool {
        self.ring.header().flags() & CLOSED != 0
    }

    /// Bytes committed so far, and the time spent waiting for room.
    pub(crate) fn progress(&self) -> (u64, Duration) {
        (self.tail, self.waited)
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        self.fail(); // a writer that did not finish leaves a truncated stream
    }
}

/// Free ring bytes lent by [`StreamWriter::write_chunk`]; derefs to `[u8]`.
/// Nothing is published until [`commit`](Self::commit).
///
/// It holds a pointer, not a `&mut [u8]`: a reference into the ring must not be alive
/// while `commit` publishes the bytes to the reader (Miri's Stacked Borrows flags a
/// protected `&mut` argument overlapping the reader's access).
///
/// ```
/// use ringpipe_engine::stream::HeapStream;
/// let (mut w, mut r) = HeapStream::new(64).split();
/// let mut chunk = w.write_chunk(10)?; // ring memory, lent
/// let n = chunk.len();
/// chunk[..n].fill(7);
/// chunk.commit(n); // published: the reader can take them
/// assert_eq!(r.read_chunk()?.len(), n);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WriteChunk<'a> {
    /// Start of free space the writer owns (`len` bytes, inside the ring).
    ptr: NonNull<u8>,
    len: usize,
    tail: &'a mut u64,
    ring: &'a StreamRef,
}

impl WriteChunk<'_> {
    /// Publishes the first `n` bytes of the chunk (clamped to its length) and wakes the
    /// reader if it is parked.
    pub fn commit(self, n: usize) {
        let n = n.min(self.len) as u64;
        if n == 0 {
            return;
        }
        *self.tail += n;
        let h = self.ring.header();
        // Release pairs with the reader's Acquire load of tail: the bytes are written.
        h.tail.store(*self.tail, Ordering::Release);
        h.readable.notify();
    }
}

impl std::ops::Deref for WriteChunk<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is free space inside the ring, owned by the writer
        // (the position protocol) until `commit`, which consumes the chunk.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for WriteChunk<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl io::Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut chunk = self.write_chunk(buf.len())?;
        let n = chunk.len();
        chunk.copy_from_slice(&buf[..n]);
        chunk.commit(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // every commit is already visible to the reader
    }
}

/// A byte ring on the heap: for tests, loom, Miri, and thread-to-thread streams
/// (see [`StreamWriter`] for an example).
pub struct HeapStream {
    header: HeapBox<StreamHeader>,
    data: HeapBox<[u8]>,
}

impl HeapStream {
    /// A stream ring of `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            header: HeapBox::new(Box::default()),
            data: HeapBox::new(vec![0u8; capacity.max(1)].into_boxed_slice()),
        }
    }

    /// Splits the ring into its writer and reader.
    pub fn split(self) -> (StreamWriter, StreamReader) {
        let capacity = self.data.ptr().len() as u64;
        let (header, data) = (self.header.ptr(), self.data.ptr().cast::<u8>());
        // SAFETY: the allocations live until the last end drops the Arc owning `self`;
        // capacity > 0; fresh header; split once.
        unsafe { from_raw(header, data, capacity, Arc::new(self)) }
    }
}

mod reader;

pub(crate) use reader::reader_from_raw;
pub use reader::StreamReader;

#[cfg(test)]
mod tests;
