//! A pair's halves in the runner: the producer copies the item into its partner
//! slot and streams, the consumer reads the stream and merges the producer's
//! results; the hand-off between them is `crate::pair`'s.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::{flatten, panic_message, record_failure, Handled, Role, RunEnd, StageRunner};
use crate::frame::{mark_ran, Frame, OwnedSlot, STATUS_FAILED};
use crate::memory::SlotFailure;
use crate::pair::{OUTCOME_FAILED, OUTCOME_FAILED_AFTER_CLOSE, OUTCOME_OK, PRODUCED, STARTED};
use crate::worker::meter::Waited;

impl StageRunner {
    /// Consumer: if our predecessor died holding an item (the parent failed it), lets
    /// the producer finish that item's hand-off before we take the next.
    pub(super) fn resume_pair(&self) -> Result<(), RunEnd> {
        let Role::Consumer { pair, .. } = &self.role else { return Ok(()) };
        let seg = self.seg.clone();
        if pair.header().take_abandoned() {
            if pair.header().wait_produced(|| Self::broken(&seg)).is_none() {
                return Err(RunEnd::Broken);
            }
            pair.header().release();
        }
        Ok(())
    }

    /// Producer: decides whether the pair takes the item and, if so, copies it into
    /// the partner slot and starts the stream.
    pub(super) fn begin_pair(&mut self, mut slot: OwnedSlot) -> Result<Handled, RunEnd> {
        let Some(mut header) = self.admit(&mut slot) else { return Ok(Handled::Done(slot)) };
        let Role::Producer { code, pair, partner, .. } = &mut self.role else {
            unreachable!("producer role")
        };
        // The consumer may still read our previous frame (in `partner` or `spare`,
        // which the determiner below may overwrite): wait until it let go.
        let seg = &*self.seg;
        let started = Instant::now();
        if !pair.header().wait_idle(|| Self::broken(seg)) {
            return Err(RunEnd::Broken);
        }
        self.meter.waited(Waited::Blocked, started.elapsed());
        let mut frame = Frame::new(seg, &mut slot, &mut self.spare, header.len as usize);
        let wanted = catch_unwind(AssertUnwindSafe(|| code.wants(&mut frame)));
        header.len = frame.len() as u32;
        self.bytes.1 = u64::from(header.len);
        match wanted {
            Ok(true) => {}
            Ok(false) => {
                slot.set_header(seg, &header);
                return Ok(Handled::Done(slot));
            }
            Err(panic) => {
                mark_ran(&mut header, self.index, self.me);
                let msg = format!("stage panicked: {}", panic_message(&*panic));
                record_failure(seg, &mut slot, &mut header, SlotFailure::default(), self.index, &msg);
                return Ok(Handled::Done(slot));
            }
        }
        slot.set_header(seg, &header);
        let len = header.len as usize;
        partner.payload_mut(seg)[..len].copy_from_slice(&slot.payload(seg)[..len]);
        partner.set_header(seg, &header);
        if !pair.header().start(slot.index(), || Self::broken(seg)) {
            return Err(RunEnd::Broken);
        }
        Ok(Handled::Paired(slot))
    }

