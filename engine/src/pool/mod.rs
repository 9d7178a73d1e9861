//! The master-worker process pool, as in an MPI master-worker pool: a registered task
//! function on `n` worker processes; each task goes to the least loaded worker and
//! its result comes back tagged with the task's index, in task order or as it
//! completes.
//!
//! A pool is a [`Pipeline`] of one replicated process stage, and nothing else: the
//! same segment, rings, scatter and gather, supervisor, restarts, statistics, result
//! and error types. What this module adds is the pool's vocabulary (tasks, workers)
//! and [`PoolBuilder::retry_once`].

use std::time::Duration;

use bytemuck::Pod;

use crate::memory::{LayoutError, MAX_REPLICAS, MAX_SLOTS};
use crate::pipeline::{
    BuildError, Map, Pipeline, PipelineStats, ShutdownReport, StageSpec, DEFAULT_FRAME_CAPACITY,
};
use crate::stage::{Params, Registered};

/// Tasks out at once unless [`PoolBuilder::max_in_flight`] says otherwise: 64 (with
/// the default 64 KiB frames, 4 MiB of frames), or 4 per worker if that is more.
pub const DEFAULT_POOL_WINDOW: usize = 64;

/// Most workers in one pool (a stage's most replicas).
pub const MAX_WORKERS: usize = MAX_REPLICAS;

/// Configures a [`Pool`]; see [`Pool::builder`].
///
/// ```no_run
/// use ringpipe_engine::Pool;
/// let pool = Pool::builder_named("work").workers(4).max_in_flight(64).retry_once(true).build()?;
/// # drop(pool);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    task: String,
    params: Vec<u8>,
    workers: Option<usize>,
    max_in_flight: Option<usize>,
    frame_capacity: usize,
    retry_once: bool,
    startup_timeout: Duration,
    sandbox: Option<crate::Sandbox>,
    observable: bool,
}

impl PoolBuilder {
    /// Number of worker processes (default: one per available core), 1 to
    /// [`MAX_WORKERS`]. More workers than cores is fine: idle ones park on a futex.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Parameter bytes for the task's constructor (see `register_stage!`).
    pub fn params(mut self, params: impl Into<Vec<u8>>) -> Self {
        self.params = params.into();
        self
    }

    /// Most tasks handed out and not yet taken back (default: [`DEFAULT_POOL_WINDOW`],
    /// or 4 per worker if that is more). A deep window keeps tiny tasks flowing (the
    /// workers rarely run dry, so rarely park); `workers` makes each next task go to
    /// whichever worker finished first, as in an MPI master-worker pool.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Bytes a task or result may take (default 64 KiB).
    pub fn frame_capacity(mut self, bytes: usize) -> Self {
        self.frame_capacity = bytes;
        self
    }

    /// Runs a task again, once, when the worker holding it dies; by default its
    /// result is [`ItemError::Stage`](crate::ItemError::Stage) with `worker_died` set.
    pub fn retry_once(mut self, yes: bool) -> Self {
        self.retry_once = yes;
        self
    }

    /// Runs every worker in `sandbox`; see [`StageSpec::sandbox`]. With
    /// [`retry_once`](Self::retry_once), a task that kills its worker twice is failed as
    /// [`ItemError::Poison`](crate::ItemError::Poison).
    pub fn sandbox(mut self, sandbox: crate::Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// How long worker processes get to report ready (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Lets other processes of the same user watch the pool (default off): see
    /// [`Builder::observable`](crate::Builder::observable).
    pub fn observable(mut self, yes: bool) -> Self {
        self.observable = yes;
        self
    }

    /// Starts the workers and waits until each has built its task function.
    pub fn build(self) -> Result<Pool, BuildError> {
        let out_of_range = |what, value: usize, max: usize| {
            BuildError::Config(LayoutError::OutOfRange { what, value: value as u64, max: max as u64 })
        };
        let n = self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if n == 0 || n > MAX_WORKERS {
            return Err(out_of_range("pool workers", n, MAX_WORKERS));
        }
        let in_flight = self.max_in_flight.unwrap_or(DEFAULT_POOL_WINDOW.max(4 * n));
        if in_flight == 0 || in_flight > MAX_SLOTS - n {
            return Err(out_of_range("max_in_flight", in_flight, MAX_SLOTS - n));
        }
        // Unordered: each result leaves as soon as it is done; `map` restores the task
        // order itself, so one slow task holds up only the results after it.
        let mut stage = StageSpec::process_named(&self.task).params(self.params).replicas(n).unordered();
        if let Some(sandbox) = self.sandbox {
            stage = stage.sandbox(sandbox);
        }
        let pipeline = Pipeline::builder()
            .stage(stage)
            .max_in_flight(in_flight)
            .frame_capacity(self.frame_capacity)
            .startup_timeout(self.startup_timeout)
            .observable(self.observable)
            .build()?;
        Ok(Pool { pipeline, workers: n, retry_once: self.retry_once })
    }
}

/// A pool of worker processes running one registered task function.
///
/// Results are [`Output`](crate::Output)s: [`index`](crate::Output::index) is the
/// task's position in the iterator given to the map,
/// [`ran_on`](crate::Output::ran_on)`().replica` the worker that ran it.
///
/// ```no_run
/// use ringpipe_engine::Pool;
/// let pool = Pool::builder_named("double").workers(4).build()?;
/// for result in pool.map((0..100u64).map(|i| [i as f64; 8])) {
///     let result = result?;
///     let doubled: &[f64] = result.cast_slice()?;
///     let worker = result.ran_on().map(|r| r.replica);
///     println!("task {} done by worker {worker:?}: {doubled:?}", result.index());
/// }
/// assert!(pool.shutdown().was_graceful());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool {
    pipeline: Pipeline,
    workers: usize,
    retry_once: bool,
}

