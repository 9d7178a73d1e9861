//! What users hold: a frame being filled, a ticket for a submitted item, a result.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::error::{ItemError, StageFailure, SubmitError};
use super::shared::{Book, Shared, Taken};
use crate::frame::{header_of, split_of, FrameError, OwnedSlot, STATUS_FAILED};
use crate::memory::SlotHeader;

/// A frame reserved in shared memory, filled in place and then submitted.
///
/// Made by [`Pipeline::alloc`](crate::Pipeline::alloc). Dropping it unsubmitted
/// returns the frame.
///
/// ```no_run
/// # fn demo(p: &ringpipe_engine::Pipeline) -> Result<(), Box<dyn std::error::Error>> {
/// let mut frame = p.alloc(5)?;
/// frame.copy_from_slice(b"hello");
/// let out = frame.submit()?.wait()?;
/// assert_eq!(&out[..], b"HELLO");
/// # Ok(()) }
/// ```
///
/// ```
/// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Job { id: u64, len: u64 }
/// let p = Pipeline::builder().stage(StageSpec::with_stage("noop", stage_fn(|_| Ok(())))).build()?;
/// let mut frame = p.alloc(16 + 5)?; // written in place: no copy
/// let (job, body) = frame.split::<Job>()?;
/// *job = Job { id: 7, len: 5 };
/// body.copy_from_slice(b"hello");
/// let out = frame.submit()?.wait()?;
/// assert_eq!(out.header::<Job>()?.id, 7);
/// # drop(out);
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a NewFrame gives its frame back without submitting it"]
pub struct NewFrame {
    pub(crate) shared: Arc<Shared>,
    pub(crate) slot: Option<OwnedSlot>,
    pub(crate) ticket: u32,
    pub(crate) generation: u32,
    pub(crate) len: usize,
}

impl NewFrame {
    /// Changes the length within the frame capacity.
    pub fn set_len(&mut self, len: usize) -> Result<(), FrameError> {
        let capacity = self.shared.seg.layout().slot_capacity();
        if len > capacity {
            return Err(FrameError::TooLarge { requested: len, capacity });
        }
        self.len = len;
        Ok(())
    }

    /// The leading `H` and the bytes after it.
    pub fn split<H: Pod>(&mut self) -> Result<(&mut H, &mut [u8]), FrameError> {
        split_of(&mut self[..])
    }

    fn header(&self) -> SlotHeader {
        SlotHeader {
            len: self.len as u32,
            ticket: self.ticket,
            generation: self.generation,
            ..bytemuck::Zeroable::zeroed()
        }
    }

    /// Sends the frame into the pipeline.
    pub fn submit(mut self) -> Result<Ticket, SubmitError> {
        self.launch(false)?;
        Ok(Ticket {
            shared: self.shared.clone(),
            ticket: self.ticket,
            generation: self.generation,
            taken: false,
        })
    }

    /// Sends the frame into the pipeline; its result comes from
    /// [`Pipeline::completions`](crate::Pipeline::completions).
    pub fn submit_detached(mut self) -> Result<(), SubmitError> {
        self.launch(true)
    }

    /// Launches the frame as an item whose ticket its caller keeps (a map's), with no
    /// `Ticket` handle.
    pub(crate) fn launch_raw(mut self) -> Result<u32, SubmitError> {
        self.launch(false)?;
        Ok(self.ticket)
    }

    fn launch(&mut self, detached: bool) -> Result<(), SubmitError> {
        let header = self.header();
        let mut slot = self.slot.take().expect("a NewFrame holds its slot until launched");
        slot.reset(&self.shared.seg, &header);
        let mut book = self.shared.book.lock();
        if let Err(e) = self.shared.check_open(&book) {
            book.release(slot, self.ticket);
            self.shared.done.notify_all();
            return Err(e);
        }
        self.shared.launch([(slot, self.ticket, detached)], &mut book);
        Ok(())
    }
}

impl std::ops::Deref for NewFrame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let slot = self.slot.as_ref().expect("held until launched");
        &slot.payload(&self.shared.seg)[..self.len]
    }
}

impl std::ops::DerefMut for NewFrame {
    fn deref_mut(&mut self) -> &mut [u8] {
        let slot = self.slot.as_mut().expect("held until launched");
        &mut slot.payload_mut(&self.shared.seg)[..self.len]
    }
}

impl Drop for NewFrame {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.shared.book.lock().release(slot, self.ticket);
            self.shared.done.notify_all();
        }
    }
}

/// A submitted item: wait for it ([`wait`](Ticket::wait)), check it
/// ([`try_wait`](Ticket::try_wait)), or `.await` it.
///
/// Dropping a ticket abandons the result; the engine frees it when the item
/// comes out.
///
/// ```
/// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
/// let p = Pipeline::builder().stage(StageSpec::with_stage("noop", stage_fn(|_| Ok(())))).build()?;
/// let mut ticket = p.submit(b"x")?;
/// let out = loop {
///     if let Some(result) = ticket.try_wait() {
///         break result?; // or `ticket.wait()?`, or `ticket.await?`
///     }
///     std::thread::yield_now();
/// };
/// assert!(ticket.is_finished());
/// # drop(out);
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a Ticket abandons the item's result"]
pub struct Ticket {
    shared: Arc<Shared>,
    ticket: u32,
    generation: u32,
    taken: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("ticket", &self.ticket).field("generation", &self.generation).finish()
    }
}

