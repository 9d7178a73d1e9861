//! Putting items in: frames reserved and filled in place, copies of byte slices, and
//! batches (one lock of the book and one ring publish per batch).

use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use bytemuck::Pod;

use super::handles::NewFrame;
use super::{Pipeline, SubmitError, Ticket, TrySubmitError};
use crate::frame::OwnedSlot;
use crate::memory::{Segment, SlotHeader};

impl Pipeline {
    fn reserve(&self, len: usize, block: bool) -> Result<Option<NewFrame>, SubmitError> {
        let capacity = self.frame_capacity();
        if len > capacity {
            return Err(SubmitError::TooLarge { requested: len, capacity });
        }
        loop {
            {
                let mut book = self.shared.book.lock();
                self.shared.check_open(&book)?;
                if let Some((slot, ticket, generation)) = book.reserve() {
                    return Ok(Some(NewFrame {
                        shared: self.shared.clone(),
                        slot: Some(slot),
                        ticket,
                        generation,
                        len,
                    }));
                }
            }
            if !block {
                return Ok(None);
            }
            self.wait_for_space();
        }
    }

    /// Blocks (collecting results meanwhile) until a frame is free or submitting
    /// cannot succeed.
    pub(super) fn wait_for_space(&self) {
        let closed = &self.shared.closed;
        let started = Instant::now();
        self.shared.wait_until(None, |book| {
            (!book.free_tickets.is_empty() || book.failure.is_some() || closed.load(Ordering::Acquire))
                .then_some(())
        });
        let waited = started.elapsed().as_nanos() as u64;
        self.shared.submit_waited_ns.fetch_add(waited, Ordering::Relaxed);
    }

    /// Reserves a frame of `len` bytes to fill in place, blocking while
    /// `max_in_flight` items are in flight.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// let mut frame = p.alloc(3)?; // filled in place: no copy
    /// frame.copy_from_slice(b"abc");
    /// assert_eq!(&frame.submit()?.wait()?[..], b"ABC");
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn alloc(&self, len: usize) -> Result<NewFrame, SubmitError> {
        Ok(self.reserve(len, true)?.expect("blocking reserve returns a frame"))
    }

    /// Reserves a frame without blocking; `Ok(None)` when `max_in_flight` are in flight.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let id = StageSpec::with_stage("id", stage_fn(|_| Ok(())));
    /// let p = Pipeline::builder().stage(id).max_in_flight(1).build()?;
    /// let held = p.try_alloc(1)?.expect("one frame is free");
    /// assert!(p.try_alloc(1)?.is_none(), "full: no blocking");
    /// drop(held); // an unsubmitted frame goes back
    /// assert!(p.try_alloc(1)?.is_some());
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_alloc(&self, len: usize) -> Result<Option<NewFrame>, SubmitError> {
        self.reserve(len, false)
    }

    /// Like [`alloc`](Self::alloc), but awaits a free frame instead of blocking the
    /// thread: an async task that submits into a full pipeline yields to its runtime
    /// until a result is released. Works under any executor (the pipeline's own
    /// thread collects results while futures wait).
    ///
    /// ```
    /// # use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// # let p = Pipeline::builder().stage(StageSpec::with_stage("noop", stage_fn(|_| Ok(())))).build()?;
    /// # let block_on = |f| futures_executor_free::block_on(f);
    /// # mod futures_executor_free {
    /// #     pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #         struct W(std::thread::Thread);
    /// #         impl std::task::Wake for W { fn wake(self: std::sync::Arc<Self>) { self.0.unpark() } }
    /// #         let w = std::sync::Arc::new(W(std::thread::current())).into();
    /// #         let mut cx = std::task::Context::from_waker(&w);
    /// #         let mut f = std::pin::pin!(f);
    /// #         loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v } std::thread::park() }
    /// #     }
    /// # }
    /// let out = block_on(async {
    ///     let mut frame = p.alloc_async(3).await?;
    ///     frame.copy_from_slice(b"abc");
    ///     Ok::<_, Box<dyn std::error::Error>>(frame.submit()?.await?)
    /// })?;
    /// assert_eq!(&out[..], b"abc");
    /// # drop(out);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn alloc_async(&self, len: usize) -> Result<NewFrame, SubmitError> {
        std::future::poll_fn(|cx| {
            if let Some(frame) = self.reserve(len, false)? {
                return Poll::Ready(Ok(frame));
            }
            let mut book = self.shared.book.lock();
            // Re-checked under the lock a release takes to wake us: a frame freed
            // since `reserve` looked is not missed.
            if !book.free_tickets.is_empty()
                || book.failure.is_some()
                || self.shared.closed.load(Ordering::Acquire)
            {
                drop(book);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if book.wait_for_space(cx.waker()) {
                self.shared.async_waiting.notify_one(); // the driver collects for us
            }
            Poll::Pending
        })
        .await
    }

    /// Like [`submit`](Self::submit), but awaits room instead of blocking the thread
    /// (see [`alloc_async`](Self::alloc_async)). The ticket is a `Future` too.
    pub async fn submit_async(&self, data: &[u8]) -> Result<Ticket, SubmitError> {
        let mut frame = self.alloc_async(data.len()).await?;
        frame.copy_from_slice(data);
        frame.submit()
    }

    /// Copies `data` into a frame (the one copy) and submits it, blocking while
    /// `max_in_flight` items are in flight.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// let ticket = p.submit(b"abc")?;
    /// assert_eq!(&ticket.wait()?[..], b"ABC");
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit(&self, data: &[u8]) -> Result<Ticket, SubmitError> {
        let mut frame = self.alloc(data.len())?;
        frame.copy_from_slice(data);
        frame.submit()
    }

