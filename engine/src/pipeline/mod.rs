//! The user API: build a pipeline of stages, submit frames, take results, shut down.
//!
//! This layer has no `unsafe`: it composes the segment, rings, frames and workers
//! below it.

mod collector;
mod error;
mod handles;
pub(crate) mod restart;
mod shared;
mod spec;
mod stats;
mod supervisor;
mod wiring;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

pub use error::{BuildError, EngineFailure, ItemError, StageFailure, SubmitError, TrySubmitError};
pub use handles::{NewFrame, Output, Ticket};
pub use spec::{OnComplete, StageEvent, StageOutcome, StageSpec, DEFAULT_STREAM_CAPACITY, MAX_STAGE_TIMEOUT};
pub use stats::{PipelineStats, StageStats};

use self::shared::{Book, Entry, Shared, StageInfo, State, Submissions};
use self::spec::Placement;
use self::supervisor::Supervisor;
use self::wiring::{RunnerId, Wiring};
use crate::frame::OwnedSlot;
use crate::memory::{
    Layout, Segment, SlotHeader, StageRecord, MAX_REPLICAS, MAX_RINGS, MAX_SLOTS, MAX_STAGES, ROLE_CONSUMER,
    ROLE_PRODUCER, STATE_SHUTDOWN,
};
use crate::route::{Gather, Scatter};
use crate::stage::{find_stage, BoxError, Stage};
use crate::worker::runner::{RunEnd, StageRunner};
use crate::worker::spawn::{self, WorkerProcess};

/// Default bound on items in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default frame capacity: 64 KiB.
pub const DEFAULT_FRAME_CAPACITY: usize = 64 * 1024;
/// How long `Drop` lets in-flight items finish before failing them.
pub const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker gets to exit after shutdown before it is killed.
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Configures and builds a [`Pipeline`].
///
/// ```no_run
/// use ringpipe_engine::{Pipeline, StageSpec};
/// let pipeline = Pipeline::builder()
///     .stage(StageSpec::process("compress").params(vec![3]))
///     .stage(StageSpec::thread("encrypt"))
///     .max_in_flight(128)
///     .frame_capacity(1 << 20)
///     .build()?;
/// # Ok::<(), ringpipe_engine::BuildError>(())
/// ```
pub struct Builder {
    stages: Vec<StageSpec>,
    max_in_flight: usize,
    frame_capacity: usize,
    startup_timeout: Duration,
}

impl Builder {
    /// Appends a stage.
    pub fn stage(mut self, stage: StageSpec) -> Self {
        self.stages.push(stage);
        self
    }

    /// Appends stages.
    pub fn stages(mut self, stages: impl IntoIterator<Item = StageSpec>) -> Self {
        self.stages.extend(stages);
        self
    }

    /// Most items in flight (submitted, or finished but not yet released); `submit`
    /// blocks and `try_submit` gives the item back beyond it (`atbu.mp_pipeline`'s
    /// `max_simultaneous_work_items`). At least 1.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Bytes each frame can hold (default 64 KiB). The segment holds
    /// `max_in_flight + stages` frames.
    pub fn frame_capacity(mut self, bytes: usize) -> Self {
        self.frame_capacity = bytes;
        self
    }

