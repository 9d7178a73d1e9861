//! Taking results out: [`Map`] streams inputs through and yields their results in
//! input or completion order; [`Completions`] yields detached submissions' results.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytemuck::Pod;

use super::handles::{self, Output};
use super::submit::{Input, Scratch};
use super::{ItemError, Pipeline, SubmitError};

impl Pipeline {
    /// Results of items submitted with [`submit_batch`](Self::submit_batch) or
    /// [`NewFrame::submit_detached`](crate::NewFrame::submit_detached), in completion
    /// order. Ends when none is in flight.
    ///
    /// See [`submit_batch`](Self::submit_batch) for an example.
    pub fn completions(&self) -> Completions<'_> {
        Completions { pipeline: self }
    }

    /// Runs every input through the pipeline and yields the results in input order,
    /// keeping up to `max_in_flight` items in flight. The fastest way to stream
    /// items through: submission is batched, and the caller never deadlocks itself.
    /// Inputs are byte slices or slices of any `bytemuck::Pod` type; the iterator is
    /// consumed lazily, so it may be endless or larger than memory.
    /// [`Output::index`] is each result's position among the inputs.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, ItemError, Pipeline, StageSpec};
    /// let p = Pipeline::builder()
    ///     .stage(StageSpec::with_stage("odd only", stage_fn(|f| match f.bytes()[0] % 2 {
    ///         1 => Ok(()),
    ///         _ => Err("even".into()),
    ///     })))
    ///     .build()?;
    /// for result in p.map((0..100u8).map(|i| [i])) {
    ///     match result {
    ///         Ok(out) => assert_eq!(out.index() % 2, 1),
    ///         Err(ItemError::Stage { output, .. }) => assert_eq!(output.index() % 2, 0),
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// }
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<I, T>(&self, inputs: I) -> Map<'_, I::IntoIter, T>
    where
        I: IntoIterator,
        I::Item: AsRef<[T]>,
        T: Pod,
    {
        Map::new(self, inputs.into_iter(), true, false)
    }

    /// Like [`map`](Self::map), but yields each result as soon as it is out, tagged
    /// with its input position ([`Output::index`]).
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// let mut got: Vec<(u64, u8)> =
    ///     p.map_unordered([b"a", b"b"]).map(|o| o.map(|o| (o.index(), o[0]))).collect::<Result<_, _>>()?;
    /// got.sort();
    /// assert_eq!(got, [(0, b'A'), (1, b'B')]); // each tagged with its input's position
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_unordered<I, T>(&self, inputs: I) -> Map<'_, I::IntoIter, T>
    where
        I: IntoIterator,
        I::Item: AsRef<[T]>,
        T: Pod,
    {
        Map::new(self, inputs.into_iter(), false, false)
    }
}

/// Results of detached submissions; see [`Pipeline::completions`]. An iterator that
/// blocks, and a `futures_core::Stream` that awaits.
///
/// ```
/// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
/// let p = Pipeline::builder().stage(StageSpec::with_stage("noop", stage_fn(|_| Ok(())))).build()?;
/// assert_eq!(p.submit_batch((0..10u8).map(|i| [i]))?, 10);
/// let mut firsts: Vec<u8> = p.completions().map(|r| r.map(|out| out[0])).collect::<Result<_, _>>()?;
/// firsts.sort();
/// assert_eq!(firsts, (0..10).collect::<Vec<_>>());
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "an iterator does nothing until it is consumed"]
pub struct Completions<'p> {
    pipeline: &'p Pipeline,
}

impl Iterator for Completions<'_> {
    type Item = Result<Output, ItemError>;

    fn next(&mut self) -> Option<Self::Item> {
        let shared = &self.pipeline.shared;
        shared
            .wait_until(None, |book| {
                if let Some(ticket) = book.finished.pop_front() {
                    return Some(handles::take(shared, book, ticket));
                }
                (!book.has_detached_pending()).then_some(None)
            })
            .flatten()
    }
}

/// `Completions` as an async stream (`futures_core::Stream`): the next detached
/// result, awaited without blocking the thread; `None` once none is in flight.
impl futures_core::Stream for Completions<'_> {
    type Item = Result<Output, ItemError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let shared = &self.pipeline.shared;
        shared.collect_now();
        let mut book = shared.book.lock();
        if let Some(ticket) = book.finished.pop_front() {
            return std::task::Poll::Ready(handles::take(shared, &mut book, ticket));
        }
        if !book.has_detached_pending() {
            return std::task::Poll::Ready(None);
        }
        if book.wait_for_completion(cx.waker()) {
            shared.async_waiting.notify_one(); // the driver collects for us
        }
        std::task::Poll::Pending
    }
}

