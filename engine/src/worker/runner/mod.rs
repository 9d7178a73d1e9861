//! The loop a stage runs, identical on a parent thread and in a worker process.
//!
//! The main loop is here; what a runner writes to its journal for a replacement is
//! in `journal.rs`, and the producer's and consumer's sides of a pair in
//! `halves.rs`.

mod halves;
mod journal;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use super::meter::{Meter, Waited};
use crate::frame::{mark_ran, Frame, OwnedSlot, RanBy, STATUS_FAILED};
use crate::memory::{
    LayoutError, Segment, SlotFailure, SlotHeader, ROLE_CONSUMER, ROLE_PRODUCER, STATE_BROKEN, STATE_RUNNING,
};
use crate::memory::{FLAG_HOLD_INPUT, FLAG_ORDERED_INPUT};
use crate::pair::{PairRef, PAIRED};
use crate::ring::PushError;
use crate::route::{Gather, Scatter};
use crate::stage::{BoxError, Consumer, Producer, Stage, StageCode};

/// Publish at least this often while draining a burst, so downstream starts early.
const PUBLISH_EVERY: u32 = 16;
/// How long a parked stage sleeps before re-checking that its peers are alive.
pub(crate) const PARK_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a stage loop ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// Orderly shutdown with empty rings.
    Shutdown,
    /// The pipeline was marked broken.
    Broken,
    /// Shared memory held something impossible.
    Corrupt(String),
}

pub(crate) struct StageRunner {
    seg: Arc<Segment>,
    /// The stage this runner is (a replica of): the index items record.
    index: usize,
    input: Gather,
    output: Scatter,
    spare: OwnedSlot,
    role: Role,
    /// Publish output after this many items at most.
    publish_every: u32,
    /// Give an item's input place back only once it is pushed on (a replica).
    hold: bool,
    /// Keep the journal (a runner a replacement can take over after its process dies).
    journal: Option<journal::Wiring>,
    meter: Meter,
    /// Who this runner is, as items record it.
    me: RanBy,
    /// The current item's bytes in and out, as the handler that ran saw them.
    bytes: (u64, u64),
}

/// What the runner runs: a plain stage or a half of a producer/consumer pair.
enum Role {
    Plain(Box<dyn Stage>),
    /// Streams to the next stage, working on its own copy of each item (`partner`,
    /// which is always the record's partner slot when the consumer gets it).
    Producer {
        code: Box<dyn Producer>,
        pair: PairRef,
        partner: OwnedSlot,
        /// The record's partner slot.
        home: u32,
    },
    /// Reads the previous stage's stream; the producer's frame is always in its
    /// record's partner slot, `producer_frame`.
    Consumer {
        code: Box<dyn Consumer>,
        pair: PairRef,
        producer_frame: u32,
    },
}

/// How one item went through this stage.
enum Handled {
    /// Push it on.
    Done(OwnedSlot),
    /// Producer: push it on tagged as paired, then stream it.
    Paired(OwnedSlot),
}

