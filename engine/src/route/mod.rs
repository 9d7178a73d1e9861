//! Fan-out and fan-in around replicated stages.
//!
//! Every ring stays single-producer single-consumer: a stage with `n` replicas gets
//! `n` input rings, one per replica, from each runner before it, and each replica
//! writes one ring per runner after it. A [`Scatter`] is a runner's set of output
//! rings: each item goes to the least loaded. A [`Gather`] is a runner's set of input
//! rings: it takes whatever is ready, or, behind an ordered replicated stage, puts
//! items back in submission order by their [`SlotHeader::seq`]. A gathering runner
//! parks on one doorbell (its first input ring's wake word), which every producer
//! writing to it notifies.
//!
//! "Least loaded" counts what a replica has queued *and* the item it is working on:
//! a replica takes an item off its ring without giving its place back
//! ([`Consumer::try_take`]) until it has handed the item on
//! ([`FLAG_HOLD_INPUT`](crate::memory::FLAG_HOLD_INPUT)), so a replica stuck on a slow
//! item looks busy and new items go to the others.
//!
//! ```text
//!            ┌─ ring ─▶ replica 0 ─ ring ─┐
//!  stage A ──┤                            ├──▶ stage C (Gather, reorders)
//! (Scatter)  └─ ring ─▶ replica 1 ─ ring ─┘
//! ```
//!
//! [`SlotHeader::seq`]: crate::memory::SlotHeader::seq

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::frame::OwnedSlot;
use crate::memory::Segment;
use crate::pair::PAIRED;
use crate::ring::{Consumer, Corrupt, Doorbell, Producer, PushError};
use crate::sync::Ordering;
use crate::wait::Wake;

/// A runner's output rings; see the module docs.
pub(crate) struct Scatter {
    rings: Vec<Producer>,
    /// Where the search for the least loaded ring starts, so ties rotate.
    cursor: usize,
    /// Each ring's consumer position as last read, and whether a publish has made
    /// them worth reading again. Reading a consumer's position is a cache miss on a
    /// line another core writes; between two publishes (one batch) the pushes are
    /// counted locally against this snapshot instead.
    heads: Vec<u64>,
    stale: bool,
}

impl Scatter {
    /// # Panics
    /// If `rings` is empty.
    pub(crate) fn new(rings: Vec<Producer>) -> Self {
        assert!(!rings.is_empty(), "a runner writes at least one ring");
        let heads = vec![0; rings.len()];
        Self { rings, cursor: 0, heads, stale: true }
    }

    /// Pushes `desc` (unpublished) to the ring with the smallest backlog; returns
    /// which ring (its index in this set) and the position it took there.
    #[inline]
    pub(crate) fn push(&mut self, desc: u64) -> Result<(usize, u64), PushError> {
        let i = if self.rings.len() == 1 { 0 } else { self.least_loaded() };
        let at = self.rings[i].position();
        self.rings[i].try_push(desc)?;
        Ok((i, at))
    }

    /// The ring with the smallest backlog: pushed (by us, counted locally) and not
    /// yet released by its consumer (as of the last snapshot, taken once per batch).
    fn least_loaded(&mut self) -> usize {
        let n = self.rings.len();
        if self.stale {
            for (head, ring) in self.heads.iter_mut().zip(&self.rings) {
                *head = ring.consumer_position();
            }
            self.stale = false;
        }
        let (mut best, mut least) = (self.cursor, u64::MAX);
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let backlog = self.rings[i].position().saturating_sub(self.heads[i]);
            if backlog < least {
                (best, least) = (i, backlog);
                if backlog == 0 {
                    break;
                }
            }
        }
        self.cursor = (best + 1) % n;
        best
    }

    /// Publishes every ring that has unpublished items.
    #[inline]
    pub(crate) fn publish(&mut self) {
        if let [only] = self.rings.as_mut_slice() {
            only.publish();
            return;
        }
        self.stale = true;
        for ring in &mut self.rings {
            if ring.unpublished() > 0 {
                ring.publish();
            }
        }
    }
}

