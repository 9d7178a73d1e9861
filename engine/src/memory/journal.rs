//! What a runner holds, written as it goes, so that the parent can tell after the
//! runner's process died which item it held and where that item's place was.
//!
//! A runner writes only its own journal and the parent reads it only once the runner's
//! process is gone (its status pipe hung up), so there is no race to model: the one
//! question is which of the runner's stores became visible before it died. Every store
//! is `Release` and the word that names the item is written last when an item is taken
//! and first cleared, so a journal that names an item also shows where it came from.
//!
//! A runner publishes its output in batches, so at its death some pushed items may
//! still be private to it. The journal keeps each output ring's private tail
//! ([`staged`](Journal::staged)), written after the descriptor itself, so the parent
//! can publish what was pushed and nothing else.

use super::layout::MAX_REPLICAS;
use crate::sync::{AtomicU64, Ordering};

/// One runner's journal; all-zero bytes say "holds nothing, spare as in its record".
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct Journal {
    /// `(item slot + 1) << 32 | (spare slot + 1)`; 0 in a half: none / the record's.
    owned: AtomicU64,
    /// Input ring the item was taken from, and its position there.
    taken_ring: AtomicU64,
    taken_at: AtomicU64,
    /// Output ring the item was pushed to, and its position + 1 (0: not pushed yet).
    pushed_ring: AtomicU64,
    pushed_at: AtomicU64,
    /// Per output ring (index in the runner's set): the position after the last
    /// descriptor written there, published or not (0: nothing written since the start).
    staged: [AtomicU64; MAX_REPLICAS],
    /// A reordering runner: the sequence number due next, stored before the item
    /// before it is journaled as taken. Set by the parent for a replacement.
    next_seq: AtomicU64,
}

/// A dead runner's journal, read once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// The slot of the item it was working on, if any.
    pub item: Option<u32>,
    /// Its spare, if it recorded one (else the one in its record).
    pub spare: Option<u32>,
    /// Input ring and position of that item.
    pub taken: (u64, u64),
    /// Output ring and position it was pushed to, if it got that far.
    pub pushed: Option<(u64, u64)>,
}

impl Default for Journal {
    fn default() -> Self {
        let zero = || AtomicU64::new(0);
        Self {
            owned: zero(),
            taken_ring: zero(),
            taken_at: zero(),
            pushed_ring: zero(),
            pushed_at: zero(),
            staged: std::array::from_fn(|_| zero()),
            next_seq: zero(),
        }
    }
}

fn pack(item: Option<u32>, spare: u32) -> u64 {
    (item.map_or(0, |i| u64::from(i) + 1) << 32) | (u64::from(spare) + 1)
}

impl Journal {
    /// The runner took the item in slot `item` from position `at` of ring `ring`.
    pub(crate) fn took(&self, item: u32, spare: u32, ring: usize, at: u64) {
        // Release on each store: a later store never shows without the earlier ones.
        // The previous item is let go first: a runner that batches its publishes still
        // names it here, and a journal naming it with this item's places would make
        // the parent fail an item that went on and step past one still queued.
        self.owned.store(pack(None, spare), Ordering::Release);
        self.pushed_at.store(0, Ordering::Release);
        self.taken_ring.store(ring as u64, Ordering::Release);
        self.taken_at.store(at, Ordering::Release);
        self.owned.store(pack(Some(item), spare), Ordering::Release);
    }

    /// A reordering runner: items before `seq` went on (or are about to be taken).
    pub(crate) fn set_next_seq(&self, seq: u64) {
        // Release: see `took`.
        self.next_seq.store(seq, Ordering::Release);
    }

    /// The sequence number due next: for the parent after the runner's death, and for
    /// its replacement as it starts.
    pub(crate) fn next_seq(&self) -> u64 {
        // Acquire pairs with the Release store in `set_next_seq`.
        self.next_seq.load(Ordering::Acquire)
    }

    /// The item now lives in `item` and the spare is `spare` (the stage replaced the frame).
    pub(crate) fn holds(&self, item: u32, spare: u32) {
        self.owned.store(pack(Some(item), spare), Ordering::Release);
    }