impl StageRunner {
    /// Takes stage record `record_index`'s ring ends, spare slot and, in a pair, its
    /// half of the pair, to run `code` (of the kind the record's role says).
    pub(crate) fn new(seg: Arc<Segment>, record_index: usize, code: StageCode) -> Result<Self, LayoutError> {
        let record = seg.stage(record_index)?;
        let inputs = (0..record.input_count)
            .map(|k| seg.ring((record.input_ring + k * record.input_stride) as usize).1)
            .collect();
        let ordered = record.flags & FLAG_ORDERED_INPUT != 0;
        // The runner gives input places back itself (see `run`).
        let input = Gather::new(inputs, ordered, true);
        let outputs = (0..record.output_count)
            .map(|k| seg.producer_to((record.output_ring + k) as usize, (record.wake_ring + k) as usize))
            .collect();
        let output = Scatter::new(outputs);
        // SAFETY: the spare slot is this record's own, and one runner at a time runs a
        // record (a replacement starts only after its predecessor died and the parent
        // settled it).
        let spare = unsafe { OwnedSlot::assigned(&seg, record.spare_slot) }
            .ok_or(LayoutError::Inconsistent("stage spare slot"))?;
        let role = match (record.role, code) {
            (ROLE_PRODUCER, StageCode::Producer(code)) => Role::Producer {
                code,
                pair: seg.pair(&record),
                home: record.partner_slot,
                // SAFETY: the partner slot is this producer record's own (as the
                // spare slot above).
                partner: unsafe { OwnedSlot::assigned(&seg, record.partner_slot) }
                    .ok_or(LayoutError::Inconsistent("stage partner slot"))?,
            },
            (ROLE_CONSUMER, StageCode::Consumer(code)) => {
                let producer = seg.stage(record_index - 1)?;
                if producer.role != ROLE_PRODUCER {
                    return Err(LayoutError::Inconsistent("consumer stage without a producer before it"));
                }
                Role::Consumer { code, pair: seg.pair(&producer), producer_frame: producer.partner_slot }
            }
            (ROLE_PRODUCER | ROLE_CONSUMER, _) | (_, StageCode::Producer(_) | StageCode::Consumer(_)) => {
                return Err(LayoutError::Inconsistent("stage code of another kind than its record's role"));
            }
            (_, StageCode::Stage(stage)) => Role::Plain(stage),
        };
        let publish_every = match record.publish_every {
            0 => PUBLISH_EVERY,
            n => n.min(PUBLISH_EVERY),
        };
        let index = record.stage as usize;
        let journal = Some(journal::Wiring {
            record: record_index,
            input_ring: record.input_ring,
            input_stride: record.input_stride,
            output_ring: record.output_ring,
            ordered,
        });
        let hold = record.flags & FLAG_HOLD_INPUT != 0;
        let meter = Meter::new(&seg, record_index);
        Ok(Self {
            seg,
            index,
            input,
            output,
            spare,
            role,
            publish_every,
            hold,
            journal,
            meter,
            me: RanBy { record: record_index as u32, pid: std::process::id() },
            bytes: (0, 0),
        })
    }

    /// For a runner on a thread of the parent: no journal. A thread cannot die alone
    /// (a panic in a stage is caught per item), so nobody would ever read it.
    pub(crate) fn in_parent(mut self) -> Self {
        self.journal = None;
        self
    }

    /// Serves items until shutdown or breakage.
    pub(crate) fn run(mut self) -> RunEnd {
        self.journal_gather();
        if let Err(end) = self.resume_pair() {
            return end;
        }
        loop {
            let mut unpublished = 0;
            loop {
                let desc = match self.input.try_pop(&self.seg) {
                    Ok(Some(desc)) => desc,
                    Ok(None) => break,
                    Err(e) => return self.corrupt(e.to_string()),
                };
                let paired = desc & PAIRED != 0;
                if paired && !matches!(self.role, Role::Consumer { .. }) {
                    return self
                        .corrupt(format!("paired descriptor {desc:#x} reached a stage not in a pair"));
                }
                let slot = match OwnedSlot::from_descriptor(&self.seg, desc & !PAIRED) {
                    Ok(slot) => slot,
                    Err(bad) => return self.corrupt(format!("ring descriptor {} names no slot", bad.0)),
                };
                self.journal_took(&slot);
                if !self.hold {
                    self.input.release();
                }
                let handled = match &self.role {
                    Role::Plain(_) => Handled::Done(self.handle(slot)),
                    Role::Producer { .. } => match self.begin_pair(slot) {
                        Ok(h) => h,
                        Err(end) => return end,
                    },
                    Role::Consumer { .. } if paired => match self.consume(slot) {
                        Ok(slot) => Handled::Done(slot),
                        Err(end) => return end,
                    },
                    // Failed earlier, or the producer's determiner declined it: both
                    // halves skip it.
                    Role::Consumer { .. } => {
                        let len = u64::from(slot.header(&self.seg).len);
                        self.bytes = (len, len);
                        Handled::Done(slot)
                    }
                };
                let (slot, tag) = match handled {
                    Handled::Done(slot) => (slot, 0),
                    Handled::Paired(slot) => (slot, PAIRED),
                };
                self.journal_holds(&slot);
                match self.output.push(slot.into_descriptor() | tag) {
                    Ok((k, at)) => self.journal_pushed(k, at),
                    // Rings hold every slot, so full means someone forged descriptors.
                    Err(PushError::Full(_)) => return self.corrupt("output ring overfull".into()),
                    Err(PushError::Corrupt(e)) => return self.corrupt(e.to_string()),
                }
                if self.hold {
                    // A replica gives its input place back only now: until then the
                    // writer counted the item as ours (the least-loaded choice).
                    self.input.release();
                }
                unpublished += 1;
                if tag == PAIRED {
                    // The consumer must start now: it runs alongside `produce` (which
                    // counts the item, stream included, before handing it over).
                    self.output.publish();
                    unpublished = 0;
                    self.produce();
                    continue;
                }
                self.meter.item(&self.seg, self.bytes.0, self.bytes.1);
                if unpublished >= self.publish_every {
                    // Counts first: whoever sees these items sees them counted.
                    self.meter.store_counts(&self.seg);
                    self.output.publish();
                    unpublished = 0;
                    self.journal_done();
                }
            }
            self.meter.pause(&self.seg);
            if unpublished > 0 {
                self.output.publish();
            }
            let control = self.seg.control();
            match control.state() {
                STATE_RUNNING => {}
                STATE_BROKEN => return RunEnd::Broken,
                _ => {
                    // Shutdown is only requested once every item has left the
                    // pipeline, but drain anything that is still here first.
                    if matches!(self.input.ready(&self.seg), Ok(false)) {
                        return RunEnd::Shutdown;
                    }
                    continue;
                }
            }
            self.input.wait(&self.seg, || control.state() != STATE_RUNNING, Some(PARK_TIMEOUT));
            self.meter.resume(Waited::Starved);
        }
    }