impl Ticket {
    /// Blocks until the item leaves the pipeline.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// let out = p.submit(b"abc")?.wait()?; // Err if a stage failed it
    /// assert_eq!(&out[..], b"ABC");
    /// # drop(out);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(mut self) -> Result<Output, ItemError> {
        wait_for(&self.shared, self.ticket, &mut self.taken, None)
    }

    /// Blocks until the item leaves the pipeline or `timeout` passes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// let mut t = p.submit(b"abc")?;
    /// let out = t.wait_timeout(Duration::from_secs(60))?; // ItemError::TimedOut if it took longer
    /// assert_eq!(&out[..], b"ABC");
    /// # drop(out);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Output, ItemError> {
        wait_for(&self.shared, self.ticket, &mut self.taken, Some(crate::wait::deadline_after(timeout)))
    }

    /// The result if the item has left the pipeline, without blocking.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// let mut t = p.submit(b"abc")?;
    /// let out = loop {
    ///     if let Some(result) = t.try_wait() {
    ///         break result?;
    ///     }
    ///     std::thread::yield_now(); // or other work
    /// };
    /// assert_eq!(&out[..], b"ABC");
    /// # drop(out);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_wait(&mut self) -> Option<Result<Output, ItemError>> {
        if self.taken {
            return Some(Err(ItemError::AlreadyTaken));
        }
        self.shared.collect_now();
        let mut book = self.shared.book.lock();
        let result = take(&self.shared, &mut book, self.ticket);
        self.taken = result.is_some();
        result
    }

    /// True once the item has left the pipeline (its result is ready to take).
    pub fn is_finished(&self) -> bool {
        self.shared.collect_now();
        !self.shared.book.lock().is_pending(self.ticket)
    }
}

/// Takes a finished item's result out of the book, or `None` if still pending.
#[inline]
pub(crate) fn take(shared: &Arc<Shared>, book: &mut Book, ticket: u32) -> Option<Result<Output, ItemError>> {
    Some(match book.take(ticket)? {
        Taken::Done { slot, len, seq, failed } => {
            let output = Output { shared: shared.clone(), slot: Some(slot), ticket, index: seq, len };
            // The collector saw the header's status: only a failed item reads it again.
            match failed.then(|| output.failure()).flatten() {
                None => Ok(output),
                Some(failure) => Err(ItemError::Stage { failure: Box::new(failure), output }),
            }
        }
        Taken::Failed(f) => Err(ItemError::Engine(*f)),
        Taken::Before => Err(ItemError::AlreadyTaken),
    })
}

/// Tags a taken result with the index its taker knows it by (a map's input position).
#[inline]
pub(crate) fn with_index(mut result: Result<Output, ItemError>, index: u64) -> Result<Output, ItemError> {
    match &mut result {
        Ok(output) | Err(ItemError::Stage { output, .. } | ItemError::Poison { output, .. }) => {
            output.index = index;
        }
        Err(_) => {}
    }
    result
}

/// Waits for `ticket`, collecting results meanwhile (see `Shared::wait_until`).
pub(crate) fn wait_for(
    shared: &Arc<Shared>,
    ticket: u32,
    taken: &mut bool,
    deadline: Option<Instant>,
) -> Result<Output, ItemError> {
    if *taken {
        return Err(ItemError::AlreadyTaken);
    }
    let result = shared.wait_until(deadline, |book| take(shared, book, ticket));
    *taken = result.is_some();
    result.unwrap_or(Err(ItemError::TimedOut))
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        if self.shared.book.lock().abandon(self.ticket) {
            self.shared.done.notify_all();
        }
    }
}

impl Future for Ticket {
    type Output = Result<Output, ItemError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.taken {
            return Poll::Ready(Err(ItemError::AlreadyTaken));
        }
        // Collect whatever is ready, if no one else is collecting.
        this.shared.collect_now();
        let mut book = this.shared.book.lock();
        if let Some(r) = take(&this.shared, &mut book, this.ticket) {
            this.taken = true;
            return Poll::Ready(r);
        }
        if book.register_waker(this.ticket, cx.waker()) {
            // The async driver collects while futures wait and no caller does.
            this.shared.async_waiting.notify_one();
        }
        Poll::Pending
    }
}

