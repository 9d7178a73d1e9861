//! A runner's statistics, counted privately and stored to its shared block in batches.
//!
//! The runner's time is cut into stretches: *busy* while it has an item, *starved*
//! while it waits for input (its ring is empty, or its producer has not finished),
//! and *blocked* while it waits on the next stage (a full stream ring, or a consumer
//! still holding the pair). Items move on by descriptor pushes that never wait (each
//! ring has room for every slot), so a plain stage is never blocked: back-pressure
//! reaches the submitter as a frame it has to wait for.
//!
//! The clock is read where a stretch ends, and otherwise once per batch: a stage that
//! always has work reads it once per [`STORE_EVERY`] items or [`STORE_BYTES`] bytes.
//! With tiny items that is under 2 ns an item (a vDSO clock read is about 23 ns here).
//! Item and byte counts are also stored, without the clock, before every publish, so
//! they are exact for every item that came out; times lag by at most one batch.

use std::time::{Duration, Instant};

use crate::memory::{Segment, Tally};

/// Store the totals (and read the clock) at least once per this many items...
const STORE_EVERY: u32 = 16;
/// ...or once this many bytes went in since the last store (big items are slow).
const STORE_BYTES: u64 = 256 * 1024;

/// Why a runner waited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waited {
    /// For input.
    Starved,
    /// On the next stage.
    Blocked,
}

pub(crate) struct Meter {
    record: usize,
    totals: Tally,
    /// When the current busy stretch started, or the last busy time was counted.
    since: Instant,
    /// Time inside the current busy stretch already counted as waiting.
    waited_inside: Duration,
    /// Items and bytes since the last store.
    unstored: u32,
    unstored_bytes: u64,
}

impl Meter {
    /// Continues stage record `record`'s totals (a replacement keeps its predecessor's).
    pub(crate) fn new(seg: &Segment, record: usize) -> Self {
        Self {
            record,
            totals: seg.counters(record).load(),
            since: Instant::now(),
            waited_inside: Duration::ZERO,
            unstored: 0,
            unstored_bytes: 0,
        }
    }

    /// One item went through: `bytes_in` arrived, `bytes_out` went on.
    #[inline]
    pub(crate) fn item(&mut self, seg: &Segment, bytes_in: u64, bytes_out: u64) {
        self.totals.items += 1;
        self.totals.bytes_in += bytes_in;
        self.totals.bytes_out += bytes_out;
        self.unstored += 1;
        self.unstored_bytes += bytes_in;
        if self.unstored >= STORE_EVERY || self.unstored_bytes >= STORE_BYTES {
            self.store(seg);
        }
    }

    /// Stores the item and byte counts without reading the clock: call before
    /// publishing items, so that whoever sees them come out sees them counted (the
    /// ring's Release/Acquire pair carries these stores along).
    pub(crate) fn store_counts(&self, seg: &Segment) {
        seg.counters(self.record).store_counts(&self.totals);
    }

    /// Counts a wait that happened while busy (a pair hand-off, a stream): it comes
    /// out of the busy time.
    pub(crate) fn waited(&mut self, why: Waited, d: Duration) {
        self.waited_inside += d;
        self.add(why, d);
    }

    /// Ends the busy stretch (the runner is about to wait) and stores the totals.
    pub(crate) fn pause(&mut self, seg: &Segment) {
        self.store(seg);
    }

    /// Ends a wait that started at the last [`pause`](Self::pause).
    pub(crate) fn resume(&mut self, why: Waited) {
        let now = Instant::now();
        self.add(why, now.saturating_duration_since(self.since));
        self.since = now;
    }

    fn add(&mut self, why: Waited, d: Duration) {
        let ns = d.as_nanos() as u64;
        match why {
            Waited::Starved => self.totals.starved_ns += ns,
            Waited::Blocked => self.totals.blocked_ns += ns,
        }
    }

    /// Counts the busy time up to now and stores everything.
    fn store(&mut self, seg: &Segment) {
        let now = Instant::now();
        let busy = now.saturating_duration_since(self.since).saturating_sub(self.waited_inside);
        self.totals.busy_ns += busy.as_nanos() as u64;
        self.since = now;
        self.waited_inside = Duration::ZERO;
        self.unstored = 0;
        self.unstored_bytes = 0;
        seg.counters(self.record).store(&self.totals);
    }
}
