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
    /// Items submitted and not yet yielded, in input order.
    sent: VecDeque<Sent>,
    /// Of those, the ones still in the pipeline (result not taken yet): what the
    /// refill threshold counts. Results taken and not yet yielded hold their frames,
    /// but counting them would let the pipeline run dry behind a run of results.
    in_flight: usize,
    /// Inputs submitted so far: the next one's index.
    submitted: u64,
    error: Option<SubmitError>,
    scratch: Scratch,
    _inputs: PhantomData<fn() -> T>,
}

/// One input in flight.
struct Sent {
    ticket: u32,
    index: u64,
    /// Its bytes, kept while it may still be run again (`retry`).
    retry: Option<Box<[u8]>>,
    /// It was run again after its worker died.
    rerun: bool,
    /// Its result, once taken from the book.
    result: Option<Result<Output, ItemError>>,
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
            in_flight: 0,
            submitted: 0,
            error: None,
            scratch: Scratch::default(),
            _inputs: PhantomData,
        }
    }

    /// Submits inputs into every free frame, in one batch.
    fn fill(&mut self) {
        let (sent, submitted, in_flight, retry) =
            (&mut self.sent, &mut self.submitted, &mut self.in_flight, self.retry);
        let batch =
            self.pipeline.launch_batch(&mut self.inputs, usize::MAX, false, &mut self.scratch, |input| {
                let index = *submitted;
                *submitted += 1;
                sent.push_back(match input {
                    Input::Launched { ticket, bytes } => {
                        *in_flight += 1;
                        Sent { ticket, index, retry: retry.then(|| bytes.into()), rerun: false, result: None }
                    }
                    // Larger than a frame: it fails alone, in its place; the rest go on.
                    Input::TooLarge { requested, capacity } => Sent {
                        ticket: u32::MAX,
                        index,
                        retry: None,
                        rerun: false,
                        result: Some(Err(ItemError::TooLarge { index, requested, capacity })),
                    },
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

    /// The next result to yield, if one is in: the oldest input's (in order), or any.
    fn pop_ready(&mut self) -> Option<Result<Output, ItemError>> {
        let at = if self.ordered {
            self.sent.front().is_some_and(|s| s.result.is_some()).then_some(0)?
        } else {
            self.sent.iter().position(|s| s.result.is_some())?
        };
        let s = self.sent.remove(at).expect("found above");
        Some(handles::with_index(s.result.expect("found above"), s.index))
    }

    /// Waits until a result this map can yield is in, taking the finished ones it can
    /// yield next on the way (one lock of the book for all of them).
    fn collect(&mut self) {
        let shared = &self.pipeline.shared;
        let (sent, in_flight, ordered) = (&mut self.sent, &mut self.in_flight, self.ordered);
        let started = Instant::now();
        shared.wait_until(None, |book| {
            // In order, only the run of finished items behind the oldest is taken (a
            // scan past it would cost O(window) on every wake, and what it finds cannot
            // be yielded yet); out of order, anything finished.
            let mut any = false;
            for s in sent.iter_mut().filter(|s| s.result.is_none()) {
                match handles::take(shared, book, s.ticket) {
                    Some(r) => {
                        s.result = Some(r);
                        *in_flight -= 1;
                        any = true;
                    }
                    None if ordered => break,
                    None => {}
                }
            }
            let ready = if ordered { sent.front().is_some_and(|s| s.result.is_some()) } else { any };
            ready.then_some(())
        });
        // Back-pressure as `map` feels it: its window is full until a result is in.
        shared.submit_waited_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Runs again, once, each item whose worker died holding it (with `retry` on); one
    /// that kills the replacement too is poison.
    fn retry_deaths(&mut self) {
        if !self.retry {
            return;
        }
        for s in self.sent.iter_mut() {
            let died = matches!(&s.result, Some(Err(ItemError::Stage { failure, .. }))
                if failure.worker_died.is_some() && failure.timed_out.is_none());
            if !died {
                continue;
            }
            if s.rerun {
                if let Some(Err(ItemError::Stage { failure, output })) = s.result.take() {
                    s.result = Some(Err(ItemError::Poison { failure, output }));
                }
                continue;
            }
            let Some(bytes) = s.retry.take() else { continue };
            s.rerun = true;
            s.result = None; // drops the failed output: its frame is free for the rerun
            match self.pipeline.resubmit(&bytes) {
                Ok(ticket) => {
                    s.ticket = ticket;
                    self.in_flight += 1;
                }
                Err(e) => s.result = Some(Err(ItemError::Submit(e))),
            }
        }
    }
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
            if let Some(r) = self.pop_ready() {
                return Some(r);
            }
            // Refill in batches of at least half the window: one lock of the book and
            // one ring publish for many items.
            if !self.exhausted && self.in_flight <= window / 2 {
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
        let pending: Vec<u32> = self.sent.iter().filter(|s| s.result.is_none()).map(|s| s.ticket).collect();
        self.sent.clear(); // results taken and not yielded give their frames back here
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
