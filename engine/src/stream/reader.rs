//! The consuming end of a stream: [`StreamReader`] (`io::Read`, `io::BufRead`, and
//! zero-copy `read_chunk` → use in place → `consume`).

#[allow(clippy::wildcard_imports)] // the stream's own private parts: header, ring, waits
use super::*;

/// Makes only the reading end of a byte ring.
///
/// # Safety
/// As for [`from_raw`], for this reader and the one writer made elsewhere.
pub(crate) unsafe fn reader_from_raw(
    header: NonNull<StreamHeader>,
    data: NonNull<u8>,
    capacity: u64,
    owner: Arc<dyn Send + Sync>,
) -> StreamReader {
    debug_assert!(capacity > 0);
    let ring = StreamRef { header, data, capacity, _owner: owner };
    StreamReader { ring, head: 0, cached_tail: 0, closed: false, timeout: None, waited: Duration::ZERO }
}

/// The consuming end of a stream. Implements [`io::Read`] and [`io::BufRead`].
///
/// ```
/// use std::io::{Read, Write};
/// use ringpipe_engine::stream::HeapStream;
/// let (mut w, mut r) = HeapStream::new(16).split();
/// let writer = std::thread::spawn(move || -> std::io::Result<()> {
///     w.write_all(&[1u8; 100])?; // through a 16-byte ring
///     Ok(w.finish()?)
/// });
/// let mut all = Vec::new();
/// r.read_to_end(&mut all)?; // end-of-file only after `finish`
/// assert_eq!(all, [1u8; 100]);
/// writer.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StreamReader {
    pub(super) ring: StreamRef,
    /// Next position to read; published as the header's head on consume.
    head: u64,
    /// Last writer position seen. In `head..=head + capacity`.
    cached_tail: u64,
    closed: bool,
    timeout: Option<Duration>,
    /// Time spent waiting for bytes (the clock is read only when there are none).
    waited: Duration,
}

impl StreamReader {
    /// Gives every blocking call a time limit (`None`: wait as long as it takes).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Readable bytes now (re-reading the writer's position), `Ok(0)` at a clean end,
    /// or why reading is over. `Ok(None)`: nothing yet, the stream goes on.
    pub(super) fn available(&mut self) -> Result<Option<u64>, StreamError> {
        if self.closed {
            return Err(StreamError::ReaderClosed);
        }
        let h = self.ring.header();
        // Flags first: FINISHED is set after the last tail store, so reading the flags
        // (Acquire) and then the tail gives the final tail whenever FINISHED is seen.
        let flags = h.flags();
        // Acquire pairs with the writer's Release store of tail in `commit`.
        let tail = h.tail.load(Ordering::Acquire);
        if tail < self.cached_tail || tail - self.head > self.ring.capacity {
            return Err(StreamError::Corrupt);
        }
        self.cached_tail = tail;
        let available = tail - self.head;
        if available > 0 {
            return Ok(Some(available));
        }
        if flags & FAILED != 0 {
            return Err(StreamError::ProducerFailed);
        }
        if flags & FINISHED != 0 {
            return Ok(Some(0));
        }
        Ok(None)
    }

    /// Lends the readable bytes (contiguous, up to where the ring wraps), waiting for
    /// some if there are none. An empty slice means the producer finished: end of
    /// stream. A producer that failed or died gives `Err(ProducerFailed)` instead.
    ///
    /// ```
    /// use std::io::Write;
    /// use ringpipe_engine::stream::HeapStream;
    /// let (mut w, mut r) = HeapStream::new(64).split();
    /// w.write_all(b"abc")?;
    /// w.finish()?;
    /// let chunk = r.read_chunk()?; // the ring's bytes, in place
    /// assert_eq!(chunk, b"abc");
    /// let n = chunk.len();
    /// r.consume(n); // and give them back
    /// assert!(r.read_chunk()?.is_empty()); // end of stream
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_chunk(&mut self) -> Result<&[u8], StreamError> {
        let deadline = self.timeout.map(crate::wait::deadline_after);
        let available = loop {
            if let Some(n) = self.available()? {
                break n;
            }
            let ring = self.ring.clone();
            let h = ring.header();
            let head = self.head;
            let started = Instant::now();
            let woke = wait_on(
                &h.readable,
                // Acquire: pairs with the writer's Release stores of tail and flags.
                || h.tail.load(Ordering::Acquire) != head || h.flags() & (FINISHED | FAILED) != 0,
                deadline,
            );
            self.waited += started.elapsed();
            woke?;
        };
        let (ptr, len) = self.ring.run(self.head, available);
        // SAFETY: `head..head + available` is published data inside the ring, which only
        // the reader touches until `consume` (which needs `&mut self`, so this borrow
        // has ended by then).
        Ok(unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) })
    }

    /// Releases the first `n` bytes lent by [`read_chunk`](Self::read_chunk) (clamped to
    /// what is readable) and wakes the writer if it is parked.
    pub fn consume(&mut self, n: usize) {
        let n = (n as u64).min(self.cached_tail - self.head);
        if n == 0 {
            return;
        }
        self.head += n;
        let h = self.ring.header();
        // Release pairs with the writer's Acquire load of head: we are done with the bytes.
        h.head.store(self.head, Ordering::Release);
        h.writable.notify();
    }

    /// Stops reading: the writer's next write fails with `ConsumerClosed`.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.ring.header().set(CLOSED);
        }
    }

    /// True once the producer finished cleanly (bytes may still be unread).
    pub fn is_finished(&self) -> bool {
        self.ring.header().flags() & FINISHED != 0
    }

    /// Bytes consumed so far, and the time spent waiting for bytes.
    pub(crate) fn progress(&self) -> (u64, Duration) {
        (self.head, self.waited)
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.close();
    }
}

impl io::Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let chunk = self.read_chunk()?;
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl io::BufRead for StreamReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(self.read_chunk()?)
    }

    fn consume(&mut self, n: usize) {
        StreamReader::consume(self, n);
    }
}
