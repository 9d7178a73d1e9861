//! The hand-off between the two halves of a producer/consumer pair.
//!
//! The halves of a pair (`Builder::pair`: a producer and the consumer after it) run on
//! the same item at the same time, streaming bytes through the
//! pair's byte ring ([`stream`](crate::stream)). Each half gets a frame of its own, so
//! neither can see the other's writes half-done:
//!
//! ```text
//!  producer (stage p)                         consumer (stage p + 1)
//!  pop item D; wait IDLE; wants(D)
//!  copy D into the partner slot P
//!  reset the stream; state = STARTED
//!  push D (tagged PAIRED) ───────────────────▶ pop D
//!  produce(P, writer) ═══ byte ring ═════════▶ consume(D, reader)
//!  finish or fail the stream                   drop the reader (closes it)
//!  state = PRODUCED (slot of P, outcome) ────▶ wait PRODUCED; read P's header
//!                                              merge_producer(D, P's bytes) or fail D
//!  wait IDLE before the next item ◀────────── state = IDLE
//!                                              push D on
//! ```
//!
//! Ownership: the producer owns P and the stream's writer from STARTED to PRODUCED;
//! the consumer owns D throughout and may read P from PRODUCED until it stores IDLE.
//! Every value the consumer reads from the producer (state, slot index, P's header) is
//! read once and checked; a bad one breaks the pipeline with a typed error.
//!
//! When the pipeline breaks (a worker died, memory is corrupt), the engine
//! [`abort`](PairHeader::abort)s every pair: both stream ends fail at their next call,
//! and both halves leave their waits, so no half can hang on the other.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use crate::stream::{self, StreamHeader, StreamReader, StreamWriter};
use crate::sync::{fence, AtomicU32, CachePadded, Ordering};
use crate::wait::{WaitWord, Wake};

/// No item in the pair: the producer may start one.
pub(crate) const IDLE: u32 = 0;
/// The producer started an item and is streaming it.
pub(crate) const STARTED: u32 = 1;
/// The producer is done with the item; the consumer may read its frame.
pub(crate) const PRODUCED: u32 = 2;

/// The producer half succeeded.
pub(crate) const OUTCOME_OK: u32 = 0;
/// The producer half failed on its own.
pub(crate) const OUTCOME_FAILED: u32 = 1;
/// The producer half failed after the consumer had already closed the stream: the
/// consumer's failure is the cause.
pub(crate) const OUTCOME_FAILED_AFTER_CLOSE: u32 = 2;

/// The ring a consumer receives a paired item's descriptor through carries this bit,
/// so a consumer tells a paired item from one that passes through untouched.
pub(crate) const PAIRED: u64 = 1 << 63;

/// How often a waiting half re-checks whether the pipeline broke.
const PARK: Duration = Duration::from_millis(100);

/// The shared control block of one pair, followed in the segment by the ring bytes.
/// All-zero bytes are an idle pair.
#[repr(C)]
#[derive(Debug, Default)]
pub struct PairHeader {
    state: CachePadded<AtomicU32>,
    /// The slot holding the producer's frame, valid in `PRODUCED`.
    producer_slot: AtomicU32,
    /// `OUTCOME_*`, valid in `PRODUCED`.
    outcome: AtomicU32,
    /// The producer parks here waiting for `IDLE`.
    idle: CachePadded<WaitWord>,
    /// The consumer parks here waiting for `PRODUCED`.
    produced: CachePadded<WaitWord>,
    /// The slot of the item in the pair (+ 1; 0: none yet), stored before `STARTED`.
    item: AtomicU32,
    /// Non-zero: the consumer died holding the item; its replacement finishes the
    /// item's hand-off (waits for `PRODUCED`, stores `IDLE`) before anything else.
    abandoned: AtomicU32,
    stream: StreamHeader,
}