    /// How long worker processes get to report ready (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Creates the segment, starts the workers and threads, and waits until every
    /// worker has checked the segment and built its stage.
    pub fn build(self) -> Result<Pipeline, BuildError> {
        if std::env::var_os(crate::worker::WORKER_ENV).is_some() {
            return Err(BuildError::InsideWorker);
        }
        if self.stages.is_empty() {
            return Err(BuildError::NoStages);
        }
        let n = self.stages.len();
        let pairs = check_pairs(&self.stages)?;
        check_replicas(&self.stages)?;
        check_timeouts(&self.stages)?;
        let wiring = Wiring::new(
            &self.stages.iter().map(|s| s.replicas).collect::<Vec<_>>(),
            &self.stages.iter().map(|s| s.ordered).collect::<Vec<_>>(),
        );
        let runners: Vec<RunnerId> = wiring.runners().collect();
        let out_of_range = |what, value: usize, max: usize| {
            BuildError::Config(crate::memory::LayoutError::OutOfRange {
                what,
                value: value as u64,
                max: max as u64,
            })
        };
        if runners.len() > MAX_STAGES {
            return Err(out_of_range("replicas of all stages together", runners.len(), MAX_STAGES));
        }
        if wiring.ring_count() > MAX_RINGS {
            return Err(out_of_range("rings between replicated stages", wiring.ring_count(), MAX_RINGS));
        }
        // Slots: a spare per runner, a partner per pair, then one per item in flight.
        let reserved = runners.len() + pairs.len();
        if self.max_in_flight == 0 || self.max_in_flight > MAX_SLOTS.saturating_sub(reserved) {
            return Err(out_of_range(
                "max_in_flight",
                self.max_in_flight,
                MAX_SLOTS.saturating_sub(reserved),
            ));
        }
        // Resolve stage code before starting anything: an instance per thread runner.
        let mut local: Vec<Option<Box<dyn Stage>>> = Vec::with_capacity(runners.len());
        let mut infos = Vec::with_capacity(n);
        let mut blob = Vec::new();
        let mut records = Vec::with_capacity(runners.len());
        let mut streams_size = 0u64;
        let mut last_producer = None;
        for (i, spec) in self.stages.into_iter().enumerate() {
            let registered = || {
                find_stage(&spec.name)
                    .ok_or_else(|| BuildError::UnknownStage { stage: i, name: spec.name.clone() })
            };
            let init_error = |e: BoxError| BuildError::StageInit {
                stage: i,
                name: spec.name.clone(),
                message: e.to_string(),
            };
            let on_thread = !matches!(spec.placement, Placement::Process);
            match spec.placement {
                Placement::Process => {
                    registered()?;
                    local.extend((0..spec.replicas).map(|_| None));
                }
                Placement::Thread => {
                    let factory = registered()?;
                    for _ in 0..spec.replicas {
                        local.push(Some((factory.make)(&spec.params).map_err(init_error)?));
                    }
                }
                Placement::ThreadWith(stage) => local.push(Some(stage)),
            }
            let too_long = |what| out_of_range(what, usize::MAX, u32::MAX as usize);
            let name_offset = blob.len() as u64;
            blob.extend_from_slice(spec.name.as_bytes());
            let params_offset = blob.len() as u64;
            blob.extend_from_slice(&spec.params);
            let mut record = StageRecord {
                name_offset,
                params_offset,
                name_len: u32::try_from(spec.name.len()).map_err(|_| too_long("stage name length"))?,
                params_len: u32::try_from(spec.params.len())
                    .map_err(|_| too_long("stage parameters length"))?,
                ..StageRecord::default()
            };
            if let Some(capacity) = spec.stream {
                record.role = ROLE_PRODUCER;
                record.stream_offset = streams_size;
                record.stream_capacity = capacity as u64;
                let pair = pairs.iter().position(|&p| p == i).expect("check_pairs lists every producer");
                record.partner_slot = (runners.len() + pair) as u32;
                streams_size += Layout::pair_size(capacity as u64);
                last_producer = Some(i);
            } else if last_producer.is_some_and(|p| p + 1 == i) {
                record.role = ROLE_CONSUMER;
            }
            for replica in 0..spec.replicas {
                let id = RunnerId { stage: i, replica };
                let spare_slot = records.len() as u32;
                let mut r = wiring.record(id, StageRecord { spare_slot, ..record });
                if spec.replicas > 1 {
                    // Replicas run heavy items: each goes on as soon as it is done, so
                    // the next stage starts on it while the other replicas work. A
                    // single stage batches its publishes (the 64-byte hop loses a third
                    // of its rate publishing each item).
                    r.publish_every = 1;
                }
                records.push(r);
            }
            infos.push(StageInfo {
                name: display_name(&spec.name, &spec.params),
                on_complete: spec.on_complete,
                timeout: spec.timeout,
                records: records.len() - spec.replicas..records.len(),
                on_thread,
            });
        }
        let layout = Layout::with_rings(
            records.len(),
            wiring.ring_count(),
            self.max_in_flight + reserved,
            self.frame_capacity,
            blob.len(),
            streams_size,
        )
        .map_err(BuildError::Config)?;
        let seg = Arc::new(Segment::create(layout).map_err(BuildError::Segment)?);
        seg.write_blob(&blob);
        for (i, r) in records.iter().enumerate() {
            seg.write_stage(i, *r);
        }

        // SAFETY: the layout gives the parent the slots past the runners' spare and
        // partner slots, and this segment was created just now: no token exists yet.
        let slot = |i: usize| unsafe { OwnedSlot::assigned(&seg, i as u32) }.expect("within the layout");
        let book = Book {
            free_slots: (reserved..reserved + self.max_in_flight).rev().map(slot).collect(),
            free_tickets: (0..self.max_in_flight as u32).rev().collect(),
            entries: (0..self.max_in_flight).map(|_| Entry { generation: 0, state: State::Free }).collect(),
            finished: VecDeque::new(),
            in_flight: 0,
            failure: None,
            wakers: 0,
        };
        let submissions = Scatter::new(wiring.submission_rings().map(|r| seg.ring(r).0).collect());
        let (result_rings, ordered) = wiring.result_rings();
        let results = Gather::new(result_rings.map(|r| seg.ring(r).1).collect(), ordered, false);
        let pair_refs = pairs
            .iter()
            .map(|&p| {
                let first = runners.iter().position(|r| r.stage == p).expect("every stage has a runner");
                seg.pair(&records[first])
            })
            .collect();
        let shared = Arc::new(Shared {
            pairs: pair_refs,
            seg: seg.clone(),
            has_callbacks: infos.iter().any(|s| s.on_complete.is_some()),
            stages: infos,
            tickets: self.max_in_flight,
            book: Mutex::new(book),
            done: Condvar::new(),
            input: Mutex::new(Submissions { rings: submissions, next_seq: 0 }),
            output: Mutex::new(collector::Collector::new(results)),
            async_waiting: Condvar::new(),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            restarts: std::sync::atomic::AtomicUsize::new(0),
            started: Instant::now(),
            submit_waited_ns: std::sync::atomic::AtomicU64::new(0),
        });
        let mut pipeline = Pipeline {
            shared: shared.clone(),
            workers: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
            collector: None,
            supervisor: None,
            finished: false,
        };
        // From here on, an early return drops `pipeline`, which stops what started.
        pipeline.start_workers(&runners, &local, self.startup_timeout)?;
        for (r, stage) in local.into_iter().enumerate() {
            let Some(stage) = stage else { continue };
            let RunnerId { stage: i, replica } = runners[r];
            let runner = StageRunner::new(seg.clone(), r, stage).map_err(|e| BuildError::StageInit {
                stage: i,
                name: shared.stages[i].name.clone(),
                message: e.to_string(),
            })?;
            let runner = runner.in_parent();
            let sh = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ringpipe-stage-{i}.{replica}"))
                .spawn(move || {
                    let end = runner.run();
                    if let RunEnd::Corrupt(why) = &end {
                        sh.fail(EngineFailure::Corrupt(why.clone()));
                    }
                    end
                })
                .map_err(BuildError::Spawn)?;
            pipeline.threads.push((i, handle));
        }
        let sh = shared.clone();
        pipeline.collector = Some(
            std::thread::Builder::new()
                .name("ringpipe-async".into())
                .spawn(move || collector::drive_async(sh))
                .map_err(BuildError::Spawn)?,
        );
        pipeline.supervisor =
            Some(Supervisor::start(shared, pipeline.workers.clone()).map_err(BuildError::Spawn)?);
        Ok(pipeline)
    }
}

