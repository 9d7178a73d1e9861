//! State shared by the pipeline handle, its tickets and outputs, and its threads.
//!
//! One mutex guards the [`Book`]: which slots and tickets are free and what each
//! ticket's item is doing. Every path takes it once per batch, not once per byte; the
//! payload never passes through it. A ticket's state changes only in `Book`'s
//! methods, here:
//!
//! ```text
//! Free ─reserve─► Reserved ─launch─► Pending ─finish─► Done ─take─► Taken ─release─► Free
//!   ▲                │ release         │  │ abandon      │ abandon                    
//!   └────────────────┘                 │  └─► Abandoned ─finish (release)─► Free
//!                                      └─fail─► Failed ─take / abandon─► Free
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::error::{EngineFailure, SubmitError};
use super::spec::OnComplete;
use crate::frame::OwnedSlot;
use crate::memory::{Segment, SlotHeader, STATE_BROKEN};
use crate::pair::PairRef;
use crate::route::{Gather, Scatter};

/// The parent's end of the rings into the first stage (one per replica).
pub(crate) struct Submissions {
    pub rings: Scatter,
    /// The sequence number the next item gets.
    pub next_seq: u64,
}

/// The parent's end of the last stage's rings (one per replica), with the buffer
/// `collector.rs` drains it into (kept, so that draining allocates nothing).
pub(crate) struct Collector {
    pub ring: Gather,
    pub batch: Vec<(OwnedSlot, SlotHeader)>,
}

impl Collector {
    /// Most items drained under one lock of the book.
    pub const BATCH: usize = 256;

    pub fn new(ring: Gather) -> Self {
        Self { ring, batch: Vec::with_capacity(Self::BATCH) }
    }
}

/// What a ticket's item is doing (the transitions are `Book`'s methods).
#[derive(Debug)]
enum State {
    /// Not in use.
    Free,
    /// Handed out as a `NewFrame`, not yet submitted.
    Reserved,
    /// In the rings.
    Pending { waker: Option<Waker>, detached: bool },
    /// Out of the pipeline; the slot holds the result: `len` bytes (checked against
    /// the frame capacity when it came out), submitted as number `seq`, `failed` if a
    /// stage recorded a failure on it.
    Done { slot: OwnedSlot, len: u32, seq: u64, failed: bool },
    /// Out of the pipeline and handed to its owner as an `Output`.
    Taken,
    /// The engine failed it.
    Failed(Box<EngineFailure>),
    /// Its ticket was dropped while in flight: free it when it comes out.
    Abandoned,
}

#[derive(Debug)]
pub(crate) struct Entry {
    generation: u32,
    state: State,
}

impl Entry {
    pub fn free() -> Self {
        Self { generation: 0, state: State::Free }
    }
}

/// What taking a finished ticket's result found.
pub(crate) enum Taken {
    /// The item came out: its slot, length, submission number, and whether it failed.
    Done { slot: OwnedSlot, len: u32, seq: u64, failed: bool },
    /// The engine failed it.
    Failed(Box<EngineFailure>),
    /// Its result was taken before.
    Before,
}

/// A ticket's item came out of the last ring with a header that does not fit.
pub(crate) struct Forged(pub String);

#[derive(Debug)]
pub(crate) struct Book {
    pub free_slots: Vec<OwnedSlot>,
    pub free_tickets: Vec<u32>,
    pub entries: Vec<Entry>,
    /// Finished detached items, in completion order.
    pub finished: VecDeque<u32>,
    /// Items in the rings.
    pub in_flight: usize,
    /// Set once, when the pipeline breaks.
    pub failure: Option<EngineFailure>,
    /// Pending entries with a registered waker (futures being polled).
    pub wakers: usize,
    /// Futures waiting for a free frame (`alloc_async`), woken when one is released
    /// or submitting can no longer succeed.
    pub space_wakers: Vec<Waker>,
    /// The `Completions` stream waiting for a detached item.
    pub completion_waker: Option<Waker>,
}

