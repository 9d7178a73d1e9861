//! What each runner has done so far: items, bytes, and where its time went.
//!
//! One block per stage record, on its own cache lines, written only by that record's
//! runner (in whichever process runs it now) and read by the parent whenever it is
//! asked for statistics. The runner adds up locally and stores its running totals
//! here every few items ([`Meter`](crate::worker::meter::Meter)), so the block costs
//! the fast path one store per word per batch, never a read-modify-write.
//!
//! Every access is `Relaxed`: the numbers order nothing else. A reader may see one
//! word of a batch's update before another (say the items before the bytes), which a
//! statistic tolerates; each word on its own only grows. The runner stores its counts
//! before it publishes the items they count, so the ring's Release store of its tail,
//! paired with the reader's Acquire load, carries the counts to whoever sees the items
//! come out, however many stages later.

use crate::sync::{AtomicU64, Ordering};

/// One runner's totals in shared memory; all-zero bytes are a fresh block.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub(crate) struct Counters {
    items: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    busy_ns: AtomicU64,
    starved_ns: AtomicU64,
    blocked_ns: AtomicU64,
}

/// A snapshot of [`Counters`], or a runner's private running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub items: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub busy_ns: u64,
    pub starved_ns: u64,
    pub blocked_ns: u64,
}

impl Counters {
    fn words(&self) -> [&AtomicU64; 6] {
        [&self.items, &self.bytes_in, &self.bytes_out, &self.busy_ns, &self.starved_ns, &self.blocked_ns]
    }

    /// The totals as last stored (a replacement runner continues from them).
    pub(crate) fn load(&self) -> Tally {
        let [items, bytes_in, bytes_out, busy_ns, starved_ns, blocked_ns] =
            self.words().map(|w| w.load(Ordering::Relaxed));
        Tally { items, bytes_in, bytes_out, busy_ns, starved_ns, blocked_ns }
    }

    /// Runner only: publishes its running totals.
    pub(crate) fn store(&self, t: &Tally) {
        self.store_counts(t);
        self.busy_ns.store(t.busy_ns, Ordering::Relaxed);
        self.starved_ns.store(t.starved_ns, Ordering::Relaxed);
        self.blocked_ns.store(t.blocked_ns, Ordering::Relaxed);
    }

    /// Runner only: publishes its item and byte counts, not its times.
    pub(crate) fn store_counts(&self, t: &Tally) {
        self.items.store(t.items, Ordering::Relaxed);
        self.bytes_in.store(t.bytes_in, Ordering::Relaxed);
        self.bytes_out.store(t.bytes_out, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn stored_totals_load_back_and_a_fresh_block_is_zero() {
        let c = Counters::default();
        assert_eq!(c.load(), Tally::default());
        let t = Tally { items: 1, bytes_in: 2, bytes_out: 3, busy_ns: 4, starved_ns: 5, blocked_ns: 6 };
        c.store(&t);
        assert_eq!(c.load(), t);
        assert_eq!(std::mem::size_of::<Counters>(), 128, "one block per two cache lines");
    }
}