/// The name statistics and events show: a chain's is its links' names joined by `+`.
fn display_name(name: &str, params: &[u8]) -> String {
    if name == crate::CHAIN {
        if let Ok(links) = crate::Chain::parse_params(params).map(|l| l.into_iter().map(|(n, _)| n)) {
            return links.collect::<Vec<_>>().join("+");
        }
    }
    name.to_owned()
}

/// How a pipeline ended; see [`Pipeline::shutdown`].
#[derive(Debug)]
pub struct ShutdownReport {
    /// Every item finished, every stage stopped on request, no worker was killed.
    pub graceful: bool,
    /// Why the pipeline broke, if it did.
    pub failure: Option<EngineFailure>,
    /// How each worker process ended.
    pub workers: Vec<WorkerExit>,
}

impl ShutdownReport {
    /// `atbu.mp_pipeline`'s `was_graceful_shutdown`.
    pub fn was_graceful(&self) -> bool {
        self.graceful
    }
}

/// How one worker process ended.
#[derive(Debug)]
pub struct WorkerExit {
    /// Its stage.
    pub stage: usize,
    /// Its process id.
    pub pid: u32,
    /// Its exit status, if it could be collected.
    pub status: Option<std::process::ExitStatus>,
    /// True if it had to be killed.
    pub killed: bool,
}