/// Results of [`Pipeline::map`], [`Pipeline::map_unordered`] and the
/// [`Pool`](crate::Pool)'s maps: `Ok(Output)`, or the item's [`ItemError`], each
/// tagged with its input position ([`Output::index`]).
///
/// Dropping it midway gives back what it had in flight: their frames return to the
/// pipeline as they come out.
///
/// ```
/// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
/// let p = Pipeline::builder()
///     .stage(StageSpec::with_stage("upper", stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()))))
///     .max_in_flight(2)
///     .build()?;
/// let words = ["a", "b", "c", "d", "e"];
/// let outs: Vec<String> = p
///     .map(words.iter().map(|w| w.as_bytes())) // 5 inputs through 2 frames, in input order
///     .map(|r| r.map(|o| String::from_utf8_lossy(&o).into_owned()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(outs, ["A", "B", "C", "D", "E"]);
/// # p.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "an iterator does nothing until it is consumed"]
pub struct Map<'p, I, T = u8> {
    pipeline: &'p Pipeline,
    inputs: I,
    /// Yield in input order (else in completion order).
    ordered: bool,
    /// Run an item again, once, when the worker holding it died.
    retry: bool,
    exhausted: bool,
    /// Items in the pipeline (result not taken yet), in input order: what the refill
    /// threshold counts. Results taken and not yet yielded hold their frames, but
    /// counting them would let the pipeline run dry behind a run of results.
    sent: VecDeque<Sent>,
    /// Results taken and not yet yielded, with their input index, in the order they
    /// are yielded. In input order, all of them come before anything in `sent`.
    ready: VecDeque<(u64, Result<Output, ItemError>)>,
    /// Inputs larger than a frame, failed in their place: the `REFUSED` entries of
    /// `sent`, in the same order.
    refused: VecDeque<ItemError>,
    /// Items whose worker died, to be run again (`retry`), with their failed results.
    dead: Vec<(Sent, Result<Output, ItemError>)>,
    /// Inputs submitted so far: the next one's index.
    submitted: u64,
    error: Option<SubmitError>,
    scratch: Scratch,
    _inputs: PhantomData<fn() -> T>,
}

/// The ticket of a `sent` entry that never went in: its result is in `refused`.
const REFUSED: u32 = u32::MAX;

/// One input in flight.
struct Sent {
    index: u64,
    /// Its bytes, kept while it may still be run again (`retry`).
    retry: Option<Box<[u8]>>,
    ticket: u32,
    /// It was run again after its worker died.
    rerun: bool,
}

