//! Whoever waits collects: taking finished items off the last ring (validate each
//! descriptor and header, run the completion callbacks, resolve tickets, one book
//! lock per batch), and the waiting protocol around it.
//!
//! Any thread that waits for results collects ([`Shared::wait_until`]); the async
//! driver thread ([`drive_async`]) does it only while futures are waiting and no
//! caller is. `shared.rs` holds the state; this file is the only one that drains
//! the last ring.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::error::EngineFailure;
use super::shared::{Book, Collector, Forged, Shared};
use super::spec::{StageEvent, StageOutcome};
use crate::frame::{has_run, OwnedSlot, STATUS_FAILED};
use crate::memory::{SlotHeader, STATE_BROKEN, STATE_RUNNING};
use crate::worker::runner::PARK_TIMEOUT;

/// Drains what is in the output ring now; returns how many items it resolved.
/// A corrupt descriptor or header breaks the pipeline (typed failure, no panic).
pub(crate) fn drain(shared: &Shared, collector: &mut Collector) -> usize {
    let mut total = 0;
    let Collector { ring: output, batch } = collector;
    loop {
        while batch.len() < Collector::BATCH {
            let desc = match output.try_pop(&shared.seg) {
                Ok(Some(desc)) => desc,
                Ok(None) => break,
                Err(e) => {
                    shared.fail(EngineFailure::Corrupt(format!("output ring: {e}")));
                    return total;
                }
            };
            match OwnedSlot::from_descriptor(&shared.seg, desc) {
                Ok(slot) => {
                    let header = slot.header(&shared.seg);
                    batch.push((slot, header));
                }
                Err(bad) => {
                    shared.fail(EngineFailure::Corrupt(format!("descriptor {} names no slot", bad.0)));
                    return total;
                }
            }
        }
        if batch.is_empty() {
            return total;
        }
        total += batch.len();
        if let Err(f) = resolve(shared, batch) {
            shared.fail(f);
            return total;
        }
    }
}

fn resolve(shared: &Shared, batch: &mut Vec<(OwnedSlot, SlotHeader)>) -> Result<(), EngineFailure> {
    let capacity = shared.seg.layout().slot_capacity();
    let tickets = shared.tickets;
    for (slot, h) in batch.iter() {
        if h.len as usize > capacity || h.ticket as usize >= tickets {
            return Err(EngineFailure::Corrupt(format!(
                "frame in slot {} has length {} (capacity {capacity}) and ticket {} (of {tickets})",
                slot.index(),
                h.len,
                h.ticket
            )));
        }
        if shared.has_callbacks {
            run_callbacks(shared, slot, h);
        }
    }
    let mut book = shared.book.lock();
    for (slot, header) in batch.drain(..) {
        book.finish(slot, header).map_err(|Forged(why)| EngineFailure::Corrupt(why))?;
    }
    drop(book);
    shared.done.notify_all();
    Ok(())
}

fn run_callbacks(shared: &Shared, slot: &OwnedSlot, h: &SlotHeader) {
    let bytes = &slot.payload(&shared.seg)[..h.len as usize];
    let failure = (h.status == STATUS_FAILED).then(|| slot.failure(&shared.seg));
    let failed = failure.map(|f| f.failed_stage as usize);
    let message = failure.map(|f| slot.error_text(&shared.seg, f.error_len));
    for (i, stage) in shared.stages.iter().enumerate() {
        let Some(cb) = &stage.on_complete else { continue };
        let outcome = match failed {
            Some(f) if f == i => StageOutcome::Failed(message.as_deref().unwrap_or("")),
            Some(f) if i > f => StageOutcome::NotReached,
            _ if has_run(h, i) => StageOutcome::Ran,
            _ => StageOutcome::Skipped,
        };
        let event = StageEvent { stage: i, name: &stage.name, outcome, bytes };
        // A panicking callback must not take the collecting thread down.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&event)));
    }
}

/// The async driver: sleeps until a future registers a waker, then collects until
/// none is left. Blocking callers never need it.
pub(crate) fn drive_async(shared: Arc<Shared>) {
    loop {
        {
            let mut book = shared.book.lock();
            while book.async_waiters() == 0 && !shared.stopping.load(Ordering::Acquire) {
                shared.async_waiting.wait(&mut book);
            }
        }
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        shared.wait_until(None, |book| {
            (book.async_waiters() == 0 || book.failure.is_some() || shared.stopping.load(Ordering::Acquire))
                .then_some(())
        });
    }
}

impl Shared {
    /// Collects finished items now, without blocking, unless another thread is.
    pub fn collect_now(&self) {
        if let Some(mut out) = self.output.try_lock() {
            drain(self, &mut out);
        }
    }

    /// Blocks until `check` finds what it waits for in the book (`Some`), or until
    /// `deadline` (`None`).
    ///
    /// The waiting thread does the collecting itself: if nobody else holds the output
    /// ring, it takes it, drains finished items into the book (running callbacks),
    /// and parks on the ring's futex when it is empty, so a result reaches its waiter
    /// with no thread in between. Other waiters sleep on `done` and take over the
    /// ring when its holder leaves.
    pub fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut Book) -> Option<T>,
    ) -> Option<T> {
        loop {
            let in_flight = {
                let mut book = self.book.lock();
                if let Some(t) = check(&mut book) {
                    return Some(t);
                }
                book.in_flight
            };
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return None,
                },
                None => None,
            };
            let park = left.map_or(PARK_TIMEOUT, |l| l.min(PARK_TIMEOUT));
            // With nothing in flight, only another thread (releasing a frame,
            // submitting) can change the book: sleep on `done` instead of the ring.
            let collecting = if in_flight > 0 { self.output.try_lock() } else { None };
            if let Some(mut out) = collecting {
                let drained = drain(self, &mut out);
                if drained == 0 && self.book.lock().failure.is_none() {
                    let control = self.seg.control();
                    if control.state() == STATE_BROKEN {
                        self.fail(EngineFailure::Corrupt("a stage stopped the pipeline".into()));
                    } else if control.state() == STATE_RUNNING {
                        out.ring.wait(&self.seg, || control.state() != STATE_RUNNING, Some(park));
                    } else if !matches!(out.ring.ready(&self.seg), Ok(true)) {
                        // Shut down and drained: nothing more will come.
                        drop(out);
                        return check(&mut self.book.lock());
                    }
                }
                drop(out);
                // Hand the ring over: a waiter that saw it taken may be asleep on `done`.
                let _book = self.book.lock();
                self.done.notify_all();
            } else {
                let mut book = self.book.lock();
                if let Some(t) = check(&mut book) {
                    return Some(t);
                }
                // Re-checked under the book lock: a holder that leaves takes the book
                // lock before notifying, so this wait cannot miss its hand-over.
                if book.in_flight == 0 || self.output.is_locked() {
                    let _ = self.done.wait_for(&mut book, park);
                }
            }
        }
    }
}