/// A running pipeline: frames go in, through every stage in order, and come out.
///
/// Stages run in worker processes that map the same shared segment, or on threads
/// of this process; items travel as descriptors through single-producer
/// single-consumer rings, their bytes never copied between stages.
///
/// All methods take `&self`: any number of threads may submit and wait at once.
///
/// ```no_run
/// use ringpipe_engine::{stage_fn, Frame, Pipeline, StageSpec};
/// let pipeline = Pipeline::builder()
///     .stage(StageSpec::with_stage("upper", stage_fn(|f: &mut Frame<'_>| {
///         f.bytes_mut().make_ascii_uppercase();
///         Ok(())
///     })))
///     .build()?;
/// let out = pipeline.submit(b"hello")?.wait()?;
/// assert_eq!(&out[..], b"HELLO");
/// drop(out);
/// assert!(pipeline.shutdown().was_graceful());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pipeline {
    shared: Arc<Shared>,
    workers: Arc<Mutex<Vec<WorkerProcess>>>,
    threads: Vec<(usize, JoinHandle<RunEnd>)>,
    collector: Option<JoinHandle<()>>,
    supervisor: Option<Supervisor>,
    /// Set once `finish` ran (by `shutdown` or `Drop`).
    finished: bool,
}

impl Pipeline {
    /// Starts configuring a pipeline.
    pub fn builder() -> Builder {
        Builder {
            stages: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            frame_capacity: DEFAULT_FRAME_CAPACITY,
            startup_timeout: Duration::from_secs(30),
        }
    }

