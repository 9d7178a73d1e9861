//! The user API: build a pipeline of stages, submit frames, take results, shut down.
//!
//! Each concern has a home: `build.rs` (specs to running workers), `submit.rs`
//! (frames in), `results.rs` (`Map`, `Completions`), `handles.rs` (`Ticket`,
//! `Output`), `shared.rs` (the ticket book; every ticket state change is there),
//! `collector.rs` (whoever waits collects), `supervisor.rs` and `restart.rs` (dead
//! workers), `stats.rs`.

mod build;
mod collector;
mod error;
mod handles;
mod pair_spec;
pub(crate) mod restart;
mod results;
mod shared;
mod spec;
mod stats;
mod submit;
mod supervisor;
mod wiring;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

pub use build::Builder;
pub use error::{BuildError, EngineFailure, ItemError, StageFailure, SubmitError, TrySubmitError};
pub use handles::{NewFrame, Output, RanOn, Ticket};
pub use pair_spec::{ConsumerSpec, PairSpec, ProducerSpec};
pub use results::{Completions, Map};
pub use spec::{OnComplete, StageEvent, StageOutcome, StageSpec, DEFAULT_STREAM_CAPACITY, MAX_STAGE_TIMEOUT};
pub use stats::{PipelineStats, StageStats};

pub(crate) use self::shared::Shared;
pub(crate) use self::stats::{busiest, busy_share, stats_of};
use self::supervisor::Supervisor;
use crate::memory::STATE_SHUTDOWN;
use crate::worker::runner::RunEnd;
use crate::worker::spawn::WorkerProcess;

/// Default bound on items in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default frame capacity: 64 KiB.
pub const DEFAULT_FRAME_CAPACITY: usize = 64 * 1024;
/// How long `Drop` lets in-flight items finish before failing them.
pub const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker gets to exit after shutdown before it is killed.
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a pipeline ended; see [`Pipeline::shutdown`].
///
/// ```
/// use std::time::Duration;
/// use ringpipe_engine::{stage_fn, EngineFailure, Pipeline, StageSpec};
/// let p = Pipeline::builder().stage(StageSpec::with_stage("noop", stage_fn(|_| Ok(())))).build()?;
/// drop(p.submit(b"x")?.wait()?);
/// let report = p.shutdown_timeout(Duration::from_secs(5));
/// assert!(report.was_graceful() && report.failure.is_none());
/// assert!(report.workers.is_empty(), "a thread stage has no worker process");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ShutdownReport {
    /// Every item finished, every stage stopped on request, no worker was killed.
    pub graceful: bool,
    /// Why the pipeline broke, if it did.
    pub failure: Option<EngineFailure>,
    /// How each worker process ended: those that died and were replaced, then those
    /// running at shutdown.
    pub workers: Vec<WorkerExit>,
}

impl ShutdownReport {
    /// `atbu.mp_pipeline`'s `was_graceful_shutdown`.
    pub fn was_graceful(&self) -> bool {
        self.graceful
    }
}

/// How one worker process ended.
///
/// ```no_run
/// use ringpipe_engine::{Pipeline, StageSpec};
/// let p = Pipeline::builder().stage(StageSpec::process_named("compress").replicas(2)).build()?;
/// for w in p.shutdown().workers {
///     let how = if w.killed { "killed" } else { "exited" };
///     println!("stage {} worker {} {how}: {:?}", w.stage, w.pid, w.status);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WorkerExit {
    /// Its stage.
    pub stage: usize,
    /// Its process id.
    pub pid: u32,
    /// Its exit status, if it could be collected.
    pub status: Option<std::process::ExitStatus>,
    /// True if ringpipe had to kill it (at shutdown, or for running past its stage's
    /// timeout).
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
    /// Publishes the counters to viewers, if the pipeline is observable.
    view: Option<crate::view::Publisher>,
}

