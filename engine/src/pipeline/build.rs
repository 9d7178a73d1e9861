//! Building a pipeline: checking the stage specs, laying out the segment, starting
//! the worker processes and stage threads.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::collector;
use super::shared::{Book, Collector, Entry, Shared, StageInfo, Submissions};
use super::spec::Placement;
use super::supervisor::Supervisor;
use super::wiring::{RunnerId, Wiring};
use super::{
    BuildError, EngineFailure, PairSpec, Pipeline, StageSpec, DEFAULT_FRAME_CAPACITY, DEFAULT_MAX_IN_FLIGHT,
    MAX_STAGE_TIMEOUT,
};
use crate::frame::OwnedSlot;
use crate::memory::{
    Layout, Segment, StageRecord, MAX_REPLICAS, MAX_RINGS, MAX_SLOTS, MAX_STAGES, ROLE_CONSUMER,
    ROLE_PRODUCER,
};
use crate::route::{Gather, Scatter};
use crate::sandbox::SandboxReport;
use crate::stage::{find_stage, BoxError, StageCode, StageKind};
use crate::worker::runner::{RunEnd, StageRunner};
use crate::worker::spawn;

/// Configures and builds a [`Pipeline`].
///
/// ```no_run
/// use ringpipe_engine::{Pipeline, StageSpec};
/// let pipeline = Pipeline::builder()
///     .stage(StageSpec::process_named("compress").params(vec![3]))
///     .stage(StageSpec::thread_named("encrypt"))
///     .max_in_flight(128)
///     .frame_capacity(1 << 20)
///     .build()?;
/// # Ok::<(), ringpipe_engine::BuildError>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    stages: Vec<StageSpec>,
    max_in_flight: usize,
    frame_capacity: usize,
    startup_timeout: Duration,
    observable: bool,
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

    /// Appends a producer/consumer pair: two stages in stage indices, its producer
    /// then its consumer. See [`PairSpec`].
    ///
    /// ```
    /// use std::io::Write;
    /// use ringpipe_engine::{consumer_fn, producer_fn, ConsumerSpec, PairSpec, Pipeline, ProducerSpec};
    /// let pair = PairSpec::new(
    ///     ProducerSpec::with_producer("echo", producer_fn(|f, out| Ok(out.write_all(f.bytes())?))),
    ///     ConsumerSpec::with_consumer("count", consumer_fn(|f, input| {
    ///         let n = std::io::copy(input, &mut std::io::sink())?;
    ///         f.set_len(8)?;
    ///         *f.header_mut::<u64>()? = n;
    ///         Ok(())
    ///     })),
    /// );
    /// let p = Pipeline::builder().pair(pair).build()?;
    /// assert_eq!(p.num_stages(), 2); // the producer, then the consumer
    /// let out = p.submit(b"hello")?.wait()?;
    /// assert_eq!(*out.header::<u64>()?, 5);
    /// # drop(out);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pair(mut self, pair: PairSpec) -> Self {
        self.stages.push(pair.producer);
        self.stages.push(pair.consumer);
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

    /// Lets other processes of the same user watch the pipeline while it runs
    /// (default off): see [`view`](crate::view). Its counters are refreshed four times
    /// a second on a thread of their own, from the statistics the runners store anyway;
    /// the item path does not change.
    pub fn observable(mut self, yes: bool) -> Self {
        self.observable = yes;
        self
    }

    /// Creates the segment, starts the workers and threads, and waits until every
    /// worker has checked the segment and built its stage.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// assert_eq!(p.num_stages(), 1);
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
        check_sandboxes(&self.stages)?;
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
        let mut local: Vec<Option<StageCode>> = Vec::with_capacity(runners.len());
        let mut infos = Vec::with_capacity(n);
        let mut blob = Vec::new();
        let mut records = Vec::with_capacity(runners.len());
        let mut streams_size = 0u64;
        for (i, spec) in self.stages.into_iter().enumerate() {
            let registered = || {
                let factory = find_stage(&spec.name)
                    .ok_or_else(|| BuildError::UnknownStage { stage: i, name: spec.name.clone() })?;
                if factory.kind != spec.kind {
                    return Err(BuildError::WrongKind {
                        stage: i,
                        name: spec.name.clone(),
                        registered: factory.kind,
                        placed: spec.kind,
                    });
                }
                Ok(factory)
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
            } else if spec.kind == StageKind::Consumer {
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
                sandbox: spec.sandbox,
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
            entries: (0..self.max_in_flight).map(|_| Entry::free()).collect(),
            finished: VecDeque::new(),
            in_flight: 0,
            failure: None,
            wakers: 0,
            space_wakers: Vec::new(),
            completion_waker: None,
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
            output: Mutex::new(Collector::new(results)),
            async_waiting: Condvar::new(),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            restarts: std::sync::atomic::AtomicUsize::new(0),
            dead: Mutex::new(Vec::new()),
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
            view: None,
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
        if self.observable {
            let view = crate::view::Publisher::start(shared.clone(), pipeline.workers.clone());
            pipeline.view = Some(view.map_err(BuildError::Spawn)?);
        }
        pipeline.supervisor =
            Some(Supervisor::start(shared, pipeline.workers.clone()).map_err(BuildError::Spawn)?);
        Ok(pipeline)
    }
}