    /// Starts a worker process for every runner without a local stage instance.
    fn start_workers(
        &mut self,
        runners: &[RunnerId],
        local: &[Option<Box<dyn Stage>>],
        timeout: Duration,
    ) -> Result<(), BuildError> {
        let mut workers = self.workers.lock();
        let fd = self.shared.seg.fd().try_clone_to_owned().map_err(BuildError::Spawn)?;
        for (r, _) in local.iter().enumerate().filter(|(_, s)| s.is_none()) {
            workers.push(spawn::spawn(&fd, r, runners[r].stage).map_err(BuildError::Spawn)?);
        }
        let deadline = crate::wait::deadline_after(timeout);
        for w in workers.iter_mut() {
            let stage = w.stage;
            let name = &self.shared.stages[stage].name;
            w.handshake(deadline).map_err(|e| BuildError::from_handshake(e, stage, name))?;
        }
        Ok(())
    }

    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.shared.stages.len()
    }

    /// Bytes each frame can hold.
    pub fn frame_capacity(&self) -> usize {
        self.shared.seg.layout().slot_capacity()
    }

    /// The bound on items in flight.
    pub fn max_in_flight(&self) -> usize {
        self.shared.tickets
    }

    /// `(stage, pid)` of every worker process whose death the pipeline has not yet
    /// handled: the workers running now, replacements included, and for a moment a
    /// worker that has just died (its status pipe's hang-up not yet read; it may be a
    /// zombie). A worker leaves the list when the supervisor reaps it, in the same
    /// step that starts its replacement, so a listed pid is never reused by another
    /// process. Sending a signal to a listed pid does not mean a process died: count
    /// deaths (a pidfd turning readable), or [`restarts`](Self::restarts).
    pub fn worker_pids(&self) -> Vec<(usize, u32)> {
        self.workers.lock().iter().filter(|w| w.lifeline.is_some()).map(|w| (w.stage, w.child.id())).collect()
    }

    /// Frames free for new items: [`max_in_flight`](Self::max_in_flight) minus the
    /// items submitted and not yet resolved, minus the results still held. Once every
    /// item resolved and every [`Output`] is dropped, it is `max_in_flight` again: no
    /// frame leaked, whatever died on the way.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let p = Pipeline::builder()
    ///     .stage(StageSpec::with_stage("noop", stage_fn(|_f| Ok(()))))
    ///     .max_in_flight(4)
    ///     .build()?;
    /// let out = p.submit(b"x")?.wait()?;
    /// assert_eq!(p.free_frames(), 3, "the result holds its frame");
    /// drop(out);
    /// assert_eq!(p.free_frames(), 4);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn free_frames(&self) -> usize {
        self.shared.book.lock().free_slots.len()
    }

    /// How many worker processes were replaced after they died.
    pub fn restarts(&self) -> usize {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// What every stage has done so far: items, bytes, and its runners' time busy,
    /// starved and blocked (see [`PipelineStats`] for an example). Cheap enough to
    /// call many times a second: it reads a few words per runner and stops nothing.
    /// Item and byte counts include every item that came out of the pipeline (a
    /// runner stores them before it hands items on); times lag by at most 16 items or
    /// 256 KiB of a runner's work, and are complete once it waits. A replaced
    /// worker's successor continues its predecessor's totals (less what it counted
    /// and had not stored yet).
    pub fn stats(&self) -> PipelineStats {
        let seg = &self.shared.seg;
        let stages = self
            .shared
            .stages
            .iter()
            .map(|info| {
                let mut s = StageStats {
                    name: info.name.clone(),
                    replicas: info.records.len(),
                    on_thread: info.on_thread,
                    items: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    busy: Duration::ZERO,
                    starved: Duration::ZERO,
                    blocked: Duration::ZERO,
                };
                // Saturating: the words are shared memory a buggy worker may have
                // scribbled on, and a statistic must not panic the parent.
                for t in info.records.clone().map(|r| seg.counters(r).load()) {
                    s.items = s.items.saturating_add(t.items);
                    s.bytes_in = s.bytes_in.saturating_add(t.bytes_in);
                    s.bytes_out = s.bytes_out.saturating_add(t.bytes_out);
                    s.busy = s.busy.saturating_add(Duration::from_nanos(t.busy_ns));
                    s.starved = s.starved.saturating_add(Duration::from_nanos(t.starved_ns));
                    s.blocked = s.blocked.saturating_add(Duration::from_nanos(t.blocked_ns));
                }
                s
            })
            .collect();
        PipelineStats {
            elapsed: self.shared.started.elapsed(),
            submit_waited: Duration::from_nanos(self.shared.submit_waited_ns.load(Ordering::Relaxed)),
            stages,
        }
    }

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
    fn wait_for_space(&self) {
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
    pub fn alloc(&self, len: usize) -> Result<NewFrame, SubmitError> {
        Ok(self.reserve(len, true)?.expect("blocking reserve returns a frame"))
    }

    /// Reserves a frame without blocking; `Ok(None)` when `max_in_flight` are in flight.
    pub fn try_alloc(&self, len: usize) -> Result<Option<NewFrame>, SubmitError> {
        self.reserve(len, false)
    }

    /// Copies `data` into a frame (the one copy) and submits it, blocking while
    /// `max_in_flight` items are in flight.
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
    pub fn submit_batch<I>(&self, items: I) -> Result<usize, SubmitError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let capacity = self.frame_capacity();
        let mut items = items.into_iter().peekable();
        let mut count = 0;
        while items.peek().is_some() {
            let mut reserved = Vec::new();
            {
                if self.shared.book.lock().free_tickets.is_empty() {
                    self.wait_for_space();
                }
                let mut book = self.shared.book.lock();
                self.shared.check_open(&book)?;
                reserved.extend(std::iter::from_fn(|| book.reserve()).take(256));
            }
            let mut ready = Vec::with_capacity(reserved.len());
            let mut error = None;
            for (mut slot, ticket, generation) in reserved {
                match items.next() {
                    Some(data) if error.is_none() && data.as_ref().len() <= capacity => {
                        fill(&self.shared.seg, &mut slot, ticket, generation, data.as_ref());
                        ready.push((slot, ticket, true));
                    }
                    Some(data) if error.is_none() => {
                        error = Some(SubmitError::TooLarge { requested: data.as_ref().len(), capacity });
                        self.shared.book.lock().release(slot, ticket);
                    }
                    _ => self.shared.book.lock().release(slot, ticket),
                }
            }
            count += ready.len();
            let mut book = self.shared.book.lock();
            self.shared.launch(ready, &mut book);
            drop(book);
            if let Some(e) = error {
                self.shared.done.notify_all();
                return Err(e);
            }
        }
        Ok(count)
    }

    /// Results of items submitted with [`submit_batch`](Self::submit_batch) or
    /// [`NewFrame::submit_detached`], in completion order. Ends when none is in flight.
    pub fn completions(&self) -> Completions<'_> {
        Completions { pipeline: self }
    }

    /// Runs every input through the pipeline and yields the results in input order,
    /// keeping up to `max_in_flight` items in flight. The fastest way to stream
    /// items through: submission is batched, and the caller never deadlocks itself.
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
    pub fn map<I>(&self, inputs: I) -> Map<'_, I::IntoIter>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Map {
            pipeline: self,
            inputs: inputs.into_iter(),
            exhausted: false,
            queue: VecDeque::new(),
            submitted: 0,
            ready: VecDeque::new(),
            error: None,
            scratch: Scratch::default(),
        }
    }

    /// Stops accepting submissions: from now on every submit fails with
    /// [`SubmitError::ShutDown`]. Items in flight still finish. Useful when several
    /// threads submit and one decides the work is over; call
    /// [`shutdown`](Self::shutdown) afterwards.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let _book = self.shared.book.lock();
        self.shared.done.notify_all();
    }

    /// Finishes every item in flight, stops every stage, and reports whether all went
    /// as asked (`atbu.mp_pipeline`'s `was_graceful_shutdown`).
    pub fn shutdown(mut self) -> ShutdownReport {
        self.finish(None)
    }

    /// Like [`shutdown`](Self::shutdown), but items still in flight after `timeout`
    /// fail with [`EngineFailure::Aborted`] (not graceful).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> ShutdownReport {
        self.finish(Some(timeout))
    }

    fn finish(&mut self, timeout: Option<Duration>) -> ShutdownReport {
        debug_assert!(!self.finished, "finish runs once: shutdown consumes, Drop checks");
        self.finished = true;
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        let deadline = timeout.map(crate::wait::deadline_after);
        let drained =
            shared.wait_until(deadline, |book| (book.in_flight == 0 || book.failure.is_some()).then_some(()));
        if drained.is_none() {
            shared.fail(EngineFailure::Aborted);
        }
        let mut failure = shared.book.lock().failure.clone();
        shared.stopping.store(true, Ordering::Release);
        shared.seg.control().set_state(STATE_SHUTDOWN);
        shared.nudge_all();
        {
            let _book = shared.book.lock();
            shared.async_waiting.notify_all();
        }
        let mut graceful = failure.is_none();
        for (i, t) in self.threads.drain(..) {
            match t.join() {
                Ok(RunEnd::Shutdown) => {}
                Ok(end) => {
                    graceful = false;
                    failure
                        .get_or_insert(EngineFailure::ThreadStage { stage: i, reason: format!("{end:?}") });
                }
                Err(_) => graceful = false,
            }
        }
        // A broken or aborted pipeline has failed every unfinished item already: nobody
        // waits for what a worker still holds, so its workers are stopped at once and
        // `shutdown_timeout(t)` returns close to `t`.
        let exit_wait = if failure.is_some() { Duration::ZERO } else { WORKER_EXIT_TIMEOUT };
        let mut exits = Vec::new();
        for w in self.workers.lock().iter_mut() {
            let (status, killed) = w.stop(exit_wait);
            w.lifeline = None;
            graceful &= !killed && status.is_some_and(|s| s.success());
            exits.push(WorkerExit { stage: w.stage, pid: w.child.id(), status, killed });
        }
        if let Some(s) = self.supervisor.take() {
            s.stop();
        }
        if let Some(c) = self.collector.take() {
            graceful &= c.join().is_ok();
        }
        // Items that came out after the last waiter left (abandoned tickets) are freed.
        shared.collect_now();
        ShutdownReport { graceful, failure, workers: exits }
    }
}