/// Why a gather could not go on: the shared memory holds something impossible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GatherError {
    /// An input ring's positions are inconsistent.
    Ring(Corrupt),
    /// A descriptor names no slot.
    Descriptor(u64),
    /// An item's sequence number was already passed on (a duplicate or a forgery).
    Sequence { seq: u64, next: u64 },
}

impl std::fmt::Display for GatherError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ring(c) => c.fmt(f),
            Self::Descriptor(d) => write!(f, "ring descriptor {d} names no slot"),
            Self::Sequence { seq, next } => {
                write!(
                    f,
                    "item with sequence number {seq} arrived after {next} was due (duplicate or forged)"
                )
            }
        }
    }
}

impl From<Corrupt> for GatherError {
    fn from(c: Corrupt) -> Self {
        Self::Ring(c)
    }
}

/// A runner's input rings; see the module docs.
pub(crate) struct Gather {
    rings: Vec<Consumer>,
    doorbell: Doorbell,
    /// Unordered: the ring to try first, so no ring starves.
    cursor: usize,
    order: Option<Reorder>,
    /// Keep taken items' places until [`release`](Self::release).
    hold: bool,
    /// Unordered: the ring (index in this set) and position of the last item taken.
    last: (usize, u64),
}

/// Items taken off the rings ahead of their turn.
struct Reorder {
    next: u64,
    early: BinaryHeap<Reverse<(u64, u64)>>,
    /// A worker's runner: its stage record, whose journal keeps `next` and whose
    /// mark goes on the holder word of each slot in `early` (so that after the
    /// worker's death the parent and the replacement know what it held).
    record: Option<usize>,
}

impl Gather {
    /// Takes items as they come from `rings`, or in `seq` order if `ordered`. With
    /// `hold` (unordered only), a taken item's ring counts it as queued until
    /// [`release`](Self::release), so the writer's least-loaded choice sees the item
    /// being worked on.
    ///
    /// # Panics
    /// If `rings` is empty.
    pub(crate) fn new(rings: Vec<Consumer>, ordered: bool, hold: bool) -> Self {
        let doorbell = rings.first().expect("a runner reads at least one ring").doorbell();
        let order = ordered.then(|| Reorder { next: 0, early: BinaryHeap::new(), record: None });
        Self { rings, doorbell, cursor: 0, order, hold: hold && !ordered, last: (0, 0) }
    }

    /// Ordered, in a worker: keeps what the gather holds where the parent finds it
    /// after the worker's death (stage record `record`'s journal and the slots'
    /// holder words), and resumes from what a dead predecessor held: the sequence
    /// number its journal names and the slots marked as held by it.
    pub(crate) fn journal_to(&mut self, seg: &Segment, record: usize) {
        if let Some(order) = &mut self.order {
            order.record = Some(record);
            order.next = seg.journal(record).next_seq();
            let mark = record as u32 + 1;
            for i in 0..seg.layout().slot_count() {
                // Acquire pairs with the parent's Release stores as it settled the death
                // (and the dead runner's own, which the parent read before).
                if seg.holder(i).load(Ordering::Acquire) == mark {
                    // SAFETY: the slot carries this record's mark: its dead predecessor
                    // held it off its rings, and this runner, its replacement, is the
                    // only one that takes it over (the parent only reads the marks).
                    let slot = unsafe { OwnedSlot::assigned(seg, i as u32) }.expect("i < slot count");
                    let seq = slot.header(seg).seq;
                    order.early.push(Reverse((seq, slot.into_descriptor())));
                }
            }
        }
    }