impl Book {
    /// Takes a free slot and ticket, if any.
    #[inline]
    pub fn reserve(&mut self) -> Option<(OwnedSlot, u32, u32)> {
        let ticket = self.free_tickets.pop()?;
        let slot = self.free_slots.pop().expect("one free slot per free ticket");
        let entry = &mut self.entries[ticket as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.state = State::Reserved;
        Some((slot, ticket, entry.generation))
    }

    /// Returns a slot and its ticket to the free lists (callers notify `done`).
    #[inline]
    pub fn release(&mut self, slot: OwnedSlot, ticket: u32) {
        self.entries[ticket as usize].state = State::Free;
        self.free_tickets.push(ticket);
        self.free_slots.push(slot);
        self.wake_space();
    }

    /// Wakes every future waiting for a free frame (it re-checks).
    pub fn wake_space(&mut self) {
        for w in self.space_wakers.drain(..) {
            w.wake();
        }
    }

    /// Registers a future waiting for a free frame. True if the async driver should
    /// start collecting (it was idle).
    pub fn wait_for_space(&mut self, waker: &Waker) -> bool {
        let idle = self.async_waiters() == 0;
        if !self.space_wakers.iter().any(|w| w.will_wake(waker)) {
            self.space_wakers.push(waker.clone());
        }
        idle
    }

    /// Registers the `Completions` stream's waker. True if the async driver should
    /// start collecting.
    pub fn wait_for_completion(&mut self, waker: &Waker) -> bool {
        let idle = self.async_waiters() == 0;
        self.completion_waker = Some(waker.clone());
        idle
    }

    /// Futures and streams waiting on the pipeline: while there are any, the async
    /// driver thread collects results for them.
    pub fn async_waiters(&self) -> usize {
        self.wakers + self.space_wakers.len() + usize::from(self.completion_waker.is_some())
    }

    /// A reserved ticket's item enters the rings.
    #[inline]
    fn launch(&mut self, ticket: u32, detached: bool) {
        self.entries[ticket as usize].state = State::Pending { waker: None, detached };
        self.in_flight += 1;
    }

    /// An item came out of the last ring: its ticket is done (or, abandoned, freed).
    #[inline]
    pub fn finish(&mut self, slot: OwnedSlot, header: SlotHeader) -> Result<(), Forged> {
        let ticket = header.ticket;
        let entry = &mut self.entries[ticket as usize];
        if entry.generation != header.generation {
            return Err(Forged(format!("stale or forged ticket {ticket}")));
        }
        match std::mem::replace(&mut entry.state, State::Free) {
            State::Pending { waker, detached } => {
                let failed = header.status == crate::frame::STATUS_FAILED;
                entry.state = State::Done { slot, len: header.len, seq: header.seq, failed };
                self.in_flight -= 1;
                if detached {
                    self.finished.push_back(ticket);
                    if let Some(w) = self.completion_waker.take() {
                        w.wake();
                    }
                }
                if let Some(w) = waker {
                    self.wakers -= 1;
                    w.wake();
                }
            }
            State::Abandoned => {
                self.in_flight -= 1;
                self.release(slot, ticket);
            }
            other => {
                entry.state = other;
                if self.failure.is_none() {
                    return Err(Forged(format!("ticket {ticket} came out twice")));
                }
            }
        }
        Ok(())
    }

    /// Takes a finished ticket's result, or `None` while it is in flight.
    #[inline]
    pub fn take(&mut self, ticket: u32) -> Option<Taken> {
        let entry = &mut self.entries[ticket as usize];
        if matches!(entry.state, State::Pending { .. }) {
            return None; // polled often while waiting: leave the entry untouched
        }
        match std::mem::replace(&mut entry.state, State::Taken) {
            State::Done { slot, len, seq, failed } => Some(Taken::Done { slot, len, seq, failed }),
            State::Failed(f) => {
                entry.state = State::Free;
                self.free_tickets.push(ticket);
                Some(Taken::Failed(f))
            }
            other => {
                entry.state = other;
                Some(Taken::Before)
            }
        }
    }

    /// Its owner lets go of a ticket whose result it will not take: an item still in
    /// flight is freed when it comes out, a finished one now. True if a frame was
    /// freed (callers notify `done`).
    pub fn abandon(&mut self, ticket: u32) -> bool {
        let entry = &mut self.entries[ticket as usize];
        match std::mem::replace(&mut entry.state, State::Free) {
            State::Pending { waker, .. } => {
                entry.state = State::Abandoned;
                if waker.is_some() {
                    self.wakers -= 1;
                }
                false
            }
            State::Done { slot, .. } => {
                self.release(slot, ticket);
                true
            }
            State::Failed(_) => {
                self.free_tickets.push(ticket);
                false
            }
            other => {
                entry.state = other;
                false
            }
        }
    }

    /// True while the ticket's item is in the rings.
    pub fn is_pending(&self, ticket: u32) -> bool {
        matches!(self.entries[ticket as usize].state, State::Pending { .. })
    }

    /// Registers the waker of a future waiting for `ticket` (in flight). True if it is
    /// the ticket's first: the async driver should start collecting.
    pub fn register_waker(&mut self, ticket: u32, waker: &Waker) -> bool {
        let State::Pending { waker: slot, .. } = &mut self.entries[ticket as usize].state else {
            return false;
        };
        match slot {
            Some(w) if w.will_wake(waker) => false,
            Some(w) => {
                w.clone_from(waker);
                false
            }
            None => {
                *slot = Some(waker.clone());
                self.wakers += 1;
                true
            }
        }
    }

    /// Some detached submission is still in flight.
    pub fn has_detached_pending(&self) -> bool {
        self.entries.iter().any(|e| matches!(e.state, State::Pending { detached: true, .. }))
    }

    /// Every frame is held by results still alive and nothing is in flight: waiting
    /// for a free frame would wait forever.
    pub fn is_saturated(&self) -> bool {
        self.free_tickets.is_empty() && self.in_flight == 0
    }

    /// The pipeline broke: every item in flight fails with `failure` (a detached one
    /// comes out of `Completions` as that failure).
    fn fail_all(&mut self, failure: &EngineFailure) {
        for (ticket, entry) in self.entries.iter_mut().enumerate() {
            match std::mem::replace(&mut entry.state, State::Free) {
                State::Pending { waker, detached } => {
                    entry.state = State::Failed(Box::new(failure.clone()));
                    if detached {
                        self.finished.push_back(ticket as u32);
                    }
                    if let Some(w) = waker {
                        self.wakers -= 1;
                        w.wake();
                    }
                }
                State::Abandoned => entry.state = State::Free, // its slot is lost with the rings
                other => entry.state = other,
            }
        }
        self.in_flight = 0;
        self.wake_space();
        if let Some(w) = self.completion_waker.take() {
            w.wake();
        }
    }
}

pub(crate) struct StageInfo {
    pub name: String,
    pub on_complete: Option<OnComplete>,
    pub timeout: Option<std::time::Duration>,
    /// Its runners' stage records (one per replica, next to each other).
    pub records: std::ops::Range<usize>,
    pub on_thread: bool,
    /// Its workers' sandbox, if it has one.
    pub sandbox: Option<crate::Sandbox>,
}

pub(crate) struct Shared {
    pub seg: Arc<Segment>,
    /// Every producer/consumer pair, to abort their streams when the pipeline breaks.
    pub pairs: Vec<PairRef>,
    pub stages: Vec<StageInfo>,
    /// Some stage has an `on_complete` callback (fixed at build).
    pub has_callbacks: bool,
    /// Number of tickets (`max_in_flight`); fixed at build.
    pub tickets: usize,
    pub book: Mutex<Book>,
    /// Signalled whenever the book changes in a way a waiter may care about: items
    /// finished, frames released, submissions started, the pipeline broke, or the
    /// output ring changed hands.
    pub done: Condvar,
    /// The producer end of ring 0.
    pub input: Mutex<Submissions>,
    /// The consumer end of the last ring. Whoever waits for results takes it and
    /// drains it (see [`Shared::wait_until`]); no extra thread sits in the path.
    pub output: Mutex<Collector>,
    /// Signalled when futures start waiting, for the async driver thread.
    pub async_waiting: Condvar,
    /// No more submissions.
    pub closed: AtomicBool,
    /// Shutdown has begun: worker exits are expected.
    pub stopping: AtomicBool,
    /// Worker processes replaced after they died.
    pub restarts: std::sync::atomic::AtomicUsize,
    /// How each replaced worker ended, for the shutdown report.
    pub dead: Mutex<Vec<super::WorkerExit>>,
    /// When the pipeline was built.
    pub started: Instant,
    /// Nanoseconds submitters spent waiting for a free frame.
    pub submit_waited_ns: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Refuses submission if closed or broken.
    #[inline]
    pub fn check_open(&self, book: &Book) -> Result<(), SubmitError> {
        if let Some(f) = &book.failure {
            return Err(SubmitError::Broken(f.clone()));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(SubmitError::ShutDown);
        }
        Ok(())
    }

