//! Taking over from a dead worker process: read its journal, put the item it held
//! (if any) back on its way as failed, give its frames to its replacement.
//!
//! Every process runner journals, so every one can be taken over, the stage that
//! reorders replicas' items included. The worker is dead and its replacement not started, so the parent briefly
//! plays both of its ring ends: it publishes what the dead runner pushed but had not
//! published yet (its journal's staged tails), and steps past the input place of the
//! item it held.
//!
//! A pair's half may die while the other half lives and streams. The parent then plays
//! the dead half's part of the pair's hand-off (see [`crate::pair`]) for the item in
//! the pair, so that the survivor finishes that item and the replacement starts clean:
//!
//! - producer dead before its item reached the consumer: the pair goes back to idle;
//! - producer dead mid-stream: the stream fails and the consumer gets the producer's
//!   frame marked failed by the death, so the item fails naming the producer;
//! - consumer dead holding the item: the stream's reader closes (the producer's next
//!   write fails) and the consumer's replacement waits for the producer to finish the
//!   item before it takes the next one.

use std::sync::Arc;
use std::time::Duration;

use crate::frame::{mark_ran, OwnedSlot, RanBy};
use crate::memory::{Segment, SlotFailure, StageRecord, FLAG_ORDERED_INPUT, ROLE_CONSUMER, ROLE_PRODUCER};
use crate::ring::PushError;
use crate::sandbox::Violation;
use crate::sync::Ordering;
use crate::worker::runner::record_failure;

/// How a worker process ended.
pub(crate) struct Death<'a> {
    /// The dead runner's stage record.
    pub record: u32,
    pub pid: u32,
    /// Its exit status, in words.
    pub status: &'a str,
    /// The supervisor killed it for running past this timeout.
    pub timed_out: Option<Duration>,
    /// The sandbox limit it died of, if any.
    pub violation: Option<Violation>,
}

