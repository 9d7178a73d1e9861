//! A lock-free single-producer single-consumer ring of `u64` descriptors.
//!
//! The ring knows nothing about processes, frames or files: it is a [`RingHeader`] plus
//! an array of slots, wherever they live. The engine places them in the shared segment;
//! the unit, loom and Miri tests place them on the heap ([`HeapRing`]).
//!
//! Positions are `u64` counters that only grow (they never wrap in practice: 2^64
//! items); a slot index is `position & mask`. Both ends keep a private copy of the
//! other end's position and re-read the shared one only when the copy says
//! "full"/"empty", so the fast path touches no cache line the peer writes
//! (rtrb's design).
//!
//! The peer may be another process, possibly buggy: every position read from the
//! header is checked (`0 <= tail - head <= capacity`) before use, and a violation is a
//! [`Corrupt`] error rather than an out-of-bounds access.

use std::ptr::NonNull;
use std::sync::Arc;

#[cfg(test)]
use crate::heap::HeapBox;
use crate::sync::{AtomicU64, CachePadded, Ordering};
use crate::wait::{WaitWord, Wake};

/// Positions past this are corruption: at a billion items a second a ring reaches it
/// after 292 years. Checking it keeps every `+ 1` on a position from overflowing.
const MAX_POSITION: u64 = 1 << 63;

/// The shared control block of one ring. All-zero bytes are an empty ring.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingHeader {
    /// Next position the consumer reads; written by the consumer only. In `tail - capacity..=tail`.
    head: CachePadded<AtomicU64>,
    /// Next position the producer writes; written by the producer only. In `head..=head + capacity`.
    tail: CachePadded<AtomicU64>,
    /// Where the consumer parks when the ring is empty.
    readable: CachePadded<WaitWord>,
}

impl RingHeader {
    /// Items in the ring now, as read by a third party (a viewer): the two positions
    /// read one after the other, so only approximately current; never negative.
    pub(crate) fn occupancy(&self) -> u64 {
        let head = self.head.load(std::sync::atomic::Ordering::Relaxed);
        self.tail.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(head)
    }

    /// Wakes the consumer if it is parked, so it re-checks its stop condition
    /// (state changed before this call). Anyone may call it.
    pub fn nudge_consumer(&self) {
        self.readable.notify();
    }

    /// Parks on this ring's wake word until `ready()`; for a consumer of several rings
    /// whose producers were pointed here with [`Producer::with_doorbell`] (the
    /// tests' view of what `route::Gather` does).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn wait_doorbell(&self, ready: impl FnMut() -> bool, timeout: std::time::Duration) -> Wake {
        self.readable.wait(ready, Some(timeout))
    }
}

/// A position read from shared memory broke the ring's invariant: the peer is buggy,
/// or the memory was overwritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// The local position of the side that noticed.
    pub local: u64,
    /// The position it read from the peer.
    pub remote: u64,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ring positions are inconsistent (local {}, peer {}): the shared memory was corrupted",
            self.local, self.remote
        )
    }
}

impl std::error::Error for Corrupt {}

/// Why a push did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// No room: the value is given back.
    Full(u64),
    /// The consumer's position is impossible.
    Corrupt(Corrupt),
}

/// Raw view of one ring: header and slots, plus whatever keeps their memory alive.
#[derive(Clone)]
struct RingRef {
    header: NonNull<RingHeader>,
    /// Whose wake word `publish` and `nudge` notify: this ring's, or a doorbell's.
    wake: NonNull<RingHeader>,
    slots: NonNull<AtomicU64>,
    mask: u64,
    _owner: Arc<dyn Send + Sync>,
}

// SAFETY: the pointers target `Sync` atomics kept alive by `_owner`; nothing in a
// RingRef is tied to the thread that made it.
unsafe impl Send for RingRef {}

impl RingRef {
    fn header(&self) -> &RingHeader {
        // SAFETY: `from_raw`'s contract: valid, aligned and alive as long as `_owner`.
        unsafe { self.header.as_ref() }
    }

    fn slot(&self, pos: u64) -> &AtomicU64 {
        let i = (pos & self.mask) as usize;
        // SAFETY: `i <= mask < capacity`, and `from_raw`'s contract gives `capacity`
        // valid, aligned slots alive as long as `_owner`.
        unsafe { &*self.slots.as_ptr().add(i) }
    }

    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    fn wake(&self) -> &RingHeader {
        // SAFETY: `header` itself, or a doorbell `with_doorbell` promised lives as long.
        unsafe { self.wake.as_ref() }
    }
}