impl Pipeline {
    /// The abstract socket name viewers reach the pipeline at (`ringpipe/<pid>/<n>`,
    /// see [`view`](crate::view)), if it was built
    /// [`observable`](crate::Builder::observable) and is not shut down.
    pub fn observed_at(&self) -> Option<&str> {
        self.view.as_ref().map(|v| v.name.as_str())
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
    ///
    /// ```no_run
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let p = Pipeline::builder().stage(StageSpec::process_named("compress").replicas(2)).build()?;
    /// for (stage, pid) in p.worker_pids() {
    ///     println!("stage {stage} runs in process {pid}");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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

    /// What each sandboxed stage's sandbox enforced on this kernel, as its first
    /// replica's worker found it when it applied it (the latest, if that worker was
    /// replaced): one report per stage with a [`sandbox`](StageSpec::sandbox).
    ///
    /// ```no_run
    /// use ringpipe_engine::{Pipeline, Sandbox, StageSpec};
    /// let unzstd = StageSpec::process_named("unzstd").sandbox(Sandbox::strict());
    /// let p = Pipeline::builder().stage(unzstd).build()?;
    /// for report in p.sandbox_reports() {
    ///     println!("{report}"); // stage 0 (`unzstd`): Landlock ABI 6, seccomp on, ...
    ///     assert!(report.missing().is_empty() || !report.is_complete());
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sandbox_reports(&self) -> Vec<crate::SandboxReport> {
        let workers = self.workers.lock();
        let stages = self.shared.stages.iter().enumerate();
        stages
            .filter_map(|(i, info)| {
                let sandbox = info.sandbox.as_ref()?;
                let enforced = workers.iter().find(|w| w.stage == i)?.enforced?;
                Some(crate::SandboxReport::new(i, info.name.clone(), sandbox, enforced))
            })
            .collect()
    }

    /// How many worker processes were replaced after they died. A death is counted
    /// when the supervisor notices it (at once: the worker's status pipe hangs up),
    /// before the item it held fails and before its replacement starts: a caller that
    /// saw either finds it counted. A worker killed while idle is counted a moment
    /// after its death.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// assert_eq!(p.restarts(), 0); // thread stages never die alone
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restarts(&self) -> usize {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Stops accepting submissions: from now on every submit fails with
    /// [`SubmitError::ShutDown`]. Items in flight still finish. Useful when several
    /// threads submit and one decides the work is over; call
    /// [`shutdown`](Self::shutdown) afterwards.
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec, SubmitError};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// let t = p.submit(b"in time")?;
    /// p.close();
    /// assert_eq!(p.submit(b"late").unwrap_err(), SubmitError::ShutDown);
    /// assert_eq!(&t.wait()?[..], b"IN TIME"); // what was in flight still finishes
    /// # p.shutdown();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let mut book = self.shared.book.lock();
        book.wake_space(); // waiting for room is over: they fail with `ShutDown`
        self.shared.done.notify_all();
    }

    /// Finishes every item in flight, stops every stage, and reports whether all went
    /// as asked (`atbu.mp_pipeline`'s `was_graceful_shutdown`).
    ///
    /// ```
    /// use ringpipe_engine::{stage_fn, Pipeline, StageSpec};
    /// let upper = stage_fn(|f| Ok(f.bytes_mut().make_ascii_uppercase()));
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("upper", upper)).build()?;
    /// let t = p.submit(b"x")?;
    /// let report = p.shutdown(); // waits for the item
    /// assert!(report.was_graceful() && report.failure.is_none());
    /// assert_eq!(&t.wait()?[..], b"X");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(mut self) -> ShutdownReport {
        self.finish(None)
    }

    /// Like [`shutdown`](Self::shutdown), but items still in flight after `timeout`
    /// fail with [`EngineFailure::Aborted`] (not graceful).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ringpipe_engine::{stage_fn, EngineFailure, ItemError, Pipeline, StageSpec};
    /// let slow = stage_fn(|_| {
    ///     std::thread::sleep(Duration::from_millis(200));
    ///     Ok(())
    /// });
    /// let p = Pipeline::builder().stage(StageSpec::with_stage("slow", slow)).max_in_flight(8).build()?;
    /// let tickets: Vec<_> = (0..8u8).map(|i| p.submit(&[i])).collect::<Result<_, _>>()?;
    /// let report = p.shutdown_timeout(Duration::from_millis(50));
    /// assert!(!report.was_graceful());
    /// let aborted = tickets
    ///     .into_iter()
    ///     .map(|t| t.wait())
    ///     .filter(|r| matches!(r, Err(ItemError::Engine(EngineFailure::Aborted))))
    ///     .count();
    /// assert!(aborted > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_timeout(mut self, timeout: Duration) -> ShutdownReport {
        self.finish(Some(timeout))
    }

    fn finish(&mut self, timeout: Option<Duration>) -> ShutdownReport {
        debug_assert!(!self.finished, "finish runs once: shutdown consumes, Drop checks");
        self.finished = true;
        self.view = None; // viewers can no longer attach, and the socket's name is gone
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
            let mut book = shared.book.lock();
            book.wake_space();
            if let Some(w) = book.completion_waker.take() {
                w.wake();
            }
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
        // Workers that died and were replaced first: none of them ended gracefully.
        let mut exits = std::mem::take(&mut *shared.dead.lock());
        graceful &= exits.is_empty();
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
