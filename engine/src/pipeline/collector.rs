//! The parent thread that takes finished items off the last ring, runs the
//! completion callbacks and resolves tickets, a batch per lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::EngineFailure;
use super::shared::{Shared, State};
use super::spec::{StageEvent, StageOutcome};
use crate::frame::{has_run, OwnedSlot, STATUS_FAILED};
use crate::memory::{SlotHeader, STATE_BROKEN, STATE_RUNNING};
use crate::ring::Consumer;
use crate::worker::runner::PARK_TIMEOUT;

const BATCH: usize = 256;

pub(crate) fn run(shared: Arc<Shared>, mut output: Consumer) {
    let mut batch: Vec<(OwnedSlot, SlotHeader)> = Vec::with_capacity(BATCH);
    let has_callbacks = shared.stages.iter().any(|s| s.on_complete.is_some());
    loop {
        while batch.len() < BATCH {
            let desc = match output.try_pop() {
                Ok(Some(desc)) => desc,
                Ok(None) => break,
                Err(e) => return shared.fail(EngineFailure::Corrupt(format!("output ring: {e}"))),
            };
            match OwnedSlot::from_descriptor(&shared.seg, desc) {
                Ok(slot) => {
                    let header = slot.header(&shared.seg);
                    batch.push((slot, header));
                }
                Err(bad) => {
                    return shared.fail(EngineFailure::Corrupt(format!("descriptor {} names no slot", bad.0)))
                }
            }
        }
        if !batch.is_empty() {
            if let Err(f) = resolve(&shared, &mut batch, has_callbacks) {
                return shared.fail(f);
            }
            continue;
        }
        let control = shared.seg.control();
        match control.state() {
            STATE_RUNNING => {}
            STATE_BROKEN => {
                return shared.fail(EngineFailure::Corrupt("a stage stopped the pipeline".into()))
            }
            _ if matches!(output.has_data(), Ok(false)) => return,
            _ => continue,
        }
        output.wait(|| control.state() != STATE_RUNNING, Some(PARK_TIMEOUT));
    }
}

fn resolve(
    shared: &Shared,
    batch: &mut Vec<(OwnedSlot, SlotHeader)>,
    has_callbacks: bool,
) -> Result<(), EngineFailure> {
    let capacity = shared.seg.layout().slot_capacity();
    let tickets = shared.book.lock().entries.len();
    for (slot, h) in batch.iter() {
        if h.len as usize > capacity || h.ticket as usize >= tickets {
            return Err(EngineFailure::Corrupt(format!(
                "frame in slot {} has length {} (capacity {capacity}) and ticket {} (of {tickets})",
                slot.index(),
                h.len,
                h.ticket
            )));
        }
        if has_callbacks {
            run_callbacks(shared, slot, h);
        }
    }
    let mut book = shared.book.lock();
    let mut freed = false;
    for (slot, header) in batch.drain(..) {
        let ticket = header.ticket;
        let entry = &mut book.entries[ticket as usize];
        if entry.generation != header.generation {
            return Err(EngineFailure::Corrupt(format!("stale or forged ticket {ticket}")));
        }
        match std::mem::replace(&mut entry.state, State::Free) {
            State::Pending { waker, detached } => {
                entry.state = State::Done { slot, header };
                book.in_flight -= 1;
                if detached {
                    book.finished.push_back(ticket);
                }
                if let Some(w) = waker {
                    w.wake();
                }
            }
            State::Abandoned => {
                book.in_flight -= 1;
                book.release(slot, ticket);
                freed = true;
            }
            other => {
                entry.state = other;
                if book.failure.is_none() {
                    return Err(EngineFailure::Corrupt(format!("ticket {ticket} came out twice")));
                }
            }
        }
    }
    drop(book);
    // Release pairs with the Acquire in `wait_for`'s spin.
    shared.finished_batches.fetch_add(1, Ordering::Release);
    shared.done.notify_all();
    if freed {
        shared.space.notify_all();
    }
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
        // A panicking callback must not take the collector (and every ticket) down.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(&event)));
    }
}