    /// The item was pushed to position `at` of ring `ring`, output `k` of the runner's
    /// set (not yet published). Call after the descriptor is written.
    pub(crate) fn pushed(&self, k: usize, ring: usize, at: u64) {
        // Release: the descriptor written before shows first, then where the item went,
        // then the staged tail that makes the parent publish it. In any other order a
        // death in between could publish the item *and* fail it again.
        self.pushed_ring.store(ring as u64, Ordering::Release);
        self.pushed_at.store(at + 1, Ordering::Release);
        self.staged[k].store(at + 1, Ordering::Release);
    }

    /// Parent, after the runner's process died: output `k`'s private tail, if the runner
    /// wrote anything there (everything before it is a written descriptor).
    pub(crate) fn staged(&self, k: usize) -> Option<u64> {
        // Acquire pairs with the Release store in `pushed`.
        let tail = self.staged.get(k)?.load(Ordering::Acquire);
        (tail != 0).then_some(tail)
    }

    /// The item was published and its input place given back: nothing is held.
    pub(crate) fn done(&self, spare: u32) {
        self.owned.store(pack(None, spare), Ordering::Release);
    }

    /// Parent, while the runner lives: where the item it is working on (taken, not yet
    /// pushed) came from, a key that changes with every item. A racy snapshot, good
    /// for one thing: noticing that a runner stays on one item for too long.
    pub(crate) fn working_on(&self) -> Option<(u64, u64)> {
        // Acquire pairs with the runner's Release stores; a torn snapshot only gives a
        // key that the next look replaces.
        let owned = self.owned.load(Ordering::Acquire);
        if owned >> 32 == 0 || self.pushed_at.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some((self.taken_ring.load(Ordering::Acquire), self.taken_at.load(Ordering::Acquire)))
    }

    /// Parent, after the runner's process died: what the journal says.
    pub(crate) fn recover(&self) -> Recovered {
        // Acquire pairs with the runner's Release stores.
        let owned = self.owned.load(Ordering::Acquire);
        let half = |v: u64| (v != 0).then(|| (v - 1) as u32);
        let pushed_at = self.pushed_at.load(Ordering::Acquire);
        Recovered {
            item: half(owned >> 32),
            spare: half(owned & u64::from(u32::MAX)),
            taken: (self.taken_ring.load(Ordering::Acquire), self.taken_at.load(Ordering::Acquire)),
            pushed: (pushed_at != 0).then(|| (self.pushed_ring.load(Ordering::Acquire), pushed_at - 1)),
        }
    }

    /// Parent, before starting a replacement: back to all-zero, but for the sequence
    /// number the replacement resumes at.
    pub(crate) fn reset(&self, next_seq: u64) {
        self.next_seq.store(next_seq, Ordering::Release);
        let words = [&self.owned, &self.taken_ring, &self.taken_at, &self.pushed_ring, &self.pushed_at];
        for word in words.into_iter().chain(&self.staged) {
            word.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_tells_what_was_held_at_each_step() {
        let j = Journal::default();
        assert_eq!(j.recover(), Recovered { item: None, spare: None, taken: (0, 0), pushed: None });
        assert_eq!(j.working_on(), None);
        j.took(7, 2, 3, 40);
        assert_eq!(j.recover(), Recovered { item: Some(7), spare: Some(2), taken: (3, 40), pushed: None });
        assert_eq!(j.working_on(), Some((3, 40)));
        j.holds(2, 7);
        assert_eq!(j.staged(1), None);
        j.pushed(1, 4, 11);
        assert_eq!(j.staged(1), Some(12));
        assert_eq!(j.working_on(), None, "pushed: no longer working on it");
        assert_eq!(j.staged(MAX_REPLICAS), None, "no such output");
        assert_eq!(
            j.recover(),
            Recovered { item: Some(2), spare: Some(7), taken: (3, 40), pushed: Some((4, 11)) }
        );
        j.done(7);
        assert_eq!(j.recover().item, None);
        assert_eq!(j.recover().spare, Some(7));
        j.took(0, 7, 3, 41);
        assert_eq!(j.recover().pushed, None, "a new item starts unpushed");
        j.set_next_seq(9);
        assert_eq!(j.next_seq(), 9);
        j.reset(5);
        assert_eq!(j.next_seq(), 5, "what the replacement resumes at");
        assert_eq!(j.recover(), Recovered { item: None, spare: None, taken: (0, 0), pushed: None });
        assert_eq!(j.staged(1), None);
    }
}