impl PairHeader {
    /// The pair's state, one of `IDLE`, `STARTED`, `PRODUCED` (or garbage from a buggy peer).
    pub(crate) fn state(&self) -> u32 {
        // Acquire pairs with the Release stores in `start`, `produced` and `release`.
        self.state.load(Ordering::Acquire)
    }

    /// Producer: waits until the consumer released the previous item, or `stop()`.
    /// Returns false if stopped.
    pub(crate) fn wait_idle(&self, stop: impl Fn() -> bool) -> bool {
        self.wait_for(&self.idle, IDLE, stop)
    }

    /// Consumer: waits until the producer is done, or `stop()`. Returns the producer's
    /// frame slot and outcome (unchecked: the caller validates them), or `None` if stopped.
    pub(crate) fn wait_produced(&self, stop: impl Fn() -> bool) -> Option<(u32, u32)> {
        if !self.wait_for(&self.produced, PRODUCED, stop) {
            return None;
        }
        // Relaxed: ordered after the Acquire load of PRODUCED in `wait_for`.
        Some((self.producer_slot.load(Ordering::Relaxed), self.outcome.load(Ordering::Relaxed)))
    }

    fn wait_for(&self, word: &WaitWord, want: u32, stop: impl Fn() -> bool) -> bool {
        loop {
            if word.wait(|| self.state() == want, Some(PARK)) == Wake::Ready {
                return true;
            }
            if stop() {
                return false;
            }
        }
    }

    /// Producer, in `IDLE`: makes the stream fresh and marks the item in slot `item`
    /// started. Returns false if the pipeline broke meanwhile (`broken()`), in which
    /// case the stream is aborted again so neither half can wait on it.
    pub(crate) fn start(&self, item: u32, broken: impl Fn() -> bool) -> bool {
        self.stream.reset();
        // Relaxed: published by the Release store of STARTED below.
        self.item.store(item + 1, Ordering::Relaxed);
        // Release pairs with the consumer's Acquire in `state`: the reset stream is
        // visible to the consumer that sees STARTED (the ring push publishes it too).
        self.state.store(STARTED, Ordering::Release);
        // SeqCst fence, paired with the one in `abort`: either this check sees the
        // pipeline broken, or the engine's abort comes after our reset and survives it.
        fence(Ordering::SeqCst);
        if broken() {
            self.stream.fail_writer();
            self.stream.close_reader();
            return false;
        }
        true
    }

    /// Producer: hands its frame (`slot`) and `outcome` to the consumer.
    pub(crate) fn produced(&self, slot: u32, outcome: u32) {
        self.producer_slot.store(slot, Ordering::Relaxed);
        self.outcome.store(outcome, Ordering::Relaxed);
        // Release pairs with the Acquire in `wait_produced`: the slot, the outcome and
        // the producer's frame bytes are written.
        self.state.store(PRODUCED, Ordering::Release);
        self.produced.notify();
    }

    /// Consumer: done with the item and the producer's frame.
    pub(crate) fn release(&self) {
        // Release pairs with the producer's Acquire in `wait_idle`: we no longer read
        // its frame or the stream.
        self.state.store(IDLE, Ordering::Release);
        self.idle.notify();
    }

    /// Parent, after a half's process died: the slot of the item whose hand-off is under
    /// way, if the pair is not idle. Only meaningful while one half is dead (the other
    /// cannot move the pair past the dead one's step).
    pub(crate) fn item_in_flight(&self) -> Option<u32> {
        // Acquire pairs with the Release store of STARTED in `start`.
        match self.state() {
            IDLE => None,
            _ => self.item.load(Ordering::Acquire).checked_sub(1),
        }
    }

    /// Parent, after the producer died before the consumer got the item: back to
    /// `IDLE` with a fresh stream, for the producer's replacement.
    pub(crate) fn reset(&self) {
        self.stream.reset();
        // Release pairs with the Acquire in `wait_idle` (the replacement's first wait).
        self.state.store(IDLE, Ordering::Release);
        self.idle.notify();
    }