impl<'p, I, T> Map<'p, I, T>
where
    I: Iterator,
    I::Item: AsRef<[T]>,
    T: Pod,
{
    pub(crate) fn new(pipeline: &'p Pipeline, inputs: I, ordered: bool, retry: bool) -> Self {
        Self {
            pipeline,
            inputs,
            ordered,
            retry,
            exhausted: false,
            sent: VecDeque::new(),
            ready: VecDeque::new(),
            refused: VecDeque::new(),
            dead: Vec::new(),
            submitted: 0,
            error: None,
            scratch: Scratch::default(),
            _inputs: PhantomData,
        }
    }

    /// Submits inputs into every free frame, in one batch.
    fn fill(&mut self) {
        let (sent, refused, submitted, retry) =
            (&mut self.sent, &mut self.refused, &mut self.submitted, self.retry);
        let batch =
            self.pipeline.launch_batch(&mut self.inputs, usize::MAX, false, &mut self.scratch, |input| {
                let index = *submitted;
                *submitted += 1;
                sent.push_back(match input {
                    Input::Launched { ticket, bytes } => {
                        Sent { index, retry: retry.then(|| bytes.into()), ticket, rerun: false }
                    }
                    // Larger than a frame: it fails alone, in its place; the rest go on.
                    Input::TooLarge { requested, capacity } => {
                        refused.push_back(ItemError::TooLarge { index, requested, capacity });
                        Sent { index, retry: None, ticket: REFUSED, rerun: false }
                    }
                });
                true
            });
        match batch {
            Ok(false) => {}
            Ok(true) => self.exhausted = true,
            Err(e) => {
                self.error.get_or_insert(e);
                self.exhausted = true;
            }
        }
    }

    /// Waits until a result can be yielded (or an item is to be run again), taking
    /// every finished one it may: in order, the run behind the oldest (a scan past it
    /// would cost O(window) on every wake, and what it finds cannot be yielded yet);
    /// out of order, anything finished.
    fn collect(&mut self) {
        let shared = &self.pipeline.shared;
        let (sent, ready, refused, dead) =
            (&mut self.sent, &mut self.ready, &mut self.refused, &mut self.dead);
        let ordered = self.ordered;
        let started = Instant::now();
        shared.wait_until(None, |book| {
            let before = (ready.len(), dead.len());
            let mut i = 0;
            while let Some(s) = sent.get(i) {
                let result = if s.ticket == REFUSED {
                    Err(refused.pop_front().expect("one per REFUSED entry"))
                } else {
                    match handles::take(shared, book, s.ticket) {
                        Some(r) => r,
                        None if ordered => break,
                        None => {
                            i += 1;
                            continue;
                        }
                    }
                };
                let s = sent.remove(i).expect("looked at above");
                match result {
                    Err(ItemError::Stage { failure, output }) if died(&failure) && s.rerun => {
                        ready.push_back((s.index, Err(ItemError::Poison { failure, output })));
                    }
                    Err(ItemError::Stage { ref failure, .. }) if died(failure) && s.retry.is_some() => {
                        // Kept, not dropped: dropping an output takes the book's lock,
                        // which this closure holds. In order, nothing behind it may be
                        // yielded first.
                        dead.push((s, result));
                        if ordered {
                            break;
                        }
                    }
                    r => ready.push_back((s.index, r)),
                }
            }
            ((ready.len(), dead.len()) != before).then_some(())
        });
        // Back-pressure as `map` feels it: its window is full until a result is in.
        shared.submit_waited_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Runs the items whose worker died again, once; in order, ahead of the rest.
    fn retry_deaths(&mut self) {
        for (mut s, failed) in std::mem::take(&mut self.dead) {
            drop(failed); // its frame is free for the rerun
            let bytes = s.retry.take().expect("only items with their bytes are retried");
            match self.pipeline.resubmit(&bytes) {
                Ok(ticket) => {
                    s.ticket = ticket;
                    s.rerun = true;
                    self.sent.push_front(s);
                }
                Err(e) => self.ready.push_back((s.index, Err(ItemError::Submit(e)))),
            }
        }
    }
}

/// Whether a stage failure is its worker's death, other than for a timeout.
fn died(failure: &crate::StageFailure) -> bool {
    failure.worker_died.is_some() && failure.timed_out.is_none()
}

impl<I, T> Iterator for Map<'_, I, T>
where
    I: Iterator,
    I::Item: AsRef<[T]>,
    T: Pod,
{
    type Item = Result<Output, ItemError>;

    fn next(&mut self) -> Option<Self::Item> {
        let window = self.pipeline.max_in_flight();
        loop {
            if let Some((index, r)) = self.ready.pop_front() {
                return Some(handles::with_index(r, index));
            }
            // Refill in batches of at least half the window: one lock of the book and
            // one ring publish for many items.
            if !self.exhausted && self.sent.len() <= window / 2 {
                self.fill();
            }
            if self.sent.is_empty() {
                if let Some(e) = self.error.take() {
                    return Some(Err(ItemError::Submit(e)));
                }
                if self.exhausted {
                    return None;
                }
                // Nothing of ours is in flight and no frame was free: frames are held
                // by results still alive (ours, or another submitter's).
                if self.pipeline.shared.book.lock().is_saturated() {
                    // Terminal: waiting would deadlock, and yielding it again forever
                    // would make `collect()` grow without end.
                    self.exhausted = true;
                    return Some(Err(ItemError::Saturated));
                }
                self.pipeline.wait_for_space();
                continue;
            }
            self.collect();
            self.retry_deaths();
        }
    }
}

impl<I, T> Drop for Map<'_, I, T> {
    fn drop(&mut self) {
        self.ready.clear(); // results taken and not yielded give their frames back here
        let pending: Vec<u32> = self.sent.iter().map(|s| s.ticket).filter(|&t| t != REFUSED).collect();
        if pending.is_empty() {
            return;
        }
        let shared = &self.pipeline.shared;
        let mut book = shared.book.lock();
        for ticket in pending {
            book.abandon(ticket);
        }
        shared.done.notify_all();
    }
}