/// Checks every stage's replica count.
fn check_replicas(stages: &[StageSpec]) -> Result<(), BuildError> {
    for (i, spec) in stages.iter().enumerate() {
        let bad = |reason: String| Err(BuildError::BadReplicas { stage: i, reason });
        if spec.replicas == 0 || spec.replicas > MAX_REPLICAS {
            return bad(format!("{} replicas asked, it must have 1 to {MAX_REPLICAS}", spec.replicas));
        }
        if spec.replicas == 1 {
            continue;
        }
        if matches!(spec.placement, Placement::ThreadWith(_)) {
            return bad(
                "it is one stage instance (`StageSpec::with_stage`); register it to replicate it".into()
            );
        }
        let follows_producer = i > 0 && stages[i - 1].stream.is_some();
        if spec.stream.is_some() || follows_producer {
            return bad("it is half of a producer/consumer pair, which streams through one ring".into());
        }
    }
    Ok(())
}

/// Checks every stage's timeout against what its placement allows.
fn check_timeouts(stages: &[StageSpec]) -> Result<(), BuildError> {
    for (i, spec) in stages.iter().enumerate() {
        let Some(timeout) = spec.timeout else { continue };
        let bad = |reason: String| Err(BuildError::BadTimeout { stage: i, reason });
        if timeout < Duration::from_millis(1) || timeout > MAX_STAGE_TIMEOUT {
            return bad(format!("{timeout:?} asked, it must be 1 ms to {MAX_STAGE_TIMEOUT:?}"));
        }
        if !spec.is_process() {
            return bad("it runs on a thread of the parent, which cannot be killed".into());
        }
        let follows_producer = i > 0 && stages[i - 1].stream.is_some();
        if spec.stream.is_some() || follows_producer {
            return bad("it is half of a producer/consumer pair: the producer streams after its item \
                 went on, so the pair's clock cannot be read"
                .into());
        }
    }
    Ok(())
}