    /// Producer, after the item went to the consumer: runs `produce` on the partner
    /// frame, ends the stream, and hands the frame and the outcome to the consumer.
    pub(super) fn produce(&mut self) {
        let Role::Producer { code, pair, partner, home } = &mut self.role else {
            unreachable!("producer role")
        };
        let seg = &*self.seg;
        let mut writer = pair.writer();
        let mut header = partner.header(seg);
        let mut frame = Frame::new(seg, partner, &mut self.spare, header.len as usize);
        let outcome = catch_unwind(AssertUnwindSafe(|| code.produce(&mut frame, &mut writer)));
        header.len = frame.len() as u32;
        if partner.index() != *home {
            // `produce` replaced its frame, which swapped the partner and the spare.
            // The consumer looks for our frame in the partner slot of our record, and
            // after a death the parent knows our slots only as that partner and the
            // spare in our journal: copy the frame home (rare: only `replace` does it).
            std::mem::swap(partner, &mut self.spare);
            let len = header.len as usize;
            partner.payload_mut(seg)[..len].copy_from_slice(&self.spare.payload(seg)[..len]);
        }
        mark_ran(&mut header, self.index, self.me);
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(format!("stage panicked: {}", panic_message(&*panic))),
        };
        let result = match error {
            None => {
                let _ = writer.finish(); // Err only if `produce` finished (or failed) it itself
                OUTCOME_OK
            }
            Some(msg) => {
                // Looked at before our failure is published: a reader closed now closed
                // for its own reasons.
                let closed_first = writer.is_closed();
                writer.fail();
                record_failure(seg, partner, &mut header, SlotFailure::default(), self.index, &msg);
                if closed_first {
                    OUTCOME_FAILED_AFTER_CLOSE
                } else {
                    OUTCOME_FAILED
                }
            }
        };
        partner.set_header(seg, &header);
        let (streamed, waited) = writer.progress();
        drop(writer);
        self.bytes.1 += streamed;
        self.meter.waited(Waited::Blocked, waited);
        self.meter.item(seg, self.bytes.0, self.bytes.1);
        self.meter.store_counts(seg); // before the consumer, and so the parent, can see the item
        pair.header().produced(partner.index(), result);
    }

    /// Consumer: runs `consume` on the item alongside the producer, waits for the
    /// producer, then merges its results or records which half failed.
    pub(super) fn consume(&mut self, mut slot: OwnedSlot) -> Result<OwnedSlot, RunEnd> {
        let Role::Consumer { pair, producer_frame, .. } = &self.role else { unreachable!("consumer role") };
        let (pair, producer_frame) = (pair.clone(), *producer_frame);
        let state = pair.header().state();
        if state != STARTED && state != PRODUCED {
            return Err(self.corrupt(format!("paired item arrived with the pair in state {state}")));
        }
        let seg = self.seg.clone();
        let mut header = slot.header(&seg);
        let capacity = seg.layout().slot_capacity();
        self.bytes.0 = u64::from(header.len).min(capacity as u64);
        let mut reader = pair.reader();
        let consumed: Result<(), String> = if header.len as usize > capacity {
            Err(format!("corrupt frame: length {} exceeds capacity {capacity}", header.len))
        } else {
            let Role::Consumer { code, .. } = &mut self.role else { unreachable!("consumer role") };
            let mut frame = Frame::new(&seg, &mut slot, &mut self.spare, header.len as usize);
            let outcome = catch_unwind(AssertUnwindSafe(|| code.consume(&mut frame, &mut reader)));
            header.len = frame.len() as u32;
            flatten(outcome)
        };
        let (streamed, waited) = reader.progress();
        drop(reader); // closes the stream: a producer still writing gets an error now
        self.bytes.0 += streamed;
        let started = Instant::now();
        let Some((producer_slot, outcome)) = pair.header().wait_produced(|| Self::broken(&seg)) else {
            return Err(RunEnd::Broken);
        };
        self.meter.waited(Waited::Starved, waited + started.elapsed());
        if producer_slot != producer_frame || producer_slot == slot.index() {
            return Err(self.corrupt(format!("pair names slot {producer_slot} as the producer's frame")));
        }
        // SAFETY: the producer published PRODUCED with its partner slot: it let go of
        // that frame, and the hand-off gives it to this consumer until it merges.
        let theirs = unsafe { OwnedSlot::assigned(&seg, producer_slot) }
            .expect("checked against the producer's record");
        let their_header = theirs.header(&seg);
        if their_header.len as usize > capacity {
            return Err(self.corrupt(format!("producer frame length {} exceeds capacity", their_header.len)));
        }
        for (mine, its) in header.ran.iter_mut().zip(their_header.ran) {
            *mine |= its;
        }
        mark_ran(&mut header, self.index, self.me);
        let producer_failed = their_header.status == STATUS_FAILED;
        let mut known = SlotFailure::default();
        let mut their_error_len = 0;
        if producer_failed {
            // The parent failed it for a dead or timed-out producer: say so on the item.
            let theirs = theirs.failure(&seg);
            (known.died_pid, known.timeout_ms, their_error_len) =
                (theirs.died_pid, theirs.timeout_ms, theirs.error_len);
        }
        let failure = match consumed {
            Err(msg) if !producer_failed || outcome == OUTCOME_FAILED_AFTER_CLOSE => Some((self.index, msg)),
            _ if producer_failed => Some((self.index - 1, theirs.error_text(&seg, their_error_len))),
            _ => {
                let Role::Consumer { code, .. } = &mut self.role else { unreachable!("consumer role") };
                let mut frame = Frame::new(&seg, &mut slot, &mut self.spare, header.len as usize);
                let producer = &theirs.payload(&seg)[..their_header.len as usize];
                let outcome = catch_unwind(AssertUnwindSafe(|| code.merge_producer(&mut frame, producer)));
                header.len = frame.len() as u32;
                flatten(outcome).err().map(|msg| (self.index, msg))
            }
        };
        match failure {
            Some((stage, msg)) => record_failure(&seg, &mut slot, &mut header, known, stage, &msg),
            None => slot.set_header(&seg, &header),
        }
        self.bytes.1 = u64::from(header.len);
        pair.header().release();
        Ok(slot)
    }
}