    /// Like [`submit`](Self::submit) but never blocks: a full pipeline gives `data` back.
    pub fn try_submit<T: AsRef<[u8]>>(&self, data: T) -> Result<Ticket, TrySubmitError<T>> {
        let mut frame = match self.reserve(data.as_ref().len(), false) {
            Ok(Some(f)) => f,
            Ok(None) => return Err(TrySubmitError::Full(data)),
            Err(e) => return Err(TrySubmitError::Failed(e, data)),
        };
        frame.copy_from_slice(data.as_ref());
        frame.submit().map_err(|e| TrySubmitError::Failed(e, data))
    }

    /// Submits many items with one lock and one ring publish per batch; their results
    /// come from [`completions`](Self::completions), in completion order. Blocks while
    /// `max_in_flight` items are in flight (so consume completions on another
    /// thread, or use [`map`](Self::map), which does both). Returns how many were
    /// submitted.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// assert_eq!(p.submit_batch([b"a", b"b", b"c"])?, 3);
    /// let mut got: Vec<u8> = p.completions().take(3).map(|o| o.map(|o| o[0])).collect::<Result<_, _>>()?;
    /// got.sort();
    /// assert_eq!(got, b"ABC");
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_batch<I>(&self, items: I) -> Result<usize, SubmitError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut items = items.into_iter().peekable();
        let mut scratch = Scratch::default();
        let mut count = 0;
        // Peeked: waiting for a frame with nothing left to submit would wait for
        // results nobody takes until this call returns.
        while items.peek().is_some() {
            if self.shared.book.lock().free_tickets.is_empty() {
                self.wait_for_space();
            }
            let mut too_large = None;
            let ended = self.launch_batch(&mut items, 256, true, &mut scratch, |input| match input {
                Input::Launched { .. } => {
                    count += 1;
                    true
                }
                Input::TooLarge { requested, capacity } => {
                    too_large = Some(SubmitError::TooLarge { requested, capacity });
                    false
                }
            })?;
            if let Some(e) = too_large {
                return Err(e);
            }
            if ended {
                break;
            }
        }
        Ok(count)
    }

    /// The one batch submission under `submit_batch` and [`Map`](crate::Map): reserves
    /// up to `limit` free frames under one lock of the book, fills one per input,
    /// gives the frames left over back and launches the filled ones with one ring
    /// publish. `seen` learns of each input, launched or too large for a frame, and
    /// says whether to go on with the next. `Ok(true)` once the inputs ran out or
    /// `seen` stopped them.
    pub(super) fn launch_batch<I, T>(
        &self,
        inputs: &mut I,
        limit: usize,
        detached: bool,
        scratch: &mut Scratch,
        mut seen: impl FnMut(Input<'_>) -> bool,
    ) -> Result<bool, SubmitError>
    where
        I: Iterator,
        I::Item: AsRef<[T]>,
        T: Pod,
    {
        let shared = &self.shared;
        let Scratch { reserved, launch, unused } = scratch;
        {
            let mut book = shared.book.lock();
            shared.check_open(&book)?;
            reserved.extend(std::iter::from_fn(|| book.reserve()).take(limit));
        }
        let capacity = shared.seg.layout().slot_capacity();
        let mut ended = false;
        'slots: for (mut slot, ticket, generation) in reserved.drain(..) {
            while !ended {
                let Some(data) = inputs.next() else {
                    ended = true;
                    break;
                };
                let bytes: &[u8] = bytemuck::cast_slice(data.as_ref());
                if bytes.len() > capacity {
                    ended = !seen(Input::TooLarge { requested: bytes.len(), capacity });
                    continue;
                }
                fill(&shared.seg, &mut slot, ticket, generation, bytes);
                ended = !seen(Input::Launched { ticket, bytes });
                launch.push((slot, ticket, detached));
                continue 'slots;
            }
            unused.push((slot, ticket));
        }
        let mut book = shared.book.lock();
        for (slot, ticket) in unused.drain(..) {
            book.release(slot, ticket);
        }
        if !launch.is_empty() {
            shared.launch(launch.drain(..), &mut book);
        }
        drop(book);
        if ended {
            shared.done.notify_all(); // frames went back
        }
        Ok(ended)
    }

    /// Submits `bytes` again as a new item (a map's retry), blocking for a frame;
    /// returns its ticket.
    pub(super) fn resubmit(&self, bytes: &[u8]) -> Result<u32, SubmitError> {
        let mut frame = self.alloc(bytes.len())?;
        frame.copy_from_slice(bytes);
        frame.launch_raw()
    }
}

fn fill(seg: &Segment, slot: &mut OwnedSlot, ticket: u32, generation: u32, data: &[u8]) {
    slot.payload_mut(seg)[..data.len()].copy_from_slice(data);
    let header = SlotHeader { len: data.len() as u32, ticket, generation, ..bytemuck::Zeroable::zeroed() };
    slot.reset(seg, &header);
}

/// An input as `launch_batch` handles it.
pub(super) enum Input<'a> {
    /// Filled into a frame and launched as `ticket`.
    Launched { ticket: u32, bytes: &'a [u8] },
    /// Larger than a frame: not submitted.
    TooLarge { requested: usize, capacity: usize },
}

/// Buffers `launch_batch` reuses, so streaming allocates nothing per batch.
#[derive(Default)]
pub(super) struct Scratch {
    reserved: Vec<(OwnedSlot, u32, u32)>,
    launch: Vec<(OwnedSlot, u32, bool)>,
    unused: Vec<(OwnedSlot, u32)>,
}
