//! Taking finished items off the last ring: validate each descriptor and header,
//! run the completion callbacks, and resolve tickets, one book lock per batch.
//!
//! Any thread that waits for results collects ([`Shared::wait_until`]); the async
//! driver thread ([`drive_async`]) does it only while futures are waiting and no
//! caller is.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::EngineFailure;
use super::shared::{Forged, Shared};
use super::spec::{StageEvent, StageOutcome};
use crate::frame::{has_run, OwnedSlot, STATUS_FAILED};
use crate::memory::SlotHeader;
use crate::route::Gather;

const BATCH: usize = 256;

/// The parent's end of the last stage's rings (one per replica), with the buffer it
/// drains into (kept, so that draining allocates nothing).
pub(crate) struct Collector {
    pub ring: Gather,
    batch: Vec<(OwnedSlot, SlotHeader)>,
}

impl Collector {
    pub(crate) fn new(ring: Gather) -> Self {
        Self { ring, batch: Vec::with_capacity(BATCH) }
    }
}

/// Drains what is in the output ring now; returns how many items it resolved.
/// A corrupt descriptor or header breaks the pipeline (typed failure, no panic).
pub(crate) fn drain(shared: &Shared, collector: &mut Collector) -> usize {
    let mut total = 0;
    let Collector { ring: output, batch } = collector;
    loop {
        while batch.len() < BATCH {
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
    let failed = (h.status == STATUS_FAILED).then_some(h.failed_stage as usize);
    let message = failed.map(|_| slot.error_text(&shared.seg, h.error_len));
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
            while book.wakers == 0 && !shared.stopping.load(Ordering::Acquire) {
                shared.async_waiting.wait(&mut book);
            }
        }
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        shared.wait_until(None, |book| {
            (book.wakers == 0 || book.failure.is_some() || shared.stopping.load(Ordering::Acquire))
                .then_some(())
        });
    }
}