/// The name statistics and events show: a chain's is its links' names joined by `+`.
fn display_name(name: &str, params: &[u8]) -> String {
    if name == crate::stage::CHAIN {
        if let Ok(links) = crate::Chain::parse_params(params).map(|l| l.into_iter().map(|(n, _)| n)) {
            return links.collect::<Vec<_>>().join("+");
        }
    }
    name.to_owned()
}

impl Pipeline {
    /// Starts configuring a pipeline.
    pub fn builder() -> Builder {
        Builder {
            stages: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            frame_capacity: DEFAULT_FRAME_CAPACITY,
            startup_timeout: Duration::from_secs(30),
            observable: false,
        }
    }

    /// Starts a worker process for every runner without a local stage instance.
    fn start_workers(
        &mut self,
        runners: &[RunnerId],
        local: &[Option<StageCode>],
        timeout: Duration,
    ) -> Result<(), BuildError> {
        let mut workers = self.workers.lock();
        let fd = self.shared.seg.fd().try_clone_to_owned().map_err(BuildError::Spawn)?;
        for (r, _) in local.iter().enumerate().filter(|(_, s)| s.is_none()) {
            let stage = runners[r].stage;
            let sandbox = self.shared.stages[stage].sandbox.as_ref();
            workers.push(spawn::spawn(&fd, r, stage, sandbox).map_err(BuildError::Spawn)?);
        }
        let deadline = crate::wait::deadline_after(timeout);
        for w in workers.iter_mut() {
            let stage = w.stage;
            let info = &self.shared.stages[stage];
            w.handshake(deadline).map_err(|e| BuildError::from_handshake(e, stage, &info.name))?;
            let (Some(sandbox), Some(enforced)) = (&info.sandbox, w.enforced) else { continue };
            let report = SandboxReport::new(stage, info.name.clone(), sandbox, enforced);
            if sandbox.is_required() && !report.is_complete() {
                let missing = report.missing().join(", ");
                return Err(BuildError::SandboxIncomplete { stage, name: info.name.clone(), missing });
            }
        }
        Ok(())
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
    }
    Ok(())
}

/// Checks that only process stages ask for a sandbox.
fn check_sandboxes(stages: &[StageSpec]) -> Result<(), BuildError> {
    match stages.iter().position(|s| s.sandbox.is_some() && !s.is_process()) {
        Some(stage) => Err(BuildError::SandboxOnThread { stage, name: stages[stage].name.clone() }),
        None => Ok(()),
    }
}

/// Checks the pairs' stream capacities; returns the producers' stage indices. (A
/// producer is always followed by its consumer: `Builder::pair` is the only way in.)
fn check_pairs(stages: &[StageSpec]) -> Result<Vec<usize>, BuildError> {
    let mut producers = Vec::new();
    for (i, spec) in stages.iter().enumerate() {
        let Some(capacity) = spec.stream else { continue };
        if capacity == 0 || capacity > crate::memory::MAX_STREAM_CAPACITY {
            return Err(BuildError::BadStreamCapacity { stage: i, capacity });
        }
        producers.push(i);
    }
    Ok(producers)
}