    /// Parent, after the producer died mid-stream with the item gone to the consumer:
    /// ends the stream with an error and hands the consumer `slot` (the dead producer's
    /// frame, already marked failed) as its frame, so the consumer fails the item.
    pub(crate) fn produced_for_dead_producer(&self, slot: u32) {
        self.stream.fail_writer();
        self.produced(slot, OUTCOME_FAILED);
    }

    /// Parent, after the consumer died holding the item: the producer's next write
    /// fails, and the consumer's replacement finishes the hand-off
    /// ([`take_abandoned`](Self::take_abandoned)).
    pub(crate) fn abandon(&self) {
        // Release pairs with the Acquire swap in `take_abandoned`.
        self.abandoned.store(1, Ordering::Release);
        self.stream.close_reader();
    }

    /// Consumer, as it starts: true if its predecessor died holding an item, in which
    /// case it must wait for `PRODUCED` and `release` the pair before taking items.
    pub(crate) fn take_abandoned(&self) -> bool {
        // Acquire pairs with the Release store in `abandon`.
        self.abandoned.swap(0, Ordering::Acquire) != 0
    }

    /// Engine, when the pipeline breaks: both stream ends fail at their next call, and
    /// both halves' waits are woken to see the broken state.
    pub fn abort(&self) {
        // SeqCst fence: pairs with the one in `start` (see there).
        fence(Ordering::SeqCst);
        self.stream.fail_writer();
        self.stream.close_reader();
        self.idle.notify();
        self.produced.notify();
    }
}

/// One pair's control block and ring bytes, kept alive by `owner` (the segment).
#[derive(Clone)]
pub(crate) struct PairRef {
    header: NonNull<PairHeader>,
    data: NonNull<u8>,
    capacity: u64,
    owner: Arc<dyn Send + Sync>,
}

// SAFETY: the pointers target atomics and ring bytes whose access follows the pair and
// stream protocols; `owner` keeps them alive; nothing is tied to a thread.
unsafe impl Send for PairRef {}
// SAFETY: `&PairRef` gives only `&PairHeader` (atomics) and new stream ends, whose use
// the pair protocol governs (one producer, one consumer), wherever they are made.
unsafe impl Sync for PairRef {}

impl PairRef {
    /// # Safety
    /// `header` points to a valid, 128-aligned [`PairHeader`] followed by `capacity > 0`
    /// ring bytes at `data`, alive as long as `owner`; at most one producer and one
    /// consumer use the pair, in all processes together.
    pub(crate) unsafe fn new(
        header: NonNull<PairHeader>,
        data: NonNull<u8>,
        capacity: u64,
        owner: Arc<dyn Send + Sync>,
    ) -> Self {
        Self { header, data, capacity, owner }
    }

    pub(crate) fn header(&self) -> &PairHeader {
        // SAFETY: `new`'s contract: valid and alive as long as `owner`, which we hold.
        unsafe { self.header.as_ref() }
    }

    /// The writing end for the item just started. Producer only, between `start` and
    /// `produced`, and dropped before `produced`.
    pub(crate) fn writer(&self) -> StreamWriter {
        let stream = NonNull::from(&self.header().stream);
        // SAFETY: the ring is valid (`new`); the producer is its only writer and the
        // stream was reset by `start` before the consumer could make its reader.
        unsafe { stream::writer_from_raw(stream, self.data, self.capacity, self.owner.clone()) }
    }

    /// The reading end for the item in `STARTED` or `PRODUCED`. Consumer only, dropped
    /// before `release`.
    pub(crate) fn reader(&self) -> StreamReader {
        let stream = NonNull::from(&self.header().stream);
        // SAFETY: as in `writer`; the consumer is the ring's only reader.
        unsafe { stream::reader_from_raw(stream, self.data, self.capacity, self.owner.clone()) }
    }
}

#[cfg(test)]
mod tests;