/// A finished item, read in place in shared memory. Dropping it recycles the frame.
///
/// Derefs to the item's bytes. A result is `Ok(Output)` when every stage that
/// wanted the item ran it; a stage's failure comes as
/// [`ItemError::Stage`](crate::ItemError::Stage), which holds the output as that stage
/// left it (there [`failure`](Output::failure) says which stage and why).
///
/// ```
/// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
/// let p = Pipeline::builder().stage(StageSpec::with_stage("rev", stage_fn(|f| {
///     f.bytes_mut().reverse();
///     Ok(())
/// }))).build()?;
/// let out = p.submit(b"abc")?.wait()?;
/// assert_eq!((&out[..], out.index(), out.stage_ran(0)), (&b"cba"[..], 0, true));
/// drop(out); // the frame goes back to the pipeline
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping an Output recycles its frame: read the result first"]
pub struct Output {
    pub(crate) shared: Arc<Shared>,
    pub(crate) slot: Option<OwnedSlot>,
    pub(crate) ticket: u32,
    /// See [`Output::index`].
    pub(crate) index: u64,
    /// Bytes of the result, checked against the frame capacity when it came out (the
    /// rest of its slot header is read where it lies, when asked for).
    pub(crate) len: u32,
}

impl Output {
    /// The failure a stage recorded on the item, if any.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, ItemError, Pipeline, StageSpec};
    /// let no = stage_fn(|_| Err("refused".into()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("no", no)).build()?;
    /// let out = p.submit(b"x")?.wait().or_else(ItemError::into_output)?; // keep failed items too
    /// assert_eq!(out.failure().map(|f| f.message), Some("refused".to_owned()));
    /// # drop(out);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn failure(&self) -> Option<StageFailure> {
        let slot = self.slot.as_ref().expect("held until drop");
        if slot.header(&self.shared.seg).status != STATUS_FAILED {
            return None;
        }
        let f = slot.failure(&self.shared.seg);
        let stage = f.failed_stage as usize;
        Some(StageFailure {
            stage,
            name: self.shared.stages.get(stage).map_or_else(|| "?".into(), |s| s.name.clone()),
            message: slot.error_text(&self.shared.seg, f.error_len),
            worker_died: (f.died_pid != 0).then_some(f.died_pid),
            timed_out: (f.timeout_ms != 0).then(|| std::time::Duration::from_millis(f.timeout_ms.into())),
            violation: crate::Violation::from_code(
                f.violation,
                f.violation_detail,
                self.shared.stages.get(stage).and_then(|s| s.sandbox.as_ref()),
            ),
        })
    }

    /// The item's slot header as it lies in the segment: what the stages recorded.
    fn slot_header(&self) -> SlotHeader {
        self.slot.as_ref().expect("held until drop").header(&self.shared.seg)
    }

    /// The item's index: its position among the inputs of the [`Map`](crate::Map)
    /// or pool map that yielded it, or else its submission number (the pipeline's
    /// items counted from 0).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The runner that last ran a stage on the item: which stage, which of its
    /// replicas (a [`Pool`](crate::Pool)'s worker number), in which process. `None`
    /// if no stage wanted the item.
    pub fn ran_on(&self) -> Option<RanOn> {
        let header = self.slot_header();
        let record = (header.ran_by as usize).checked_sub(1)?;
        let (stage, info) =
            self.shared.stages.iter().enumerate().find(|(_, s)| s.records.contains(&record))?;
        Some(RanOn { stage, replica: record - info.records.start, pid: header.ran_by_pid })
    }

    /// True if stage `stage` processed the item (its determiner wanted it).
    pub fn stage_ran(&self, stage: usize) -> bool {
        crate::frame::has_run(&self.slot_header(), stage)
    }

    /// The item's bytes as a slice of `U` (frames are 128-byte aligned): a pool
    /// task's array of `f64`, say.
    pub fn cast_slice<U: Pod>(&self) -> Result<&[U], FrameError> {
        bytemuck::try_cast_slice(self)
            .map_err(|_| FrameError::Header { needed: std::mem::size_of::<U>(), len: self.len() })
    }

    /// The leading `H` of the item's bytes.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let add = StageSpec::with_stage("add", stage_fn(|f| { *f.header_mut::<u64>()? += 1; Ok(()) }));
    /// let p = Pipeline::builder().stage(add).build()?;
    /// let out = p.submit(&41u64.to_ne_bytes())?.wait()?;
    /// assert_eq!(*out.header::<u64>()?, 42); // read in place
    /// # drop(out);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn header<H: Pod>(&self) -> Result<&H, FrameError> {
        header_of(self)
    }
}

/// Where an item was last worked on; see [`Output::ran_on`].
///
/// ```
/// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
/// let p = Pipeline::builder().stage(StageSpec::with_stage("id", stage_fn(|_| Ok(())))).build()?;
/// let out = p.submit(b"x")?.wait()?;
/// let on = out.ran_on().expect("the stage ran");
/// assert_eq!((on.stage, on.replica, on.pid), (0, 0, std::process::id())); // a thread stage
/// # drop(out);
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RanOn {
    /// The stage.
    pub stage: usize,
    /// Which of its replicas, from 0 (a pool's worker number).
    pub replica: usize,
    /// The process it ran in (this process for a thread stage).
    pub pid: u32,
}

impl std::ops::Deref for Output {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let slot = self.slot.as_ref().expect("held until drop");
        &slot.payload(&self.shared.seg)[..self.len as usize]
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").field("len", &self.len()).field("failure", &self.failure()).finish()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.shared.book.lock().release(slot, self.ticket);
            self.shared.done.notify_all();
        }
    }
}