    /// Takes the next item, if one is ready.
    #[inline]
    pub(crate) fn try_pop(&mut self, seg: &Segment) -> Result<Option<u64>, GatherError> {
        if self.order.is_some() {
            return self.pop_in_order(seg);
        }
        let n = self.rings.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let at = self.rings[i].position();
            if let Some(desc) = self.rings[i].try_take()? {
                self.last = (i, at);
                if !self.hold {
                    self.rings[i].release();
                }
                self.cursor = (i + 1) % n;
                return Ok(Some(desc));
            }
        }
        Ok(None)
    }

    /// Unordered: the ring (index in this set) and position of the last item taken.
    /// Ordered: 0 and the last item's sequence number.
    pub(crate) fn last_taken(&self) -> (usize, u64) {
        self.last
    }

    /// Gives the rings back the places of the items taken so far: call once they are
    /// handed on.
    #[inline]
    pub(crate) fn release(&mut self) {
        for ring in &mut self.rings {
            ring.release();
        }
    }

    fn pop_in_order(&mut self, seg: &Segment) -> Result<Option<u64>, GatherError> {
        if !self.due() {
            self.take_arrived(seg)?;
        }
        let order = self.order.as_mut().expect("ordered gather");
        match order.early.peek() {
            Some(&Reverse((seq, desc))) if seq == order.next => {
                order.early.pop();
                order.next += 1;
                if let Some(record) = order.record {
                    // Before the runner journals the item as taken (see `Journal`).
                    seg.journal(record).set_next_seq(order.next);
                }
                self.last = (0, seq);
                Ok(Some(desc))
            }
            Some(&Reverse((seq, _))) if seq < order.next => {
                Err(GatherError::Sequence { seq, next: order.next })
            }
            _ => Ok(None),
        }
    }

    /// Ordered: true if the item whose turn it is was already taken off its ring (or
    /// a duplicate of an earlier one, which `pop_in_order` reports).
    fn due(&self) -> bool {
        self.order.as_ref().is_some_and(|o| o.early.peek().is_some_and(|Reverse((seq, _))| *seq <= o.next))
    }

    /// Ordered: moves everything published on the rings into the heap.
    fn take_arrived(&mut self, seg: &Segment) -> Result<(), GatherError> {
        let order = self.order.as_mut().expect("ordered gather");
        for ring in &mut self.rings {
            while let Some(desc) = ring.try_take()? {
                let (slot, seq) = seq_of(seg, desc)?;
                if seq < order.next {
                    return Err(GatherError::Sequence { seq, next: order.next });
                }
                if let Some(record) = order.record {
                    // Release: marked held before its place goes back, so at every
                    // moment the item is on its ring or marked (or both: the parent
                    // steps past a ring place whose slot is marked).
                    seg.holder(slot as usize).store(record as u32 + 1, Ordering::Release);
                }
                ring.release();
                order.early.push(Reverse((seq, desc)));
            }
        }
        Ok(())
    }

    /// True if [`try_pop`](Self::try_pop) would return an item.
    pub(crate) fn ready(&mut self, seg: &Segment) -> Result<bool, GatherError> {
        if self.order.is_some() {
            if !self.due() {
                self.take_arrived(seg)?;
            }
            return Ok(self.due());
        }
        for ring in &mut self.rings {
            if ring.has_data()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Items taken off the rings and waiting for their turn.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.order.as_ref().map_or(0, |o| o.early.len())
    }

    /// Waits until an item is ready or `stop()`, spinning then parking on the
    /// doorbell; `TimedOut` after `timeout`.
    pub(crate) fn wait(
        &mut self,
        seg: &Segment,
        mut stop: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Wake {
        if self.rings.len() == 1 && self.order.is_none() {
            return self.rings[0].wait(stop, timeout);
        }
        let doorbell = self.doorbell.clone();
        doorbell.wait(|| !matches!(self.ready(seg), Ok(false)) || stop(), timeout)
    }
}

/// The slot and sequence number of the item a popped descriptor names.
fn seq_of(seg: &Segment, desc: u64) -> Result<(u32, u64), GatherError> {
    // Popping the descriptor made us the slot's owner; we give it straight back.
    let slot =
        OwnedSlot::from_descriptor(seg, desc & !PAIRED).map_err(|bad| GatherError::Descriptor(bad.0))?;
    let (index, seq) = (slot.index(), slot.header(seg).seq);
    let _ = slot.into_descriptor();
    Ok((index, seq))
}

#[cfg(test)]
mod tests;