/// Checks the `pipe_with_next` declarations; returns the producer stages' indices.
fn check_pairs(stages: &[StageSpec]) -> Result<Vec<usize>, BuildError> {
    let mut producers = Vec::new();
    for (i, spec) in stages.iter().enumerate() {
        let Some(capacity) = spec.stream else { continue };
        let bad = |reason| Err(BuildError::BadPair { stage: i, reason });
        if i + 1 == stages.len() {
            return bad("it is the last stage");
        }
        if producers.last() == Some(&(i.wrapping_sub(1))) {
            return bad("it already consumes the previous stage's stream (pairs cannot chain)");
        }
        if capacity == 0 || capacity > crate::memory::MAX_STREAM_CAPACITY {
            return bad("its stream capacity must be between 1 byte and 1 GiB");
        }
        producers.push(i);
    }
    Ok(producers)
}

fn fill(seg: &Segment, slot: &mut OwnedSlot, ticket: u32, generation: u32, data: &[u8]) {
    slot.payload_mut(seg)[..data.len()].copy_from_slice(data);
    let header = SlotHeader { len: data.len() as u32, ticket, generation, ..bytemuck::Zeroable::zeroed() };
    slot.set_header(seg, &header);
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.finish(Some(DROP_DRAIN_TIMEOUT));
        }
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("stages", &self.shared.stages.iter().map(|s| &s.name).collect::<Vec<_>>())
            .field("workers", &self.worker_pids())
            .finish()
    }
}

/// Results of detached submissions; see [`Pipeline::completions`].
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
                    let mut taken = false;
                    return Some(handles::take(shared, book, ticket, &mut taken));
                }
                let detached_pending =
                    book.entries.iter().any(|e| matches!(e.state, State::Pending { detached: true, .. }));
                (!detached_pending).then_some(None)
            })
            .flatten()
    }
}