/// Makes the two ends of a ring whose memory lives elsewhere.
///
/// # Safety
/// - `header` points to a valid, 128-byte aligned [`RingHeader`] and `slots` to
///   `capacity` valid, aligned `AtomicU64`s, both alive as long as `owner` is;
/// - `capacity` is a power of two;
/// - at most one `Producer` and one `Consumer` exist for this ring at any time, in all
///   processes together (that is what single-producer single-consumer means);
/// - a fresh ring's header is all zeroes, or it continues from positions the previous
///   ends left.
pub unsafe fn from_raw(
    header: NonNull<RingHeader>,
    slots: NonNull<AtomicU64>,
    capacity: u64,
    owner: Arc<dyn Send + Sync>,
) -> (Producer, Consumer) {
    debug_assert!(capacity.is_power_of_two());
    let ring = RingRef { header, wake: header, slots, mask: capacity - 1, _owner: owner };
    let h = ring.header();
    // Relaxed: the caller's contract says nobody else uses the ring while we make its ends.
    let head = h.head.load(Ordering::Relaxed);
    let tail = h.tail.load(Ordering::Relaxed);
    // The positions are not trusted yet: each end starts with a cached peer position
    // that makes its first operation re-read and check the real one.
    (
        Producer { ring: ring.clone(), tail, cached_head: tail.wrapping_sub(capacity) },
        Consumer { ring, head, cached_tail: head, unreleased: false },
    )
}

/// The writing end. Pushes are private until [`publish`](Producer::publish), so a
/// batch of descriptors costs one release store and at most one wake-up.
pub struct Producer {
    ring: RingRef,
    /// Next position to write, published or not. In `cached_head..=cached_head + capacity`.
    tail: u64,
    /// Last consumer position read; may lag the real one.
    cached_head: u64,
}

impl Producer {
    /// Writes `value` into the next slot without publishing it (the tests'
    /// `push_waits_for_publish`).
    #[inline]
    pub fn try_push(&mut self, value: u64) -> Result<(), PushError> {
        // Wrapping: a fresh end's cached head is `tail - capacity`, wrapped if need be.
        if self.tail.wrapping_sub(self.cached_head) == self.ring.capacity() {
            // Acquire pairs with the consumer's Release store of head in `try_pop`: the
            // consumer has finished reading every slot before that position.
            let head = self.ring.header().head.load(Ordering::Acquire);
            if head > self.tail || self.tail - head > self.ring.capacity() || self.tail >= MAX_POSITION {
                return Err(PushError::Corrupt(Corrupt { local: self.tail, remote: head }));
            }
            self.cached_head = head;
            if self.tail - head == self.ring.capacity() {
                return Err(PushError::Full(value));
            }
        }
        // Relaxed: made visible by the Release store of tail in `publish`.
        self.ring.slot(self.tail).store(value, Ordering::Relaxed);
        self.tail += 1;
        Ok(())
    }

    /// Makes every pushed value (and every write to memory made before it) visible to
    /// the consumer, and wakes it if it is parked. No syscall when it is awake.
    #[inline]
    pub fn publish(&mut self) {
        let h = self.ring.header();
        // Release pairs with the consumer's Acquire load of tail in `try_pop`.
        h.tail.store(self.tail, Ordering::Release);
        self.ring.wake().readable.notify();
    }

    /// Takes over from a dead producer that wrote descriptors up to position `staged`
    /// without publishing them: they become this producer's pushes (unpublished). A
    /// `staged` behind the published tail is nothing to take over; one past the
    /// consumer's reach is an error (the tests' `adopt_takes_over_unpublished_pushes`).
    pub fn adopt(&mut self, staged: u64) -> Result<(), Corrupt> {
        // Acquire pairs with the consumer's Release store of head in `release`.
        let head = self.ring.header().head.load(Ordering::Acquire);
        let tail = staged.max(self.tail);
        if head > tail || tail - head > self.ring.capacity() || tail > MAX_POSITION {
            return Err(Corrupt { local: staged, remote: head });
        }
        self.cached_head = head;
        self.tail = self.tail.max(staged);
        Ok(())
    }

    /// Makes `publish` and `nudge` wake whoever parks on `doorbell` (another ring's
    /// header) instead of this ring's consumer: how one consumer waits on many rings.
    ///
    /// # Safety
    /// `doorbell` is valid and lives as long as this ring's memory.
    pub(crate) unsafe fn with_doorbell(mut self, doorbell: NonNull<RingHeader>) -> Self {
        self.ring.wake = doorbell;
        self
    }

    /// The consumer's released position (see [`Consumer::try_take`]): with
    /// [`position`](Self::position), how far behind it is, for choosing the least
    /// loaded of several rings.
    pub(crate) fn consumer_position(&self) -> u64 {
        // Relaxed: a hint only; a stale head overstates the backlog, never corrupts it.
        self.ring.header().head.load(Ordering::Relaxed)
    }

    /// The position the next push writes.
    pub(crate) fn position(&self) -> u64 {
        self.tail
    }

    /// Values pushed but not yet published.
    pub fn unpublished(&self) -> u64 {
        // Relaxed: we are the only writer of tail (saturating: unless memory is corrupt).
        self.tail.saturating_sub(self.ring.header().tail.load(Ordering::Relaxed))
    }
}

