//! The loop a stage runs, identical on a parent thread and in a worker process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::frame::{mark_ran, Frame, OwnedSlot, STATUS_FAILED};
use crate::memory::{LayoutError, Segment, STATE_BROKEN, STATE_RUNNING};
use crate::ring::{Consumer, Producer, PushError};
use crate::stage::Stage;

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
    index: usize,
    stage: Box<dyn Stage>,
    input: Consumer,
    output: Producer,
    spare: OwnedSlot,
}

impl StageRunner {
    /// Takes stage `index`'s ring ends and spare slot.
    pub(crate) fn new(seg: Arc<Segment>, index: usize, stage: Box<dyn Stage>) -> Result<Self, LayoutError> {
        let record = seg.stage(index)?;
        let (_, input) = seg.ring(record.input_ring as usize);
        let (output, _) = seg.ring(record.output_ring as usize);
        let spare = OwnedSlot::assigned(&seg, record.spare_slot)
            .ok_or(LayoutError::Inconsistent("stage spare slot"))?;
        Ok(Self { seg, index, stage, input, output, spare })
    }

    /// Serves items until shutdown or breakage.
    pub(crate) fn run(mut self) -> RunEnd {
        loop {
            let mut unpublished = 0;
            loop {
                let desc = match self.input.try_pop() {
                    Ok(Some(desc)) => desc,
                    Ok(None) => break,
                    Err(e) => return self.corrupt(e.to_string()),
                };
                let slot = match OwnedSlot::from_descriptor(&self.seg, desc) {
                    Ok(slot) => slot,
                    Err(bad) => return self.corrupt(format!("ring descriptor {} names no slot", bad.0)),
                };
                let slot = self.handle(slot);
                match self.output.try_push(slot.into_descriptor()) {
                    Ok(()) => {}
                    // Rings hold every slot, so full means someone forged descriptors.
                    Err(PushError::Full(_)) => return self.corrupt("output ring overfull".into()),
                    Err(PushError::Corrupt(e)) => return self.corrupt(e.to_string()),
                }
                unpublished += 1;
                if unpublished == PUBLISH_EVERY {
                    self.output.publish();
                    unpublished = 0;
                }
            }
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
                    if matches!(self.input.has_data(), Ok(false)) {
                        return RunEnd::Shutdown;
                    }
                    continue;
                }
            }
            self.input.wait(|| control.state() != STATE_RUNNING, Some(PARK_TIMEOUT));
        }
    }

    fn corrupt(&self, why: String) -> RunEnd {
        self.seg.control().set_state(STATE_BROKEN);
        RunEnd::Corrupt(why)
    }

    /// Runs the determiner and the stage on one item; returns the slot that now
    /// holds it (another one if the stage replaced the frame).
    fn handle(&mut self, mut slot: OwnedSlot) -> OwnedSlot {
        let seg = &*self.seg;
        let mut header = slot.header(seg);
        if header.status == STATUS_FAILED {
            return slot; // an earlier stage failed it: pass it on untouched
        }
        let capacity = seg.layout().slot_capacity();
        let len = header.len as usize;
        if len > capacity {
            let msg = format!("corrupt frame: length {len} exceeds capacity {capacity}");
            self.fail(&mut slot, &mut header, &msg);
            return slot;
        }
        let stage = &mut self.stage;
        let mut frame = Frame::new(seg, &mut slot, &mut self.spare, len);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if !stage.wants(&mut frame) {
                return Ok(false);
            }
            stage.process(&mut frame).map(|()| true)
        }));
        let new_len = frame.len();
        match outcome {
            Ok(Ok(ran)) => {
                if ran {
                    mark_ran(&mut header, self.index);
                }
                header.len = new_len as u32;
                slot.set_header(seg, &header);
            }
            Ok(Err(e)) => {
                mark_ran(&mut header, self.index);
                header.len = new_len as u32;
                self.fail(&mut slot, &mut header, &e.to_string());
            }
            Err(panic) => {
                mark_ran(&mut header, self.index);
                header.len = new_len as u32;
                let msg = format!("stage panicked: {}", panic_message(&*panic));
                self.fail(&mut slot, &mut header, &msg);
            }
        }
        slot
    }

    fn fail(&self, slot: &mut OwnedSlot, header: &mut crate::memory::SlotHeader, msg: &str) {
        header.status = STATUS_FAILED;
        header.failed_stage = self.index as u32;
        header.error_len = slot.set_error_text(&self.seg, msg);
        slot.set_header(&self.seg, header);
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}