    fn corrupt(&self, why: String) -> RunEnd {
        self.seg.control().set_state(STATE_BROKEN);
        RunEnd::Corrupt(why)
    }

    fn broken(seg: &Segment) -> bool {
        seg.control().state() == STATE_BROKEN
    }

    /// The item's header if it should be worked on; `None` if it passes on untouched
    /// (an earlier stage failed it, or it was failed here for a bad length).
    fn admit(&mut self, slot: &mut OwnedSlot) -> Option<SlotHeader> {
        let mut header = slot.header(&self.seg);
        let len = u64::from(header.len);
        self.bytes = (len, len);
        if header.status == STATUS_FAILED {
            return None; // an earlier stage failed it: pass it on untouched
        }
        let capacity = self.seg.layout().slot_capacity();
        if header.len as usize > capacity {
            self.bytes = (0, 0);
            let msg = format!("corrupt frame: length {} exceeds capacity {capacity}", header.len);
            self.fail(slot, &mut header, self.index, &msg);
            return None;
        }
        Some(header)
    }

    /// Runs the determiner and the stage on one item; returns the slot that now
    /// holds it (another one if the stage replaced the frame).
    fn handle(&mut self, mut slot: OwnedSlot) -> OwnedSlot {
        let Some(mut header) = self.admit(&mut slot) else { return slot };
        let seg = &*self.seg;
        let Role::Plain(stage) = &mut self.role else { unreachable!("plain role") };
        let mut frame = Frame::new(seg, &mut slot, &mut self.spare, header.len as usize);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if !stage.wants(&mut frame) {
                return Ok(false);
            }
            stage.process(&mut frame).map(|()| true)
        }));
        header.len = frame.len() as u32;
        self.bytes.1 = u64::from(header.len);
        match outcome {
            Ok(Ok(ran)) => {
                if ran {
                    mark_ran(&mut header, self.index, self.me);
                }
                slot.set_header(seg, &header);
            }
            Ok(Err(e)) => {
                mark_ran(&mut header, self.index, self.me);
                self.fail(&mut slot, &mut header, self.index, &e.to_string());
            }
            Err(panic) => {
                mark_ran(&mut header, self.index, self.me);
                let msg = format!("stage panicked: {}", panic_message(&*panic));
                self.fail(&mut slot, &mut header, self.index, &msg);
            }
        }
        slot
    }

    fn fail(&self, slot: &mut OwnedSlot, header: &mut SlotHeader, stage: usize, msg: &str) {
        record_failure(&self.seg, slot, header, SlotFailure::default(), stage, msg);
    }
}

/// Marks the item failed by `stage` with `msg` and writes its header and its failure
/// record (`failure` brings what else is known: a death, a timeout, a violation).
pub(crate) fn record_failure(
    seg: &Segment,
    slot: &mut OwnedSlot,
    header: &mut SlotHeader,
    mut failure: SlotFailure,
    stage: usize,
    msg: &str,
) {
    header.status = STATUS_FAILED;
    failure.failed_stage = stage as u32;
    failure.error_len = slot.set_error_text(seg, msg);
    slot.set_failure(seg, &failure);
    slot.set_header(seg, header);
}

/// A stage call's result, with a panic as an error message.
fn flatten(outcome: std::thread::Result<Result<(), BoxError>>) -> Result<(), String> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("stage panicked: {}", panic_message(&*panic))),
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}