/// Settles what the dead runner of `record` held, and rewrites its record for a
/// replacement. Returns whether an item was in hand (it now travels on, failed). An
/// impossible journal is an error: the pipeline must break.
pub(crate) fn settle(seg: &Arc<Segment>, record: usize, death: &Death<'_>) -> Result<bool, String> {
    let rec = seg.stage(record).map_err(|e| e.to_string())?;
    // What it pushed is downstream: publish it.
    for k in 0..rec.output_count {
        if let Some(staged) = seg.journal(record).staged(k as usize) {
            let (ring, wake) = ((rec.output_ring + k) as usize, (rec.wake_ring + k) as usize);
            let mut output = seg.producer_to(ring, wake);
            output.adopt(staged).map_err(|e| format!("dead worker's output ring {ring}: {e}"))?;
            output.publish();
        }
    }
    let pair = match rec.role {
        ROLE_PRODUCER => Some(seg.pair(&rec)),
        ROLE_CONSUMER => {
            let producer = record.checked_sub(1).map(|p| seg.stage(p));
            match producer {
                Some(Ok(p)) if p.role == ROLE_PRODUCER => Some(seg.pair(&p)),
                _ => return Err(format!("dead consumer's record {record} follows no producer")),
            }
        }
        _ => None,
    };
    // The item whose hand-off the pair is in; the dead half cannot move it on.
    let paired = pair.as_ref().and_then(|p| p.header().item_in_flight());
    let ordered = rec.flags & FLAG_ORDERED_INPUT != 0;
    let journal = seg.journal(record).recover();
    let slots = seg.layout().slot_count() as u32;
    let spare = journal.spare.unwrap_or(rec.spare_slot);
    if rec.role == ROLE_PRODUCER && spare == rec.partner_slot {
        return Err(format!("dead producer's journal names its partner slot {spare} as its spare"));
    }
    let mut in_hand = false;
    if let Some(item) = journal.item {
        if item >= slots
            || spare >= slots
            || item == spare
            || (rec.role == ROLE_PRODUCER && item == rec.partner_slot)
        {
            return Err(format!("dead worker's journal names slots {item} and {spare}"));
        }
        // Its input place: if not given back yet, step past it (the item is ours now).
        let (ring, at) = journal.taken;
        let from_input =
            (0..rec.input_count).any(|k| u64::from(rec.input_ring + k * rec.input_stride) == ring);
        if !from_input {
            return Err(format!("dead worker's journal names ring {ring}, not one of its inputs"));
        }
        // (A reordering runner's items left their rings as they arrived.)
        let mut input = seg.ring(ring as usize).1;
        if !ordered && input.position() == at {
            input.try_take().map_err(|e| e.to_string())?;
            input.release();
        }
        // Published already? Then it is downstream and nothing is held.
        let outputs = u64::from(rec.output_ring)..u64::from(rec.output_ring + rec.output_count);
        let published = match journal.pushed {
            Some((ring, at)) if outputs.contains(&ring) => seg.ring(ring as usize).0.position() > at,
            Some((ring, _)) => {
                return Err(format!("dead worker's journal names ring {ring}, not one of its outputs"))
            }
            None => false,
        };
        let pair = pair.as_ref().filter(|_| paired == Some(item)).map(|p| p.header());
        match (pair, rec.role) {
            // It never reached the consumer: it goes on failed and unpaired.
            (Some(pair), ROLE_PRODUCER) if !published => pair.reset(),
            // The consumer streams it: end the stream with our failure.
            (Some(pair), ROLE_PRODUCER) => {
                // SAFETY: the partner slot is the dead producer's own; it is dead and
                // its replacement not started, so the parent settling its death is
                // the only one that holds it.
                let mut frame = unsafe { OwnedSlot::assigned(seg, rec.partner_slot) }.ok_or_else(|| {
                    format!("dead producer's partner slot {} is out of range", rec.partner_slot)
                })?;
                let mut header = frame.header(seg);
                header.ran = Default::default();
                mark_failed(seg, &mut frame, &mut header, rec.stage as usize, death);
                pair.produced_for_dead_producer(frame.index());
            }
            (Some(pair), _) if !published => pair.abandon(),
            _ => {}
        }
        if !published {
            if ordered {
                // In hand, so no longer waiting for its turn (the runner may have died
                // before it cleared the mark).
                let _ = seg.holder(item as usize).compare_exchange(
                    record as u32 + 1,
                    0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            fail_and_send_on(seg, &rec, item, death)?;
            in_hand = true;
        }
    }
    let next_seq = if ordered { resume_ordered(seg, record, &rec)? } else { 0 };
    seg.write_stage(record, StageRecord { spare_slot: spare, ..rec });
    seg.journal(record).reset(next_seq);
    Ok(in_hand)
}

/// A dead reordering runner's items waiting for their turn: steps past the ring places
/// of those it marked held but had not given back yet, and returns the sequence number
/// its replacement resumes at (see `Gather::journal_to`). Call once the item in hand
/// is settled.
fn resume_ordered(seg: &Arc<Segment>, record: usize, rec: &StageRecord) -> Result<u64, String> {
    let mark = record as u32 + 1;
    // Acquire loads below pair with the dead runner's Release stores.
    let held = |slot: u32| seg.holder(slot as usize).load(Ordering::Acquire) == mark;
    for k in 0..rec.input_count {
        // It marks an item held, then gives its place back: only a ring's first place
        // can be both. A slot is in one place at a time, so a marked slot there is it.
        let mut input = seg.ring((rec.input_ring + k * rec.input_stride) as usize).1;
        if let Some(desc) = input.try_take().map_err(|e| e.to_string())? {
            if OwnedSlot::from_descriptor(seg, desc).is_ok_and(|s| held(s.index())) {
                input.release();
            }
        }
    }
    // The journal's next number is stored just before an item is taken: if the runner
    // died in between, that item is still marked held, and due.
    let mut next = seg.journal(record).next_seq();
    for slot in 0..seg.layout().slot_count() as u32 {
        if held(slot) {
            // SAFETY: a slot the dead runner held; it is dead and its replacement not
            // started, and the token is dropped at once, after a read of its header.
            let slot = unsafe { OwnedSlot::assigned(seg, slot) }.expect("in range");
            next = next.min(slot.header(seg).seq);
        }
    }
    Ok(next)
}

/// Marks the item in slot `item` failed by the worker's death and pushes it to the dead
/// runner's first output ring, where the next stage (or the parent) takes it.
fn fail_and_send_on(
    seg: &Arc<Segment>,
    rec: &StageRecord,
    item: u32,
    death: &Death<'_>,
) -> Result<(), String> {
    // SAFETY: the item the dead runner held (its journal says so); it is dead and its
    // replacement not started, so the parent is the only holder until it pushes it on.
    let mut slot = unsafe { OwnedSlot::assigned(seg, item) }.expect("checked against the slot count");
    let mut header = slot.header(seg);
    mark_failed(seg, &mut slot, &mut header, rec.stage as usize, death);
    let mut producer = seg.producer_to(rec.output_ring as usize, rec.wake_ring as usize);
    match producer.try_push(slot.into_descriptor()) {
        Ok(()) => {
            producer.publish();
            Ok(())
        }
        Err(PushError::Full(_)) => Err("dead worker's output ring is overfull".into()),
        Err(PushError::Corrupt(e)) => Err(e.to_string()),
    }
}

/// Marks the frame in `slot` failed by stage `stage`'s worker's death.
fn mark_failed(
    seg: &Segment,
    slot: &mut OwnedSlot,
    header: &mut crate::memory::SlotHeader,
    stage: usize,
    death: &Death<'_>,
) {
    header.len = header.len.min(seg.layout().slot_capacity() as u32);
    let mut failure = SlotFailure { died_pid: death.pid, ..SlotFailure::default() };
    mark_ran(header, stage, RanBy { record: death.record, pid: death.pid });
    let pid = death.pid;
    let msg = match death.timed_out {
        Some(t) => {
            failure.timeout_ms = t.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
            format!("timed out: ran past the stage's timeout of {t:?}; worker process {pid} was killed and restarted")
        }
        None => match death.violation {
            Some(v) => {
                (failure.violation, failure.violation_detail) = v.code();
                format!("worker process {pid} was killed for {v} while running this item; it was restarted")
            }
            None => format!(
                "worker process {pid} died ({}) while running this item; it was restarted",
                death.status
            ),
        },
    };
    record_failure(seg, slot, header, failure, stage, &msg);
}