impl Pool {
    /// Starts configuring a pool running task `S`, built from `params` in each
    /// worker.
    pub fn builder<S: Registered + crate::Stage>(params: S::Params) -> PoolBuilder {
        Self::builder_named(S::NAME).params(params.encode())
    }

    /// Starts configuring a pool running the task registered as `task` (the dynamic
    /// form of [`builder`](Self::builder); parameter bytes from
    /// [`PoolBuilder::params`]).
    pub fn builder_named(task: &str) -> PoolBuilder {
        PoolBuilder {
            task: task.to_owned(),
            params: Vec::new(),
            workers: None,
            max_in_flight: None,
            frame_capacity: DEFAULT_FRAME_CAPACITY,
            retry_once: false,
            sandbox: None,
            observable: false,
            startup_timeout: Duration::from_secs(30),
        }
    }

    /// Number of worker processes.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Process ids of the workers whose death the pool has not yet handled (see
    /// [`Pipeline::worker_pids`]).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pipeline.worker_pids().into_iter().map(|(_, pid)| pid).collect()
    }

    /// What the workers' sandbox enforced on this kernel, if the pool has one (see
    /// [`Pipeline::sandbox_reports`]).
    pub fn sandbox_reports(&self) -> Vec<crate::SandboxReport> {
        self.pipeline.sandbox_reports()
    }

    /// Workers restarted so far after dying.
    pub fn restarts(&self) -> usize {
        self.pipeline.restarts()
    }

    /// Frames free for new tasks (see [`Pipeline::free_frames`]).
    pub fn free_frames(&self) -> usize {
        self.pipeline.free_frames()
    }

    /// What the workers have done so far (see [`Pipeline::stats`]).
    pub fn stats(&self) -> PipelineStats {
        self.pipeline.stats()
    }

    /// Runs every task and yields the results in task order (index 0, 1, 2, ...),
    /// keeping at most `max_in_flight` tasks out. Tasks are byte slices or slices of
    /// any `bytemuck::Pod` type; the iterator is consumed lazily, so it may be
    /// endless or larger than memory. Several maps may run at once, from any threads.
    ///
    /// ```no_run
    /// use ringpipe_engine::Pool;
    /// let pool = Pool::builder_named("square").workers(4).build()?;
    /// for out in pool.map((0u64..1000).map(|i| i.to_le_bytes())) {
    ///     let out = out?; // in input order; `out.index()` is the input's position
    ///     let v: u64 = *out.header()?;
    ///     println!("{}: {v}", out.index());
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<I, T>(&self, tasks: I) -> Map<'_, I::IntoIter, T>
    where
        I: IntoIterator,
        I::Item: AsRef<[T]>,
        T: Pod,
    {
        Map::new(&self.pipeline, tasks.into_iter(), true, self.retry_once)
    }

    /// Like [`map`](Self::map), but yields each result as soon as it is back.
    pub fn map_unordered<I, T>(&self, tasks: I) -> Map<'_, I::IntoIter, T>
    where
        I: IntoIterator,
        I::Item: AsRef<[T]>,
        T: Pod,
    {
        Map::new(&self.pipeline, tasks.into_iter(), false, self.retry_once)
    }

    /// Finishes the tasks out, stops every worker and reports how each ended.
    ///
    /// ```no_run
    /// use ringpipe_engine::Pool;
    /// let pool = Pool::builder_named("square").workers(4).build()?;
    /// let report = pool.shutdown();
    /// assert!(report.was_graceful(), "{report:?}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(self) -> ShutdownReport {
        self.pipeline.shutdown()
    }

    /// Like [`shutdown`](Self::shutdown), but tasks still out after `timeout` fail
    /// with [`EngineFailure::Aborted`](crate::EngineFailure::Aborted).
    pub fn shutdown_timeout(self, timeout: Duration) -> ShutdownReport {
        self.pipeline.shutdown_timeout(timeout)
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("workers", &self.worker_pids()).finish()
    }
}