/// The reading end.
pub struct Consumer {
    ring: RingRef,
    /// Next position to read. In `cached_tail - capacity..=cached_tail`.
    head: u64,
    /// Last producer position read; may lag the real one.
    cached_tail: u64,
    /// Whether `head` moved past the shared head (values taken, not yet released).
    unreleased: bool,
}

impl Consumer {
    /// Takes the next published value, if any (and releases it at once; runners
    /// take and release separately, see `Gather`).
    #[cfg(any(test, feature = "unstable-fuzzing"))]
    pub fn try_pop(&mut self) -> Result<Option<u64>, Corrupt> {
        let value = self.try_take()?;
        if value.is_some() {
            self.release();
        }
        Ok(value)
    }

    /// Takes the next published value but keeps its place in the ring until
    /// [`release`](Self::release): until then the producer counts it as queued (its
    /// [`backlog`](Producer::backlog) includes the item being worked on).
    #[inline]
    pub(crate) fn try_take(&mut self) -> Result<Option<u64>, Corrupt> {
        if self.head == self.cached_tail && !self.refresh()? {
            return Ok(None);
        }
        // Relaxed: the Acquire load of tail in `refresh` already ordered this read
        // after the producer's write.
        let value = self.ring.slot(self.head).load(Ordering::Relaxed);
        self.head += 1;
        self.unreleased = true;
        Ok(Some(value))
    }

    /// The position the next take reads.
    pub(crate) fn position(&self) -> u64 {
        self.head
    }

    /// Gives the places of every value taken so far back to the producer.
    #[inline]
    pub(crate) fn release(&mut self) {
        if self.unreleased {
            // Release pairs with the producer's Acquire load of head in `try_push`: our
            // read of the slots happens before the producer may overwrite them.
            self.ring.header().head.store(self.head, Ordering::Release);
            self.unreleased = false;
        }
    }

    /// Re-reads the producer's position; true if something is readable.
    #[inline]
    fn refresh(&mut self) -> Result<bool, Corrupt> {
        // Acquire pairs with the producer's Release store in `publish`.
        let tail = self.ring.header().tail.load(Ordering::Acquire);
        if tail < self.head || tail - self.head > self.ring.capacity() || tail > MAX_POSITION {
            return Err(Corrupt { local: self.head, remote: tail });
        }
        self.cached_tail = tail;
        Ok(tail != self.head)
    }

    /// True if a value is published and not yet popped.
    pub fn has_data(&mut self) -> Result<bool, Corrupt> {
        if self.head != self.cached_tail {
            return Ok(true);
        }
        self.refresh()
    }

    /// Waits until a value is readable or `stop()` is true, spinning then parking
    /// (see `wait/README.md`). `stop` must read state that is changed before a
    /// [`Producer::nudge`]. Returns `TimedOut` after `timeout` so the caller can check
    /// that its peers are alive.
    pub fn wait(&mut self, mut stop: impl FnMut() -> bool, timeout: Option<std::time::Duration>) -> Wake {
        let ring = self.ring.clone();
        ring.header().readable.wait(|| !matches!(self.has_data(), Ok(false)) || stop(), timeout)
    }
}

impl Consumer {
    /// This ring's wake word, for a consumer of several rings whose producers ring it
    /// (see [`Producer::with_doorbell`]).
    pub(crate) fn doorbell(&self) -> Doorbell {
        Doorbell(self.ring.clone())
    }
}

/// Where a consumer of several rings parks: the wake word of one of them, which every
/// one of their producers notifies.
#[derive(Clone)]
pub(crate) struct Doorbell(RingRef);

impl Doorbell {
    /// Parks until `ready()` (spinning first, see `wait/README.md`), or `timeout`.
    pub(crate) fn wait(&self, ready: impl FnMut() -> bool, timeout: Option<std::time::Duration>) -> Wake {
        self.0.header().readable.wait(ready, timeout)
    }
}

/// A ring on the heap, for tests, loom and Miri.
#[cfg(test)]
pub struct HeapRing {
    header: HeapBox<RingHeader>,
    slots: HeapBox<[AtomicU64]>,
}

#[cfg(test)]
impl HeapRing {
    /// A ring of `capacity` slots (rounded up to a power of two, at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self {
            header: HeapBox::new(Box::default()),
            slots: HeapBox::new((0..capacity).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    /// Splits the ring into its two ends.
    pub fn split(self) -> (Producer, Consumer) {
        let capacity = self.slots.ptr().len() as u64;
        let (header, slots) = (self.header.ptr(), self.slots.ptr().cast::<AtomicU64>());
        // SAFETY: the allocations live until the last end drops the Arc owning `self`;
        // capacity is a power of two; the ring is fresh and split once.
        unsafe { from_raw(header, slots, capacity, Arc::new(self)) }
    }
}

#[cfg(test)]
mod tests;