    /// Publishes reserved items: marks them pending, then pushes their descriptors
    /// into ring 0 in one batch. Headers must already be written.
    pub fn launch(&self, items: impl IntoIterator<Item = (OwnedSlot, u32, bool)>, book: &mut Book) {
        let was_idle = book.in_flight == 0;
        let mut input = self.input.lock();
        for (mut slot, ticket, detached) in items {
            book.launch(ticket, detached);
            slot.set_seq(&self.seg, input.next_seq);
            input.next_seq += 1;
            // The input rings hold every slot, so they cannot be full; if a worker
            // corrupted a position, the item is failed by the break below.
            if input.rings.push(slot.into_descriptor()).is_err() {
                self.fail_locked(book, EngineFailure::Corrupt("input ring position".into()));
            }
        }
        input.rings.publish();
        if was_idle {
            // A waiter may be asleep on `done` because nothing was in flight to collect.
            self.done.notify_all();
        }
    }

    /// Marks the pipeline broken: every pending item fails with `failure`, every
    /// waiter and every stage is woken. The first failure wins.
    pub fn fail(&self, failure: EngineFailure) {
        let mut book = self.book.lock();
        self.fail_locked(&mut book, failure);
    }

    pub fn fail_locked(&self, book: &mut Book, failure: EngineFailure) {
        if book.failure.is_none() {
            book.failure = Some(failure);
        }
        let failure = book.failure.clone().expect("set above");
        book.fail_all(&failure);
        self.seg.control().set_state(STATE_BROKEN);
        for pair in &self.pairs {
            pair.header().abort(); // no half may wait on a stream the other left
        }
        self.nudge_all();
        self.done.notify_all();
    }

    /// Wakes every ring's consumer so it re-reads the pipeline state.
    pub fn nudge_all(&self) {
        for i in 0..self.seg.layout().ring_count() {
            self.seg.ring_header(i).nudge_consumer();
        }
    }
}
