//! What a runner writes to its journal in the segment, so that a replacement (and
//! the parent settling its death, `pipeline/restart.rs`) knows what it held, where
//! each item came from and went, and what it pushed but had not published.
//! Thread runners keep no journal: a thread cannot die alone.

use super::StageRunner;
use crate::frame::OwnedSlot;
use crate::sync::Ordering;

/// A journaling runner's record index and ring numbering.
#[derive(Clone, Copy)]
pub(super) struct Wiring {
    pub record: usize,
    pub input_ring: u32,
    pub input_stride: u32,
    pub output_ring: u32,
    /// It reorders its input (its gather marks the slots it holds).
    pub ordered: bool,
}

impl StageRunner {
    /// An ordered gather marks the slots it holds off its rings with our record.
    pub(super) fn journal_gather(&mut self) {
        if let Some(w) = self.journal.filter(|w| w.ordered) {
            self.input.journal_to(&self.seg, w.record);
        }
    }

    /// Took `slot` from its input place (and, ordered, stops marking it held).
    pub(super) fn journal_took(&self, slot: &OwnedSlot) {
        let Some(w) = self.journal else { return };
        let (k, at) = self.input.last_taken();
        let ring = (w.input_ring + k as u32 * w.input_stride) as usize;
        self.seg.journal(w.record).took(slot.index(), self.spare.index(), ring, at);
        if w.ordered {
            // Release: journaled as taken before it stops being marked held.
            self.seg.holder(slot.index() as usize).store(0, Ordering::Release);
        }
    }

    /// About to push `slot` on (the frame may be the spare it swapped in).
    pub(super) fn journal_holds(&self, slot: &OwnedSlot) {
        if let Some(w) = self.journal {
            self.seg.journal(w.record).holds(slot.index(), self.spare.index());
        }
    }

    /// Pushed it to output ring `k` at position `at`, not yet published.
    pub(super) fn journal_pushed(&self, k: usize, at: u64) {
        if let Some(w) = self.journal {
            self.seg.journal(w.record).pushed(k, (w.output_ring + k as u32) as usize, at);
        }
    }

    /// Published everything pushed: nothing in hand.
    pub(super) fn journal_done(&self) {
        if let Some(w) = self.journal {
            self.seg.journal(w.record).done(self.spare.index());
        }
    }
}