/// Results of [`Pipeline::map`], in input order.
pub struct Map<'p, I> {
    pipeline: &'p Pipeline,
    inputs: I,
    exhausted: bool,
    /// Tickets submitted and not yet taken, with their input positions, in input order.
    queue: VecDeque<(u32, u64)>,
    /// Inputs submitted so far: the next one's index.
    submitted: u64,
    /// Results taken from the book, in input order, not yet yielded.
    ready: VecDeque<Result<Output, ItemError>>,
    error: Option<SubmitError>,
    scratch: Scratch,
}

impl<I> Map<'_, I>
where
    I: Iterator,
    I::Item: AsRef<[u8]>,
{
    /// Submits inputs into every free frame, in one batch.
    fn fill(&mut self) {
        let shared = &self.pipeline.shared;
        let Scratch { reserved, launch, unused } = &mut self.scratch;
        {
            let mut book = shared.book.lock();
            if let Err(e) = shared.check_open(&book) {
                self.error.get_or_insert(e);
                self.exhausted = true;
                return;
            }
            reserved.extend(std::iter::from_fn(|| book.reserve()));
        }
        let capacity = shared.seg.layout().slot_capacity();
        for (mut slot, ticket, generation) in reserved.drain(..) {
            if self.exhausted {
                unused.push((slot, ticket));
                continue;
            }
            match self.inputs.next() {
                Some(data) if data.as_ref().len() <= capacity => {
                    fill(&shared.seg, &mut slot, ticket, generation, data.as_ref());
                    self.queue.push_back((ticket, self.submitted));
                    self.submitted += 1;
                    launch.push((slot, ticket, false));
                }
                Some(data) => {
                    self.error = Some(SubmitError::TooLarge { requested: data.as_ref().len(), capacity });
                    self.exhausted = true;
                    unused.push((slot, ticket));
                }
                None => {
                    self.exhausted = true;
                    unused.push((slot, ticket));
                }
            }
        }
        let mut book = shared.book.lock();
        for (slot, ticket) in unused.drain(..) {
            book.release(slot, ticket);
        }
        if !launch.is_empty() {
            shared.launch(launch.drain(..), &mut book);
        }
    }
}

/// Buffers `Map::fill` reuses, so streaming allocates nothing per batch.
#[derive(Default)]
struct Scratch {
    reserved: Vec<(OwnedSlot, u32, u32)>,
    launch: Vec<(OwnedSlot, u32, bool)>,
    unused: Vec<(OwnedSlot, u32)>,
}

impl<I> Iterator for Map<'_, I>
where
    I: Iterator,
    I::Item: AsRef<[u8]>,
{
    type Item = Result<Output, ItemError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(r) = self.ready.pop_front() {
            return Some(r);
        }
        let window = self.pipeline.max_in_flight();
        if !self.exhausted && self.queue.len() <= window / 2 {
            self.fill();
        }
        let Some(&(ticket, index)) = self.queue.front() else {
            if let Some(e) = self.error.take() {
                return Some(Err(ItemError::Submit(e)));
            }
            if self.exhausted {
                return None;
            }
            // Nothing of ours is in flight and no frame was free: frames are held by
            // results still alive (ours, or another submitter's).
            {
                let book = self.pipeline.shared.book.lock();
                if book.free_tickets.is_empty() && book.in_flight == 0 {
                    // Terminal: waiting would deadlock, and yielding it again forever
                    // would make `collect()` grow without end.
                    self.exhausted = true;
                    return Some(Err(ItemError::Saturated));
                }
            }
            self.pipeline.wait_for_space();
            return self.next();
        };
        // Wait for the oldest item, then take every finished one behind it too: one
        // lock of the book for the whole run of results.
        let shared = &self.pipeline.shared;
        let (queue, ready) = (&mut self.queue, &mut self.ready);
        let started = Instant::now();
        shared.wait_until(None, |book| {
            let mut taken = false;
            let first = handles::take(shared, book, ticket, &mut taken)?;
            queue.pop_front();
            ready.push_back(handles::with_index(first, index));
            while let Some(&(t, index)) = queue.front() {
                match handles::take(shared, book, t, &mut taken) {
                    Some(r) => {
                        queue.pop_front();
                        ready.push_back(handles::with_index(r, index));
                    }
                    None => break,
                }
            }
            Some(())
        });
        // Back-pressure as `map` feels it: its window is full until the oldest is done.
        shared.submit_waited_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.ready.pop_front()
    }
}
